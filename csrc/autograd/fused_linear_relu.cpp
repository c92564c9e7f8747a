// Autograd of fused_linear_relu, registered in C++ on the Autograd key so that
// Python, TorchScript and LibTorch programs all get gradients.
//
// Forward saves input, weight and the 1-bit-per-element ReLU mask (never the
// output). Backward calls relu_ext::fused_linear_relu_backward, whose own
// autograd (below) makes double backward work.
#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "checks.h"
#include "torch_relu_ext/ops.h"

namespace torch_relu_ext::autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool any_requires_grad(const Tensor& input, const Tensor& weight,
                       const std::optional<Tensor>& bias) {
  return at::GradMode::is_enabled() &&
         (input.requires_grad() || weight.requires_grad() ||
          (bias.has_value() && bias->defined() && bias->requires_grad()));
}

class FusedLinearReluFunction : public torch::autograd::Function<FusedLinearReluFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                               const std::optional<Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mask] = torch_relu_ext::fused_linear_relu_forward(input, weight, bias);
    ctx->save_for_backward({input, weight, mask});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->mark_non_differentiable({mask});
    return {out, mask};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& grad = grads[0];
    if (!grad.defined()) return {Tensor(), Tensor(), Tensor()};
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> output_mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                             has_bias && ctx->needs_input_grad(2)};
    auto [gi, gw, gb] =
        torch_relu_ext::fused_linear_relu_backward(grad, saved[0], saved[1], saved[2], output_mask);
    return {gi, gw, gb};
  }
};

constexpr const char* kSelected[3] = {"grad_input", "grad_weight", "grad_bias"};

// Differentiates fused_linear_relu_backward (double backward). With the mask
// m fixed (the ReLU's derivative is piecewise constant) and gm = where(m, g, 0):
//   grad_input = gm @ W,  grad_weight = gm^T @ x,  grad_bias = sum_rows(gm).
// Written with differentiable ATen ops, so any order of derivative works.
class FusedLinearReluBackwardFunction
    : public torch::autograd::Function<FusedLinearReluBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output, const Tensor& input,
                               const Tensor& weight, const Tensor& mask,
                               std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gi, gw, gb] =
        torch_relu_ext::fused_linear_relu_backward(grad_output, input, weight, mask, output_mask);
    ctx->save_for_backward({grad_output, input, weight, mask});
    // A Function's outputs must be defined: return the selected ones only.
    variable_list outs;
    const Tensor all[3] = {gi, gw, gb};
    for (int i = 0; i < 3; ++i) {
      ctx->saved_data[kSelected[i]] = output_mask[i];
      if (output_mask[i]) outs.push_back(all[i]);
    }
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& grad_output = saved[0];
    const Tensor& input = saved[1];
    const Tensor& weight = saved[2];
    const Tensor& mask = saved[3];
    Tensor gg[3];
    for (int i = 0, next = 0; i < 3; ++i) {
      if (ctx->saved_data[kSelected[i]].toBool()) gg[i] = grads[next++];
    }
    const Tensor& gg_input = gg[0];
    const Tensor& gg_weight = gg[1];
    const Tensor& gg_bias = gg[2];
    // Symbolic-shape safe (AOTAutograd traces this with dynamic sizes).
    static auto unpack = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("relu_ext::relu_mask_unpack", "")
                             .typed<Tensor(const Tensor&, c10::SymIntArrayRef)>();
    const Tensor g = detail::as_rows_symint(grad_output);
    const Tensor x = detail::as_rows_symint(input);
    const Tensor active = unpack.call(mask, grad_output.sym_sizes()).reshape_symint(g.sym_sizes());
    const Tensor zero = at::zeros({}, grad_output.options());
    const Tensor gm = at::where(active, g, zero);

    Tensor d_gm;
    auto add = [&](const Tensor& t) { d_gm = d_gm.defined() ? d_gm + t : t; };
    if (gg_input.defined()) add(detail::as_rows_symint(gg_input).mm(weight.t()));
    if (gg_weight.defined()) add(x.mm(gg_weight.t()));
    if (gg_bias.defined()) add(gg_bias.expand_symint(g.sym_sizes()));

    Tensor d_grad_output, d_input, d_weight;
    if (d_gm.defined() && ctx->needs_input_grad(0)) {
      d_grad_output = at::where(active, d_gm, zero).view_symint(grad_output.sym_sizes());
    }
    if (gg_weight.defined() && ctx->needs_input_grad(1)) {
      d_input = gm.mm(gg_weight).view_symint(input.sym_sizes());
    }
    if (gg_input.defined() && ctx->needs_input_grad(2)) {
      d_weight = gm.t().mm(detail::as_rows_symint(gg_input));
    }
    return {d_grad_output, d_input, d_weight, Tensor(), Tensor()};
  }
};

Tensor fused_linear_relu_autograd(const Tensor& input, const Tensor& weight,
                                  const std::optional<Tensor>& bias) {
  if (!any_requires_grad(input, weight, bias)) {
    // Nothing to differentiate: the plain kernel, which skips the mask.
    at::AutoDispatchBelowADInplaceOrView guard;
    return torch_relu_ext::fused_linear_relu(input, weight, bias);
  }
  return FusedLinearReluFunction::apply(input, weight, bias)[0];
}

std::tuple<Tensor, Tensor> fused_linear_relu_forward_autograd(const Tensor& input,
                                                              const Tensor& weight,
                                                              const std::optional<Tensor>& bias) {
  auto out = FusedLinearReluFunction::apply(input, weight, bias);
  return {out[0], out[1]};
}

std::tuple<Tensor, Tensor, Tensor> fused_linear_relu_backward_autograd(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight, const Tensor& mask,
    std::array<bool, 3> output_mask) {
  if (!(at::GradMode::is_enabled() &&
        (grad_output.requires_grad() || input.requires_grad() || weight.requires_grad()))) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return torch_relu_ext::fused_linear_relu_backward(grad_output, input, weight, mask,
                                                      output_mask);
  }
  auto out = FusedLinearReluBackwardFunction::apply(grad_output, input, weight, mask, output_mask);
  Tensor res[3];
  for (int i = 0, next = 0; i < 3; ++i) {
    if (output_mask[i]) res[i] = out[next++];
  }
  return {res[0], res[1], res[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, Autograd, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_autograd);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_autograd);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_autograd);
}

}  // namespace torch_relu_ext::autograd
