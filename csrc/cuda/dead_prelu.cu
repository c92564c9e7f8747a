// CUDA kernels of dead_prelu (forward + per-channel active counts) and
// dead_prelu_backward (grad_input + grad_weight), one pass over memory each.
//
// The tensor is a dense [A, C, B] array exactly as on the CPU (any dense
// layout, channels-last included, without a copy):
//   B > 1  ("runs"): grid (C, P); block (c, p) walks chunk p of channel c's
//          A x B plane, B-contiguous runs, 16-byte loads where aligned.
//   B == 1 ("rows"): grid (C / 32, P); block (32, 8) threads, x over 32
//          channels of a row (coalesced), y over the rows of chunk p.
// Each block writes one partial per (chunk, channel); a second kernel sums the
// chunks in order. Chunk counts depend on the shape only, and nothing uses
// float atomics: results are bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "../core/relu_math.h"
#include "chunked_sum.cuh"

namespace torch_relu_ext::cuda {
namespace {

using at::Tensor;

constexpr int kRunThreads = 256;
constexpr int64_t kChunkElems = 16384;  // plane elements per block, at least
constexpr int64_t kChunkRows = 256;     // rows per block on the rows path
constexpr int64_t kMaxChunks = 1024;

using Layout = detail::PreluLayout;

template <typename acc_t, typename cnt_t>
__device__ void block_reduce_write(acc_t gw, cnt_t cnt, acc_t* gw_out, cnt_t* cnt_out, int tid,
                                   int nthreads) {
  __shared__ acc_t s_gw[kRunThreads];
  __shared__ cnt_t s_cnt[kRunThreads];
  s_gw[tid] = gw;
  s_cnt[tid] = cnt;
  __syncthreads();
  for (int stride = nthreads / 2; stride > 0; stride /= 2) {
    if (tid < stride) {
      s_gw[tid] += s_gw[tid + stride];
      s_cnt[tid] += s_cnt[tid + stride];
    }
    __syncthreads();
  }
  if (tid == 0) {
    if (gw_out) *gw_out = s_gw[0];
    if (cnt_out) *cnt_out = s_cnt[0];
  }
}

// One element of the forward or backward.
template <typename T, typename acc_t, bool kBackward>
__device__ __forceinline__ void prelu_element(const T* x, const T* g, T* y, T* gi, int64_t i,
                                              acc_t w, acc_t& gw, int64_t& cnt) {
  const acc_t xv = static_cast<acc_t>(x[i]);
  if (!kBackward) {
    y[i] = static_cast<T>(core::prelu(xv, w));
    cnt += core::active(xv);
  } else {
    const acc_t gv = static_cast<acc_t>(g[i]);
    if (gi != nullptr) gi[i] = static_cast<T>(core::prelu_grad_input(xv, w, gv));
    gw += core::prelu_grad_weight(xv, gv);
  }
}

// B > 1: block (c, p). Plane index q in [0, A*B) maps to a = q / B, b = q % B,
// element (a*C + c)*B + b. Threads take consecutive q: coalesced within runs.
template <typename T, typename acc_t, bool kBackward>
__global__ void prelu_runs_kernel(const T* __restrict__ x, const T* __restrict__ g,
                                  const T* __restrict__ w, bool w_scalar, T* __restrict__ y,
                                  T* __restrict__ gi, int64_t A, int64_t C, int64_t B,
                                  int64_t chunk, acc_t* __restrict__ gw_partial,
                                  int64_t* __restrict__ cnt_partial) {
  const int64_t c = blockIdx.x;
  const int64_t p = blockIdx.y;
  const int64_t plane = A * B;
  const int64_t q0 = p * chunk;
  const int64_t q1 = min(plane, q0 + chunk);
  const acc_t wv = static_cast<acc_t>(w[w_scalar ? 0 : c]);
  acc_t gw = 0;
  int64_t cnt = 0;
  constexpr int kVec = 16 / sizeof(T);
  // Whole runs of one `a` are contiguous: walk them, vectorized when the run
  // start and length allow 16-byte accesses.
  int64_t a = q0 / B;
  int64_t b = q0 - a * B;
  for (int64_t q = q0; q < q1; ++a, b = 0) {
    const int64_t len = min(B - b, q1 - q);
    const int64_t base = (a * C + c) * B + b;
    const bool vec_ok = kVec > 1 && (base % kVec) == 0 && (len % kVec) == 0 &&
                        (reinterpret_cast<uintptr_t>(x) % 16) == 0 &&
                        (!kBackward || (reinterpret_cast<uintptr_t>(g) % 16) == 0) &&
                        (y == nullptr || (reinterpret_cast<uintptr_t>(y) % 16) == 0) &&
                        (gi == nullptr || (reinterpret_cast<uintptr_t>(gi) % 16) == 0);
    if (vec_ok) {
      for (int64_t j = static_cast<int64_t>(threadIdx.x) * kVec; j < len;
           j += static_cast<int64_t>(blockDim.x) * kVec) {
        alignas(16) T xs[kVec], gs[kVec], out[kVec];
        *reinterpret_cast<uint4*>(xs) = *reinterpret_cast<const uint4*>(x + base + j);
        if (kBackward)
          *reinterpret_cast<uint4*>(gs) = *reinterpret_cast<const uint4*>(g + base + j);
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const acc_t xv = static_cast<acc_t>(xs[v]);
          if (!kBackward) {
            out[v] = static_cast<T>(core::prelu(xv, wv));
            cnt += core::active(xv);
          } else {
            const acc_t gv = static_cast<acc_t>(gs[v]);
            out[v] = static_cast<T>(core::prelu_grad_input(xv, wv, gv));
            gw += core::prelu_grad_weight(xv, gv);
          }
        }
        T* dst = kBackward ? gi : y;
        if (dst != nullptr)
          *reinterpret_cast<uint4*>(dst + base + j) = *reinterpret_cast<uint4*>(out);
      }
    } else {
      for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
        prelu_element<T, acc_t, kBackward>(x, g, y, gi, base + j, wv, gw, cnt);
      }
    }
    q += len;
  }
  block_reduce_write<acc_t, int64_t>(gw, cnt, kBackward ? gw_partial + p * C + c : nullptr,
                                     kBackward ? nullptr : cnt_partial + p * C + c, threadIdx.x,
                                     blockDim.x);
}

