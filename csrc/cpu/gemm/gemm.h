// The CPU matrix product of fused_linear_relu: one entry point (mm) for the
// forward, grad_input and grad_weight, and the one place that chooses its
// backend (choose). Backends: our AVX-512 float32 kernels (sgemm.h), oneDNN
// through the dispatcher's mkldnn operators (libtorch exports no dnnl
// symbols) or linked directly (dnnl_matmul.h), our AMX bfloat16 forward
// (amx_bf16.h) and ATen's BLAS (at::mm). Which one runs where, and why, is
// in docs/cpu_gemm.md.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace torch_relu_ext::cpu::gemm {

enum class Backend : uint8_t { kOwn, kOneDNN, kDnnl, kAmx, kATen };

// The product's role: the forward x @ W^T without the mask (inference) or
// with it (training), grad_input G @ W, grad_weight G^T @ x.
enum class Use : uint8_t { kForward, kForwardMasked, kGradInput, kGradWeight };

const char* name(Backend backend);  // "own", "onednn", "dnnl", "amx", "aten"

// The backend for an (m x k) @ (k x n) product of `dtype`. Follows
// TORCH_RELU_EXT_CPU_GEMM (auto|own|onednn|dnnl|amx|aten; anything else is an error
// naming the variable); a forced backend that cannot run this product (dtype,
// CPU, an empty product; amx: a gradient) gives way to the auto choice. Depends only on the
// arguments and the process (CPU, setting), never on the thread count.
Backend choose(Use use, at::ScalarType dtype, int64_t m, int64_t n, int64_t k);

// What fused_linear_relu applies to the forward's product: + bias (undefined:
// none), ReLU, and the 1-bit mask (LSB first, n bits per row, into `mask`,
// which may be null; any prior content is overwritten).
struct Epilogue {
  at::Tensor bias;
  uint8_t* mask;
};

// c = a @ b (or c += a @ b when accumulate), then ep (may be null). a: m x k,
// b: k x n, any strides; c: a contiguous m x n tensor of a's dtype, or
// undefined: a new one is made (oneDNN's own result is then used as is).
// Returns c. With ep, accumulate must be false. `backend` must come from
// choose() for this product's shape and dtype.
at::Tensor mm(Backend backend, const at::Tensor& a, const at::Tensor& b, at::Tensor c,
              bool accumulate, const Epilogue* ep);

// Rows of an m x n block of elem_size-byte elements that stay in cache while
// a pass runs over the block after its product (a multiple of 8, at least
// 256 and k, depends on the shape only).
int64_t block_rows(int64_t n, int64_t k, int64_t elem_size);

// Replaces the setting for this process (same values and errors as the
// variable); for benchmarks and tests that compare backends in one process.
void set_mode(const std::string& setting);

// The setting and the choice it makes on this CPU, for _C.cpu_gemm() and
// python -m torch_relu_ext.
std::string describe();

}  // namespace torch_relu_ext::cpu::gemm
