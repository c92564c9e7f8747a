// Baseline build of the CPU loops: the instruction set every CPU of this
// architecture has (SSE2 on x86-64). See loops.h.
#define RELU_EXT_CPU_ISA isa_default
#define RELU_EXT_CPU_ISA_NAME "default"
#define RELU_EXT_CPU_VECTOR_BYTES 16
#include "loops_impl.h"

namespace torch_relu_ext::cpu {
const LoopTables* loops_default() { return &isa_default::tables(); }
}  // namespace torch_relu_ext::cpu