// B == 1: rows of C channels. Block (32, 8): x over channels, y over rows.
template <typename T, typename acc_t, bool kBackward>
__global__ void prelu_rows_kernel(const T* __restrict__ x, const T* __restrict__ g,
                                  const T* __restrict__ w, bool w_scalar, T* __restrict__ y,
                                  T* __restrict__ gi, int64_t A, int64_t C, int64_t chunk,
                                  acc_t* __restrict__ gw_partial,
                                  int64_t* __restrict__ cnt_partial) {
  __shared__ acc_t s_gw[8][33];
  __shared__ int64_t s_cnt[8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t p = blockIdx.y;
  const int64_t r0 = p * chunk;
  const int64_t r1 = min(A, r0 + chunk);
  acc_t gw = 0;
  int64_t cnt = 0;
  if (c < C) {
    const acc_t wv = static_cast<acc_t>(w[w_scalar ? 0 : c]);
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      prelu_element<T, acc_t, kBackward>(x, g, y, gi, r * C + c, wv, gw, cnt);
    }
  }
  s_gw[threadIdx.y][threadIdx.x] = gw;
  s_cnt[threadIdx.y][threadIdx.x] = cnt;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    acc_t sg = 0;
    int64_t sc = 0;
    for (int i = 0; i < 8; ++i) {
      sg += s_gw[i][threadIdx.x];
      sc += s_cnt[i][threadIdx.x];
    }
    if (kBackward) {
      gw_partial[p * C + c] = sg;
    } else {
      cnt_partial[p * C + c] = sc;
    }
  }
}

