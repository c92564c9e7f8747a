// Autograd of dead_prelu, registered in C++ on the Autograd key. The active
// counts are integer statistics and not differentiable.
#include <ATen/TensorOperators.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "torch_relu_ext/ops.h"

namespace torch_relu_ext::autograd {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DeadPreluFunction : public torch::autograd::Function<DeadPreluFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, counts] = torch_relu_ext::dead_prelu(input, weight);
    ctx->save_for_backward({input, weight});
    ctx->mark_non_differentiable({counts});
    return {out, counts};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& grad = grads[0];
    if (!grad.defined()) return {Tensor(), Tensor()};
    auto [gi, gw] = torch_relu_ext::dead_prelu_backward(
        grad, saved[0], saved[1], {ctx->needs_input_grad(0), ctx->needs_input_grad(1)});
    return {gi, gw};
  }
};

// Weight broadcast against the input (channel dim 1), as F.prelu does.
// Symbolic-shape safe: AOTAutograd traces this with dynamic sizes.
Tensor broadcast_weight(const Tensor& weight, const Tensor& input) {
  if (weight.sym_numel() == 1 || input.dim() < 2) return weight.reshape_symint({});
  std::vector<c10::SymInt> shape(input.dim(), 1);
  shape[1] = weight.sym_numel();
  return weight.reshape_symint(shape);
}

// Sum of an input-shaped tensor down to the weight's shape.
Tensor reduce_to_weight(const Tensor& t, const Tensor& weight) {
  if (weight.sym_numel() == 1 || t.dim() < 2) {
    return t.sum().reshape_symint(weight.sym_sizes());
  }
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d != 1) dims.push_back(d);
  }
  return t.sum(dims).reshape_symint(weight.sym_sizes());
}

// Double backward. With pos = input > 0 (piecewise constant in input):
//   grad_input  = where(pos, g, w * g)
//   grad_weight = reduce(where(pos, 0, x * g))
class DeadPreluBackwardFunction : public torch::autograd::Function<DeadPreluBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_output, const Tensor& input,
                               const Tensor& weight, std::array<bool, 2> output_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gi, gw] = torch_relu_ext::dead_prelu_backward(grad_output, input, weight, output_mask);
    ctx->save_for_backward({grad_output, input, weight});
    // A Function's outputs must be defined: return the selected ones only.
    ctx->saved_data["grad_input"] = output_mask[0];
    ctx->saved_data["grad_weight"] = output_mask[1];
    variable_list outs;
    if (output_mask[0]) outs.push_back(gi);
    if (output_mask[1]) outs.push_back(gw);
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& g = saved[0];
    const Tensor& x = saved[1];
    const Tensor& weight = saved[2];
    const bool has_gi = ctx->saved_data["grad_input"].toBool();
    const bool has_gw = ctx->saved_data["grad_weight"].toBool();
    const Tensor gg_input = has_gi ? grads[0] : Tensor();
    const Tensor gg_weight = has_gw ? grads[has_gi ? 1 : 0] : Tensor();
    const Tensor pos = x > 0;
    const Tensor zero = at::zeros({}, x.options());
    const Tensor w = broadcast_weight(weight, x);
    const Tensor ggw = gg_weight.defined() ? broadcast_weight(gg_weight, x) : Tensor();

    Tensor d_g, d_x, d_w;
    if (ctx->needs_input_grad(0)) {
      if (gg_input.defined()) d_g = at::where(pos, gg_input, w * gg_input);
      if (ggw.defined()) {
        const Tensor t = at::where(pos, zero, x * ggw);
        d_g = d_g.defined() ? d_g + t : t;
      }
    }
    if (ggw.defined() && ctx->needs_input_grad(1)) {
      d_x = at::where(pos, zero, g * ggw);
    }
    if (gg_input.defined() && ctx->needs_input_grad(2)) {
      d_w = reduce_to_weight(at::where(pos, zero, g * gg_input), weight);
    }
    return {d_g, d_x, d_w, Tensor()};
  }
};

std::tuple<Tensor, Tensor> dead_prelu_autograd(const Tensor& input, const Tensor& weight) {
  if (!(at::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad()))) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return torch_relu_ext::dead_prelu(input, weight);
  }
  auto out = DeadPreluFunction::apply(input, weight);
  return {out[0], out[1]};
}

std::tuple<Tensor, Tensor> dead_prelu_backward_autograd(const Tensor& grad_output,
                                                        const Tensor& input, const Tensor& weight,
                                                        std::array<bool, 2> output_mask) {
  if (!(at::GradMode::is_enabled() &&
        (grad_output.requires_grad() || input.requires_grad() || weight.requires_grad()))) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return torch_relu_ext::dead_prelu_backward(grad_output, input, weight, output_mask);
  }
  auto out = DeadPreluBackwardFunction::apply(grad_output, input, weight, output_mask);
  Tensor gi = output_mask[0] ? out[0] : Tensor();
  Tensor gw = output_mask[1] ? out[output_mask[0] ? 1 : 0] : Tensor();
  return {gi, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, Autograd, m) {
  m.impl("dead_prelu", &dead_prelu_autograd);
  m.impl("dead_prelu_backward", &dead_prelu_backward_autograd);
}

}  // namespace torch_relu_ext::autograd
