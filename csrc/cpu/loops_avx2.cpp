// AVX2 + FMA build of the CPU loops (x86-64 only; chosen at run time, see
// loops.h).
#include "loops.h"

#if defined(__x86_64__)
#define RELU_EXT_CPU_ISA isa_avx2
#define RELU_EXT_CPU_TARGET __attribute__((target("avx2,fma,bmi,bmi2,f16c")))
#define RELU_EXT_CPU_ISA_NAME "avx2"
#define RELU_EXT_CPU_VECTOR_BYTES 32
#include "loops_impl.h"
#endif

namespace torch_relu_ext::cpu {
#if defined(__x86_64__)
const LoopTables* loops_avx2() { return &isa_avx2::tables(); }
#else
const LoopTables* loops_avx2() { return nullptr; }
#endif
}  // namespace torch_relu_ext::cpu
