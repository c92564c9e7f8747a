// The CPU inner loops of both operators (fused_linear_relu_loops.h,
// dead_prelu_loops.h) as tables of function pointers. The loops are compiled
// once per x86 instruction set (loops_default.cpp: the baseline every x86-64
// CPU runs; loops_avx2.cpp; loops_avx512.cpp) and loops() picks, once per
// process, the best one this CPU supports and ATen would use
// (ATEN_CPU_CAPABILITY=default|avx2|avx512 lowers it, as for ATen's kernels).
// The loop code is the same for every instruction set and built with
// -ffp-contract=off: results are bitwise identical whichever table runs.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace torch_relu_ext::cpu {

template <typename T>
struct Loops {
  // fused_linear_relu epilogue on a contiguous (rows, cols) block `in` holding
  // x @ W.T: + bias (may be null), ReLU into `out` (may be `in`), and
  // (bias_relu_mask) the block's mask bits; the block starts on a mask byte.
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
  // dead_prelu over a dense [A, C, B] array (see dead_prelu_loops.h).
  void (*prelu_forward_rows)(const T* x, T* y, const T* w, bool w_scalar, int64_t rows, int64_t C,
                             int64_t* counts);
  void (*prelu_forward_flat)(const T* x, T* y, const T* w, bool w_scalar, int64_t e0, int64_t e1,
                             int64_t C, int64_t B, int64_t* counts);
  void (*prelu_backward_rows)(const T* x, const T* g, const T* w, bool w_scalar, int64_t rows,
                              int64_t C, T* gi, double* gw);
  void (*prelu_backward_flat)(const T* x, const T* g, const T* w, bool w_scalar, int64_t e0,
                              int64_t e1, int64_t C, int64_t B, T* gi, double* gw);
};

struct LoopTables {
  const char* isa;  // "default", "avx2" or "avx512"
  Loops<float> f32;
  Loops<double> f64;
  Loops<c10::Half> f16;
  Loops<c10::BFloat16> bf16;

  template <typename T>
  const Loops<T>& get() const {
    if constexpr (std::is_same_v<T, float>) {
      return f32;
    } else if constexpr (std::is_same_v<T, double>) {
      return f64;
    } else if constexpr (std::is_same_v<T, c10::Half>) {
      return f16;
    } else {
      static_assert(std::is_same_v<T, c10::BFloat16>, "unsupported dtype");
      return bf16;
    }
  }
};

// The tables of this process (chosen on first use).
const LoopTables& loops();

// Each build's tables; null where that build is not available (non-x86).
const LoopTables* loops_default();
const LoopTables* loops_avx2();
const LoopTables* loops_avx512();

}  // namespace torch_relu_ext::cpu
