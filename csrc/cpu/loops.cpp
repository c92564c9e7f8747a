// Run-time choice of the CPU loop tables (see loops.h).
#include "loops.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
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

const sgemm::Kernels* choose_sgemm() {
  const char* env = std::getenv("TORCH_RELU_EXT_CPU_GEMM");
  const std::string mode = env != nullptr && env[0] != '\0' ? env : "auto";
  TORCH_CHECK(mode == "auto" || mode == "own" || mode == "aten",
              "torch_relu_ext: TORCH_RELU_EXT_CPU_GEMM must be 'auto', 'own' or 'aten', got '",
              mode, "'");
  if (mode == "aten" || std::strcmp(loops().isa, "avx512") != 0) return nullptr;
#if defined(__x86_64__)
  if (mode == "auto" && __builtin_cpu_is("intel")) return nullptr;
#endif
  return sgemm::avx512();
}

}  // namespace

const LoopTables& loops() {
  static const LoopTables& t = choose();
  return t;
}

const sgemm::Kernels* own_sgemm() {
  static const sgemm::Kernels* k = choose_sgemm();
  return k;
}

}  // namespace torch_relu_ext::cpu
