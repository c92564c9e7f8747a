// AVX-512 (F, BW, DQ, VL) build of the CPU loops (x86-64 only; chosen at run
// time, see loops.h). 512-bit vectors are preferred (GCC's generic tuning
// would pick 256-bit ones).
#include "loops.h"

#if defined(__x86_64__)
#define RELU_EXT_CPU_ISA isa_avx512
#if defined(__clang__)
#define RELU_EXT_CPU_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c")))
#else
#define RELU_EXT_CPU_TARGET                                               \
  __attribute__((                                                         \
      target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c," \
             "prefer-vector-width=512")))
#endif
#define RELU_EXT_CPU_ISA_NAME "avx512"
#define RELU_EXT_CPU_VECTOR_BYTES 64
#include "loops_impl.h"
#endif

namespace torch_relu_ext::cpu {
#if defined(__x86_64__)
const LoopTables* loops_avx512() { return &isa_avx512::tables(); }
#else
const LoopTables* loops_avx512() { return nullptr; }
#endif
}  // namespace torch_relu_ext::cpu
