// Included by every operator's loop header (<op>_loops.h). Each
// isa_<name>.cpp file builds the loops for one instruction set: it defines
//   RELU_EXT_CPU_ISA     the namespace of this build's code (isa_default,
//                        isa_avx2, isa_avx512: each build's template
//                        instances are distinct symbols, so the linker can
//                        never mix code of one instruction set into another);
//   RELU_EXT_CPU_TARGET  the function attribute that lets the compiler use
//                        that instruction set (empty for the baseline);
//   RELU_EXT_CPU_VECTOR_BYTES  its vector register width (16, 32, 64);
// and then includes each operator's loop header, one line per operator.
// A loop header ends with RELU_EXT_CPU_REGISTER_KERNELS(K, name, make): the
// definition of name##_<isa>(), this build's table of every dtype
// (make<T>(), named from the build's namespace: <op>_loops::make_kernel),
// which the operator's stub `name()`
// (RELU_EXT_CPU_DECLARE_KERNELS, dispatch.h) picks from.
// The attribute goes on the loop functions only: the headers they use (the
// standard library, c10's 16-bit types, csrc/core) stay baseline code that
// the compiler inlines into the loops.
#pragma once

#include <type_traits>

#include "dispatch.h"

#ifndef RELU_EXT_CPU_ISA
#error \
    "define RELU_EXT_CPU_ISA (see isa_build.h) first: only isa_<name>.cpp files include loop headers"
#endif
#ifndef RELU_EXT_CPU_TARGET
#define RELU_EXT_CPU_TARGET
#endif

#define RELU_EXT_CPU_CAT_(a, b) a##_##b
#define RELU_EXT_CPU_CAT(a, b) RELU_EXT_CPU_CAT_(a, b)
#define RELU_EXT_CPU_REGISTER_KERNELS(K, name, make)                                   \
  namespace torch_relu_ext::cpu {                                                      \
  const PerDtype<K>* RELU_EXT_CPU_CAT(name, RELU_EXT_CPU_ISA)() {                      \
    static const PerDtype<K> table{                                                    \
        RELU_EXT_CPU_ISA::make<float>(), RELU_EXT_CPU_ISA::make<double>(),             \
        RELU_EXT_CPU_ISA::make<c10::Half>(), RELU_EXT_CPU_ISA::make<c10::BFloat16>()}; \
    return &table;                                                                     \
  }                                                                                    \
  }

namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA {

// Arithmetic type: float for the 16-bit types (as at::opmath_type).
template <typename T>
using acc_t = std::conditional_t<sizeof(T) == 2, float, T>;

}  // namespace torch_relu_ext::cpu::RELU_EXT_CPU_ISA
