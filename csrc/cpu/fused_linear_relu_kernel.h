// The CPU kernel table of fused_linear_relu: its vectorised inner loops
// (fused_linear_relu_loops.h), one table per dtype and instruction set,
// reached through fused_linear_relu_kernels().get<T>() (see dispatch.h).
#pragma once

#include <cstdint>

#include "dispatch.h"

namespace torch_relu_ext::cpu {

template <typename T>
struct FusedLinearReluKernel {
  // Epilogue on a contiguous (rows, cols) block `in` holding x @ W.T: + bias
  // (may be null), ReLU into `out` (may be `in`), and (bias_relu_mask) the
  // block's mask bits; the block starts on a mask byte.
  void (*bias_relu)(const T* in, T* out, const T* bias, int64_t rows, int64_t cols,
                    uint8_t* unused);
  void (*bias_relu_mask)(const T* in, T* out, const T* bias, int64_t rows, int64_t cols,
                         uint8_t* mask);
  // ReLU without bias (and mask bits) of n contiguous elements, on their bits.
  void (*relu)(const T* in, T* out, int64_t n, uint8_t* unused);
  void (*relu_mask)(const T* in, T* out, int64_t n, uint8_t* mask);
  // Mask bits (out > 0) of n elements of a NaN-free ReLU output.
  void (*positive_mask)(const T* out, int64_t n, uint8_t* mask);
  // Largest |v| of n elements; +Inf if any is NaN or infinite.
  float (*max_abs)(const T* p, int64_t n);
  // mask ? grad : 0 for a block starting at flat element e0 (a multiple of 8);
  // grad_masked may be null; bias_acc (may be null) receives column sums.
  void (*mask_grad)(const T* grad, T* grad_masked, const uint8_t* mask, int64_t e0, int64_t rows,
                    int64_t cols, double* bias_acc);
};

RELU_EXT_CPU_DECLARE_KERNELS(FusedLinearReluKernel, fused_linear_relu_kernels)

}  // namespace torch_relu_ext::cpu
