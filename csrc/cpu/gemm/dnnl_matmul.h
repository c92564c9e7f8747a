// oneDNN's matmul called directly: the library of the onednn-cpu-gomp package
// (GNU OpenMP, the runtime torch's wheels use), linked when the build finds
// it (RELU_EXT_WITH_DNNL), compiled against the dnnl headers torch ships.
// Unlike oneDNN through the dispatcher (mkldnn::_linear_pointwise), it writes
// into memory we give it and keeps its primitives in our cache, so a call
// costs microseconds, not tens of them. No ATen here: raw pointers only.
#pragma once

#include <cstdint>
#include <string>

namespace torch_relu_ext::cpu::gemm::dnnl {

enum class Type : uint8_t { kF32, kBF16 };

// A 2-D operand: its first element and its row and column strides (elements).
struct Operand {
  const void* data;
  int64_t row_stride, col_stride;
};

// Whether the library was linked into this build and the copy loaded can
// serve: oneDNN >= 3.2 threaded with OpenMP (torch's runtime; a TBB build
// found first on LD_LIBRARY_PATH would be a second thread pool).
bool available();

// For reports: "oneDNN 3.2.0", "oneDNN 3.5.0 (unused: not OpenMP-threaded)",
// or "not built (...)".
std::string describe();

// c (m x n, row stride ldc, unit column stride) = a (m x k) @ b (k x n)
// [+ bias (n values, may be null)] [then ReLU (oneDNN's: NaN becomes 0)];
// with accumulate, c += a @ b (no bias, no ReLU). m, n, k > 0. Returns "" or
// the library's error. Thread-safe; runs on the calling thread's OpenMP
// threads (omp_get_max_threads(), part of the primitive's key: oneDNN fixes
// a primitive's thread count when it is made).
std::string matmul(Type type, int64_t m, int64_t n, int64_t k, Operand a, Operand b,
                   const void* bias, void* c, int64_t ldc, bool relu, bool accumulate);

}  // namespace torch_relu_ext::cpu::gemm::dnnl
