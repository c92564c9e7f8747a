// Instantiates the ATen-free core and CPU loops for clang-tidy (and checks
// that they compile without any PyTorch header).
#define RELU_EXT_CPU_ISA isa_lint
#include "core/relu_mask.h"
#include "core/relu_math.h"
#include "cpu/dead_prelu_loops.h"
#include "cpu/fused_linear_relu_loops.h"

namespace torch_relu_ext::cpu::isa_lint {
template void bias_relu_mask_block<float, float, true>(const float*, float*, const float*, int64_t,
                                                       int64_t, uint8_t*);
template void bias_relu_mask_block<double, double, false>(const double*, double*, const double*,
                                                          int64_t, int64_t, uint8_t*);
template void mask_grad_block<float, double>(const float*, float*, const uint8_t*, int64_t, int64_t,
                                             int64_t, double*);
template void prelu_forward_rows<float, float>(const float*, float*, const float*, bool, int64_t,
                                               int64_t, int64_t*);
template void prelu_forward_flat<float, float>(const float*, float*, const float*, bool, int64_t,
                                               int64_t, int64_t, int64_t, int64_t*);
template void prelu_backward_rows<float, float, double>(const float*, const float*, const float*,
                                                        bool, int64_t, int64_t, float*, double*);
template void prelu_backward_flat<float, float, double>(const float*, const float*, const float*,
                                                        bool, int64_t, int64_t, int64_t, int64_t,
                                                        float*, double*);
}  // namespace torch_relu_ext::cpu::isa_lint

int main() { return 0; }
