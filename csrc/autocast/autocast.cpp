// Autocast registrations of both operators (AutocastCPU, AutocastCUDA): they
// cast like the eager code they replace. F.linear and F.prelu are both on
// PyTorch's "lower precision" autocast lists on CPU and CUDA, so inputs,
// weights and bias go to the autocast dtype (bf16 on CPU by default, fp16 on
// CUDA) and the operator runs there. The backward operators need no
// registration: they receive tensors that already have the right dtype.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "torch_relu_ext/ops.h"

namespace torch_relu_ext::autocast {
namespace {

using at::Tensor;

template <c10::DeviceType kDevice>
struct Caster {
  static constexpr c10::DispatchKey key = kDevice == c10::DeviceType::CUDA
                                              ? c10::DispatchKey::AutocastCUDA
                                              : c10::DispatchKey::AutocastCPU;
  static at::ScalarType dtype() { return at::autocast::get_autocast_dtype(kDevice); }
  static Tensor cast(const Tensor& t) { return at::autocast::cached_cast(dtype(), t, kDevice); }
  static std::optional<Tensor> cast(const std::optional<Tensor>& t) {
    return at::autocast::cached_cast(dtype(), t, kDevice);
  }
};

template <c10::DeviceType kDevice>
Tensor fused_linear_relu_autocast(const Tensor& input, const Tensor& weight,
                                  const std::optional<Tensor>& bias) {
  using C = Caster<kDevice>;
  c10::impl::ExcludeDispatchKeyGuard no_autocast(C::key);
  return torch_relu_ext::fused_linear_relu(C::cast(input), C::cast(weight), C::cast(bias));
}

template <c10::DeviceType kDevice>
std::tuple<Tensor, Tensor> fused_linear_relu_forward_autocast(const Tensor& input,
                                                              const Tensor& weight,
                                                              const std::optional<Tensor>& bias) {
  using C = Caster<kDevice>;
  c10::impl::ExcludeDispatchKeyGuard no_autocast(C::key);
  return torch_relu_ext::detail::fused_linear_relu_forward(C::cast(input), C::cast(weight),
                                                           C::cast(bias));
}

template <c10::DeviceType kDevice>
std::tuple<Tensor, Tensor> dead_prelu_autocast(const Tensor& input, const Tensor& weight) {
  using C = Caster<kDevice>;
  c10::impl::ExcludeDispatchKeyGuard no_autocast(C::key);
  return torch_relu_ext::dead_prelu(C::cast(input), C::cast(weight));
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, AutocastCPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_autocast<c10::DeviceType::CPU>);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_autocast<c10::DeviceType::CPU>);
  m.impl("dead_prelu", &dead_prelu_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(relu_ext, AutocastCUDA, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_autocast<c10::DeviceType::CUDA>);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_autocast<c10::DeviceType::CUDA>);
  m.impl("dead_prelu", &dead_prelu_autocast<c10::DeviceType::CUDA>);
}

}  // namespace torch_relu_ext::autocast