// B == 1, vectorized: when C is a multiple of V = 16 / sizeof(T) and the
// buffers are 16-byte aligned, each thread takes V consecutive channels (one
// 16-byte access per row instead of V narrow ones).
template <typename T, typename acc_t, bool kBackward>
__global__ void prelu_rows_vec_kernel(const T* __restrict__ x, const T* __restrict__ g,
                                      const T* __restrict__ w, bool w_scalar, T* __restrict__ y,
                                      T* __restrict__ gi, int64_t A, int64_t C, int64_t chunk,
                                      acc_t* __restrict__ gw_partial,
                                      int64_t* __restrict__ cnt_partial) {
  constexpr int V = 16 / sizeof(T);
  struct alignas(16) Vec {
    T v[V];
  };
  __shared__ acc_t s_gw[8][32 * V + 1];
  __shared__ int64_t s_cnt[8][32 * V + 1];
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x) * V;
  const int64_t p = blockIdx.y;
  const int64_t r0 = p * chunk;
  const int64_t r1 = min(A, r0 + chunk);
  acc_t gw[V];
  int64_t cnt[V];
  acc_t wv[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    gw[j] = 0;
    cnt[j] = 0;
    wv[j] = c0 < C ? static_cast<acc_t>(w[w_scalar ? 0 : c0 + j]) : acc_t(0);
  }
  if (c0 < C) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      const Vec xv = *reinterpret_cast<const Vec*>(x + r * C + c0);
      Vec out;
      if (!kBackward) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const acc_t v = static_cast<acc_t>(xv.v[j]);
          out.v[j] = static_cast<T>(core::prelu(v, wv[j]));
          cnt[j] += core::active(v);
        }
        *reinterpret_cast<Vec*>(y + r * C + c0) = out;
      } else {
        const Vec gv = *reinterpret_cast<const Vec*>(g + r * C + c0);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const acc_t v = static_cast<acc_t>(xv.v[j]);
          const acc_t gr = static_cast<acc_t>(gv.v[j]);
          out.v[j] = static_cast<T>(core::prelu_grad_input(v, wv[j], gr));
          gw[j] += core::prelu_grad_weight(v, gr);
        }
        if (gi != nullptr) *reinterpret_cast<Vec*>(gi + r * C + c0) = out;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) {
    s_gw[threadIdx.y][threadIdx.x * V + j] = gw[j];
    s_cnt[threadIdx.y][threadIdx.x * V + j] = cnt[j];
  }
  __syncthreads();
  if (threadIdx.y == 0 && c0 < C) {
    for (int j = 0; j < V; ++j) {
      acc_t sg = 0;
      int64_t sc = 0;
      for (int i = 0; i < 8; ++i) {  // fixed order
        sg += s_gw[i][threadIdx.x * V + j];
        sc += s_cnt[i][threadIdx.x * V + j];
      }
      if (kBackward) {
        gw_partial[p * C + c0 + j] = sg;
      } else {
        cnt_partial[p * C + c0 + j] = sc;
      }
    }
  }
}

