// Launch-size helpers and the second stage of every chunked reduction in the
// CUDA kernels: out[c] = sum over chunks of partial[chunk][c], in chunk order
// (no atomics: the same bits on every run).
#pragma once

#include <algorithm>
#include <cstdint>

namespace torch_relu_ext::cuda {

constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of `per_block` threads for `work` items; grid-stride loops cover the
// rest (65535 blocks are dozens of waves on any current GPU).
inline int grid_for(int64_t work, int per_block = kThreads) {
  const int64_t blocks = ceil_div(std::max<int64_t>(work, 1), per_block);
  return static_cast<int>(std::min<int64_t>(blocks, 65535));
}

template <typename acc_t, typename out_t>
__global__ void sum_chunks_kernel(const acc_t* __restrict__ partial, int64_t chunks, int64_t cols,
                                  out_t* __restrict__ out) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t s = 0;
    for (int64_t k = 0; k < chunks; ++k) s += partial[k * cols + c];
    out[c] = static_cast<out_t>(s);
  }
}

}  // namespace torch_relu_ext::cuda
