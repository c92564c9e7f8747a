// Run-time choice of the CPU loops' instruction set (see dispatch.h).
#include "dispatch.h"

#include <ATen/Version.h>

#include <string>

namespace torch_relu_ext::cpu {
namespace {

Isa choose() {
  // ATen's capability: the best this CPU supports, or lower when the user
  // set ATEN_CPU_CAPABILITY. Our loops follow it (and check the CPU again:
  // the variable is not validated everywhere).
  const std::string cap = at::get_cpu_capability();
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vl");
  if (cap == "AVX512" && avx512) return Isa::kAvx512;
  if ((cap == "AVX512" || cap == "AVX2") && avx2) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = choose();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

}  // namespace torch_relu_ext::cpu