// Launches the forward (kBackward false: y, counts) or the backward (gi, gw).
template <bool kBackward>
void launch(const Layout& l, const Tensor& g, const Tensor& w, Tensor& y_or_gi, Tensor* counts,
            Tensor* grad_weight) {
  const int64_t numel = l.x.numel();
  const bool rows_path = l.B == 1;
  // Chunks per channel: rows of 32 channels for the rows path (a block per
  // 256 rows), plane elements for the runs path (a block per 16K elements).
  const int64_t units = rows_path ? l.A : l.A * l.B;
  const int64_t nchunks =
      std::clamp<int64_t>(units / (rows_path ? kChunkRows : kChunkElems), 1, kMaxChunks);
  const int64_t chunk = ceil_div(units, nchunks);
  const int64_t P = ceil_div(units, chunk);
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool w_scalar = w.numel() == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, l.x.scalar_type(), "dead_prelu_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        // The backward always reduces grad_weight partials (into scratch when
        // grad_weight is not wanted, which is cheap) so one kernel serves both.
        Tensor gw_part, cnt_part;
        if (kBackward) {
          gw_part =
              at::empty({P, l.C}, l.x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        } else {
          cnt_part = at::empty({P, l.C}, l.x.options().dtype(at::kLong));
        }
        const scalar_t* x_p = l.x.data_ptr<scalar_t>();
        const scalar_t* g_p = kBackward ? g.data_ptr<scalar_t>() : nullptr;
        const scalar_t* w_p = w.data_ptr<scalar_t>();
        scalar_t* out_p = y_or_gi.defined() ? y_or_gi.data_ptr<scalar_t>() : nullptr;
        acc_t* gw_p = gw_part.defined() ? gw_part.data_ptr<acc_t>() : nullptr;
        int64_t* cnt_p = cnt_part.defined() ? cnt_part.data_ptr<int64_t>() : nullptr;
        if (numel > 0) {
          constexpr int V = 16 / sizeof(scalar_t);
          auto aligned = [](const void* q) {
            return q == nullptr || reinterpret_cast<uintptr_t>(q) % 16 == 0;
          };
          const bool vec = l.C % V == 0 && aligned(x_p) && aligned(g_p) && aligned(out_p);
          if (rows_path && vec) {
            const dim3 block(32, 8);
            const dim3 grid(static_cast<unsigned>(ceil_div(l.C, 32 * V)), static_cast<unsigned>(P));
            prelu_rows_vec_kernel<scalar_t, acc_t, kBackward><<<grid, block, 0, stream>>>(
                x_p, g_p, w_p, w_scalar, kBackward ? nullptr : out_p, kBackward ? out_p : nullptr,
                l.A, l.C, chunk, gw_p, cnt_p);
          } else if (rows_path) {
            const dim3 block(32, 8);
            const dim3 grid(static_cast<unsigned>(ceil_div(l.C, 32)), static_cast<unsigned>(P));
            prelu_rows_kernel<scalar_t, acc_t, kBackward><<<grid, block, 0, stream>>>(
                x_p, g_p, w_p, w_scalar, kBackward ? nullptr : out_p, kBackward ? out_p : nullptr,
                l.A, l.C, chunk, gw_p, cnt_p);
          } else {
            const dim3 grid(static_cast<unsigned>(l.C), static_cast<unsigned>(P));
            prelu_runs_kernel<scalar_t, acc_t, kBackward><<<grid, kRunThreads, 0, stream>>>(
                x_p, g_p, w_p, w_scalar, kBackward ? nullptr : out_p, kBackward ? out_p : nullptr,
                l.A, l.C, l.B, chunk, gw_p, cnt_p);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        const int sum_grid = grid_for(l.C);
        if (!kBackward && counts != nullptr && l.C > 0) {
          if (numel == 0) {
            counts->zero_();
          } else {
            sum_chunks_kernel<int64_t, int64_t>
                <<<sum_grid, kThreads, 0, stream>>>(cnt_p, P, l.C, counts->data_ptr<int64_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        }
        if (kBackward && grad_weight != nullptr) {
          if (numel == 0) {
            grad_weight->zero_();
          } else if (w_scalar) {
            Tensor per_channel = at::empty({l.C}, gw_part.options());
            sum_chunks_kernel<acc_t, acc_t>
                <<<sum_grid, kThreads, 0, stream>>>(gw_p, P, l.C, per_channel.data_ptr<acc_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            grad_weight->copy_(per_channel.sum().reshape(grad_weight->sizes()));
          } else {
            sum_chunks_kernel<acc_t, scalar_t><<<sum_grid, kThreads, 0, stream>>>(
                gw_p, P, l.C, grad_weight->data_ptr<scalar_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        }
      });
}

std::tuple<Tensor, Tensor> dead_prelu_cuda(const Tensor& input, const Tensor& weight) {
  detail::check_prelu_args("relu_ext::dead_prelu", input, weight);
  c10::cuda::CUDAGuard guard(input.device());
  const Layout l = detail::prelu_layout(input);
  Tensor out = at::empty_strided(l.x.sizes(), l.x.strides(), l.x.options());
  Tensor counts = at::empty({detail::prelu_channels(input)}, input.options().dtype(at::kLong));
  if (counts.numel() > 0 && l.x.numel() == 0) counts.zero_();
  const Tensor w = weight.contiguous();
  if (l.x.numel() > 0) launch<false>(l, Tensor(), w, out, &counts, nullptr);
  return {out, counts};
}

std::tuple<Tensor, Tensor> dead_prelu_backward_cuda(const Tensor& grad_output, const Tensor& input,
                                                    const Tensor& weight,
                                                    std::array<bool, 2> output_mask) {
  detail::check_prelu_backward_args("relu_ext::dead_prelu_backward", grad_output, input, weight);
  c10::cuda::CUDAGuard guard(input.device());
  const Layout l = detail::prelu_layout(input);
  const Tensor g = detail::with_strides_of(grad_output, l.x);
  Tensor grad_input, grad_weight;
  if (output_mask[0]) grad_input = at::empty_strided(l.x.sizes(), l.x.strides(), l.x.options());
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  const Tensor w = weight.contiguous();
  if (l.x.numel() == 0) {
    if (grad_weight.defined()) grad_weight.zero_();
  } else if (output_mask[0] || output_mask[1]) {
    launch<true>(l, g, w, grad_input, nullptr, output_mask[1] ? &grad_weight : nullptr);
  }
  return {grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CUDA, m) {
  m.impl("dead_prelu", &dead_prelu_cuda);
  m.impl("dead_prelu_backward", &dead_prelu_backward_cuda);
}

}  // namespace torch_relu_ext::cuda
