// The CPU kernel table of dead_prelu and dead_prelu_backward: their
// vectorised inner loops (dead_prelu_loops.h) over a dense [A, C, B] array,
// one table per dtype and instruction set, reached through
// dead_prelu_kernels().get<T>() (see dispatch.h).
#pragma once

#include <cstdint>

#include "dispatch.h"

namespace torch_relu_ext::cpu {

template <typename T>
struct DeadPreluKernel {
  // Forward: "rows" for B == 1 (rows of C channels), "flat" for elements
  // [e0, e1) of runs of B elements per channel; counts per channel.
  void (*forward_rows)(const T* x, T* y, const T* w, bool w_scalar, int64_t rows, int64_t C,
                       int64_t* counts);
  void (*forward_flat)(const T* x, T* y, const T* w, bool w_scalar, int64_t e0, int64_t e1,
                       int64_t C, int64_t B, int64_t* counts);
  // Backward: grad_input into gi (may be null), per-channel grad_weight sums
  // into gw (may be null).
  void (*backward_rows)(const T* x, const T* g, const T* w, bool w_scalar, int64_t rows, int64_t C,
                        T* gi, double* gw);
  void (*backward_flat)(const T* x, const T* g, const T* w, bool w_scalar, int64_t e0, int64_t e1,
                        int64_t C, int64_t B, T* gi, double* gw);
};

RELU_EXT_CPU_DECLARE_KERNELS(DeadPreluKernel, dead_prelu_kernels)

}  // namespace torch_relu_ext::cpu
