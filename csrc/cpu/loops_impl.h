// The loop tables of one instruction-set build. Included once by each
// loops_<isa>.cpp, which first defines
//   RELU_EXT_CPU_ISA     the namespace of this build's code (isa_default,
//                        isa_avx2, isa_avx512: each build's template
//                        instances are distinct symbols, so the linker can
//                        never mix code of one instruction set into another);
//   RELU_EXT_CPU_TARGET  the function attribute that lets the compiler use
//                        that instruction set (empty for the baseline);
//   RELU_EXT_CPU_VECTOR_BYTES  its vector register width (16, 32, 64);
//   RELU_EXT_CPU_ISA_NAME  its name as cpu_isa() reports it.
// The attribute goes on the loop functions only: the headers they use (the
// standard library, c10's 16-bit types, csrc/core) stay baseline code that
// the compiler inlines into the loops.
#pragma once

#include <type_traits>

#include "dead_prelu_loops.h"
#include "fused_linear_relu_loops.h"
#include "loops.h"

namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA {

// Arithmetic type: float for the 16-bit types (as at::opmath_type).
template <typename T>
using acc_t = std::conditional_t<sizeof(T) == 2, float, T>;

template <typename T>
constexpr Loops<T> make_loops() {
  using Acc = acc_t<T>;
  return {&bias_relu_mask_block<T, Acc, false>,
          &bias_relu_mask_block<T, Acc, true>,
          &relu_bits_block<T, false>,
          &relu_bits_block<T, true>,
          &positive_mask_block<T>,
          &max_abs_block<T>,
          &mask_grad_block<T, double>,
          &prelu_forward_rows<T, Acc>,
          &prelu_forward_flat<T, Acc>,
          &prelu_backward_rows<T, Acc, double>,
          &prelu_backward_flat<T, Acc, double>};
}

inline const LoopTables& tables() {
  static const LoopTables t{RELU_EXT_CPU_ISA_NAME, make_loops<float>(), make_loops<double>(),
                            make_loops<c10::Half>(), make_loops<c10::BFloat16>()};
  return t;
}

}  // namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA
