// AVX2 + FMA build of the CPU loops (chosen at run time on x86-64, see
// dispatch.h; elsewhere a second baseline build that never runs). See
// isa_build.h; one line per operator.
#define RELU_EXT_CPU_ISA isa_avx2
#if defined(__x86_64__)
#define RELU_EXT_CPU_TARGET __attribute__((target("avx2,fma,bmi,bmi2,f16c")))
#endif
#define RELU_EXT_CPU_VECTOR_BYTES 32

#include "dead_prelu_loops.h"
#include "fused_linear_relu_loops.h"
