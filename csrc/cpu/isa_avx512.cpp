// AVX-512 (F, BW, DQ, VL) build of the CPU loops (chosen at run time on
// x86-64, see dispatch.h; elsewhere a baseline build that never runs).
// 512-bit vectors are preferred (GCC's generic tuning would pick 256-bit
// ones). See isa_build.h; one line per operator.
#define RELU_EXT_CPU_ISA isa_avx512
#if defined(__x86_64__) && defined(__clang__)
#define RELU_EXT_CPU_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c")))
#elif defined(__x86_64__)
#define RELU_EXT_CPU_TARGET                                               \
  __attribute__((                                                         \
      target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c," \
             "prefer-vector-width=512")))
#endif
#define RELU_EXT_CPU_VECTOR_BYTES 64

#include "dead_prelu_loops.h"
#include "fused_linear_relu_loops.h"
