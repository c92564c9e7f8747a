// Per-instruction-set dispatch of the CPU inner loops, in the spirit of ATen's
// DispatchStub. Each operator with vectorised loops has its own kernel table
// (<op>_kernel.h: a struct of function pointers per dtype). The loops are
// compiled once per x86 instruction set (isa_default.cpp: the baseline every
// x86-64 CPU runs; isa_avx2.cpp; isa_avx512.cpp), each of which builds every
// operator's table, and the operator picks, once per process, the table of
// cpu_isa(). The loop code is the same for every instruction set and built
// with -ffp-contract=off: results are bitwise identical whichever build runs.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace torch_relu_ext::cpu {

// The instruction-set builds of the loops (isa_<name>.cpp).
enum class Isa { kDefault, kAvx2, kAvx512 };

// The best build this CPU supports and ATen would use (ATEN_CPU_CAPABILITY
// lowers it, as for ATen's own kernels); chosen once per process.
Isa cpu_isa();

// "default", "avx2" or "avx512".
const char* isa_name(Isa isa);

// One operator's kernel table K<T> for each dtype the CPU kernels take.
template <template <typename> class K>
struct PerDtype {
  K<float> f32;
  K<double> f64;
  K<c10::Half> f16;
  K<c10::BFloat16> bf16;

  template <typename T>
  const K<T>& get() const {
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

// Declares an operator's stub `name()`: its table K<T> of this process's
// instruction set (`name().get<scalar_t>()`). Each isa_<x>.cpp defines the
// `name##_isa_<x>()` it declares (RELU_EXT_CPU_REGISTER_KERNELS, isa_build.h).
#define RELU_EXT_CPU_DECLARE_KERNELS(K, name)                           \
  const ::torch_relu_ext::cpu::PerDtype<K>* name##_isa_default();       \
  const ::torch_relu_ext::cpu::PerDtype<K>* name##_isa_avx2();          \
  const ::torch_relu_ext::cpu::PerDtype<K>* name##_isa_avx512();        \
  inline const ::torch_relu_ext::cpu::PerDtype<K>& name() {             \
    static const ::torch_relu_ext::cpu::PerDtype<K>* const table = [] { \
      switch (::torch_relu_ext::cpu::cpu_isa()) {                       \
        case ::torch_relu_ext::cpu::Isa::kAvx512:                       \
          return name##_isa_avx512();                                   \
        case ::torch_relu_ext::cpu::Isa::kAvx2:                         \
          return name##_isa_avx2();                                     \
        default:                                                        \
          return name##_isa_default();                                  \
      }                                                                 \
    }();                                                                \
    return *table;                                                      \
  }

}  // namespace torch_relu_ext::cpu
