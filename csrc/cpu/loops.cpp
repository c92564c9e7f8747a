// Run-time choice of the CPU loop tables (see loops.h).
#include "loops.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace torch_relu_ext::cpu {
namespace {

const LoopTables& choose() {
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
  if (cap == "AVX512" && avx512) return *loops_avx512();
  if ((cap == "AVX512" || cap == "AVX2") && avx2) return *loops_avx2();
#endif
  return *loops_default();
}

}  // namespace

const LoopTables& loops() {
  static const LoopTables& t = choose();
  return t;
}

}  // namespace torch_relu_ext::cpu
