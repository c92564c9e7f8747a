// Checks that the ATen-free core compiles without any PyTorch header, and
// gives clang-tidy a translation unit for it (the CPU loops are checked
// through csrc/cpu/isa_default.cpp, see dev.sh lint).
#include "core/relu_mask.h"
#include "core/relu_math.h"

int main() { return 0; }
