// Included by the loop headers: the including .cpp file names the instruction
// set they are built for. RELU_EXT_CPU_ISA is the namespace of that build,
// RELU_EXT_CPU_TARGET its function attribute (empty for the baseline). See
// loops_impl.h. (No include guard on purpose: it only checks and defaults.)
#ifndef RELU_EXT_CPU_ISA
#error "define RELU_EXT_CPU_ISA (the instruction-set namespace, see loops_impl.h) first"
#endif
#ifndef RELU_EXT_CPU_TARGET
#define RELU_EXT_CPU_TARGET
#endif
