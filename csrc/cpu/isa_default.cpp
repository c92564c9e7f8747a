// Baseline build of the CPU loops: the instruction set every CPU of this
// architecture has (SSE2 on x86-64). See isa_build.h; one line per operator.
#define RELU_EXT_CPU_ISA isa_default
#define RELU_EXT_CPU_VECTOR_BYTES 16

#include "dead_prelu_loops.h"
#include "fused_linear_relu_loops.h"
