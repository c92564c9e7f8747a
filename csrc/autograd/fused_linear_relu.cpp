// Autograd of fused_linear_relu, registered in C++ on the Autograd key so that
// Python, TorchScript, LibTorch and torch.func programs all get derivatives.
//
// Reverse mode: the forward saves input, weight and the 1-bit-per-element
// ReLU mask (never the output); the backward node calls
// relu_ext::fused_linear_relu_backward, whose own node (below) gives double
// backward. Forward mode: each kernel sets its output's tangent from the
// inputs' tangents (formulas next to each kernel).
#include <ATen/TensorOperators.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "autograd_utils.h"
#include "checks.h"
#include "torch_relu_ext/ops.h"

namespace torch_relu_ext::autograd {
namespace {

// The operator users call; the forward-with-mask variant reports errors under
// this name too (the modules call it in training mode).
constexpr const char* kOp = "relu_ext::fused_linear_relu";

Tensor unpack_mask(const Tensor& mask, const Tensor& like) {
  // Symbolic-shape safe (AOTAutograd traces the formulas with dynamic sizes).
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("relu_ext::relu_mask_unpack", "")
                       .typed<Tensor(const Tensor&, c10::SymIntArrayRef)>();
  return op.call(mask, like.sym_sizes());
}

// Tangent of relu(x W^T + b): the linear part's tangent, zeroed where the
// output is <= 0 (eager's ReLU formula, threshold_backward on the result:
// NaN outputs pass the tangent through, like the mask bit).
Tensor forward_tangent(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                       const Tensor& out) {
  const Tensor tx = tangent(input);
  const Tensor tw = tangent(weight);
  const Tensor tb = tangent(bias);
  if (!tx.defined() && !tw.defined() && !tb.defined()) return {};
  Tensor t;
  if (tx.defined()) t = at::linear(tx, primal(weight));
  if (tw.defined()) t = add_defined(t, at::linear(primal(input), tw));
  if (tb.defined()) t = t.defined() ? t + tb : tb.expand_symint(out.sym_sizes());
  return t.masked_fill(out <= 0, 0);
}

struct FusedLinearReluBackward : public torch::autograd::TraceableFunction {
  std::string name() const override { return "FusedLinearReluBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
    mask_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list result(3);
    const std::array<bool, 3> selected = {task_should_compute_output(0),
                                          task_should_compute_output(1),
                                          task_should_compute_output(2)};
    if (!grads[0].defined() || !(selected[0] || selected[1] || selected[2])) return result;
    auto [gi, gw, gb] = torch_relu_ext::detail::fused_linear_relu_backward(
        grads[0], input_.unpack(), weight_.unpack(), mask_.unpack(), selected);
    result[0] = gi;
    result[1] = gw;
    result[2] = gb;
    return result;
  }
  SavedVariable input_, weight_, mask_;
};

bool static_shapes(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias) {
  auto concrete = [](const Tensor& t) {
    return !t.defined() || !t.unsafeGetTensorImpl()->has_symbolic_sizes_strides();
  };
  return concrete(input) && concrete(weight) && (!bias.has_value() || concrete(*bias));
}

std::tuple<Tensor, Tensor> forward_with_mask(const Tensor& input, const Tensor& weight,
                                             const std::optional<Tensor>& bias) {
  // Checked here so that errors name the public operator (symbolic shapes
  // are checked by the fake kernel instead).
  if (static_shapes(input, weight, bias)) detail::check_linear_args(kOp, input, weight, bias);
  auto node = make_node<FusedLinearReluBackward>(input, weight, bias);
  Tensor out, mask;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, mask) = torch_relu_ext::detail::fused_linear_relu_forward(input, weight, bias);
  }
  if (node) {
    torch::autograd::set_history(out, node);
    node->input_ = SavedVariable(input, false);
    node->weight_ = SavedVariable(weight, false);
    node->mask_ = SavedVariable(mask, false);
  }
  set_tangent(out, forward_tangent(input, weight, bias, out));
  return {out, mask};
}

Tensor fused_linear_relu_autograd(const Tensor& input, const Tensor& weight,
                                  const std::optional<Tensor>& bias) {
  if (torch::autograd::compute_requires_grad(input, weight, bias)) {
    return std::get<0>(forward_with_mask(input, weight, bias));
  }
  // Nothing to differentiate in reverse mode: the plain kernel, no mask.
  Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = torch_relu_ext::fused_linear_relu(input, weight, bias);
  }
  set_tangent(out, forward_tangent(input, weight, bias, out));
  return out;
}

// Derivatives of fused_linear_relu_backward. With the mask m fixed (ReLU's
// derivative is piecewise constant) and gm = where(m, g, 0):
//   grad_input = gm @ W,  grad_weight = gm^T @ x,  grad_bias = sum_rows(gm),
// bilinear in (g, W) and (g, x), so both modes are a few ATen products.
struct BackwardInputs {
  Tensor g, x, w, active;  // rows views; active as g's shape
};

BackwardInputs rows_of(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                       const Tensor& mask) {
  BackwardInputs b;
  b.g = detail::as_rows_symint(grad_output);
  b.x = detail::as_rows_symint(input);
  b.w = weight;
  b.active = unpack_mask(mask, grad_output).reshape_symint(b.g.sym_sizes());
  return b;
}

Tensor masked(const Tensor& active, const Tensor& t) {
  return at::where(active, t, at::zeros({}, t.options()));
}

struct FusedLinearReluBackwardBackward : public torch::autograd::TraceableFunction {
  std::string name() const override { return "FusedLinearReluBackwardBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    grad_output_.reset_data();
    input_.reset_data();
    weight_.reset_data();
    mask_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Tensor grad_output = grad_output_.unpack();
    const Tensor input = input_.unpack();
    const Tensor weight = weight_.unpack();
    const BackwardInputs b = rows_of(grad_output, input, weight, mask_.unpack());
    const Tensor& gg_input = grads[0];
    const Tensor& gg_weight = grads[1];
    const Tensor& gg_bias = grads[2];
    Tensor d_gm;
    if (gg_input.defined()) d_gm = detail::as_rows_symint(gg_input).mm(weight.t());
    if (gg_weight.defined()) d_gm = add_defined(d_gm, b.x.mm(gg_weight.t()));
    if (gg_bias.defined()) d_gm = add_defined(d_gm, gg_bias.expand_symint(b.g.sym_sizes()));
    variable_list result(3);
    if (d_gm.defined() && task_should_compute_output(0)) {
      result[0] = masked(b.active, d_gm).view_symint(grad_output.sym_sizes());
    }
    if ((gg_weight.defined() && task_should_compute_output(1)) ||
        (gg_input.defined() && task_should_compute_output(2))) {
      const Tensor gm = masked(b.active, b.g);
      if (gg_weight.defined() && task_should_compute_output(1)) {
        result[1] = gm.mm(gg_weight).view_symint(input.sym_sizes());
      }
      if (gg_input.defined() && task_should_compute_output(2)) {
        result[2] = gm.t().mm(detail::as_rows_symint(gg_input));
      }
    }
    return result;
  }
  SavedVariable grad_output_, input_, weight_, mask_;
};

// Tangents of the three gradients (forward-over-reverse, e.g. jacfwd(jacrev)).
void set_backward_tangents(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                           const Tensor& mask, const std::array<Tensor, 3>& outs) {
  const Tensor tg = tangent(grad_output);
  const Tensor tx = tangent(input);
  const Tensor tw = tangent(weight);
  if (!tg.defined() && !tx.defined() && !tw.defined()) return;
  const BackwardInputs b = rows_of(primal(grad_output), primal(input), primal(weight), mask);
  const Tensor gm = masked(b.active, b.g);
  const Tensor gm_t = tg.defined() ? masked(b.active, detail::as_rows_symint(tg)) : Tensor();
  if (outs[0].defined()) {
    Tensor t;
    if (gm_t.defined()) t = gm_t.mm(b.w);
    if (tw.defined()) t = add_defined(t, gm.mm(tw));
    if (t.defined()) set_tangent(outs[0], t.view_symint(input.sym_sizes()));
  }
  if (outs[1].defined()) {
    Tensor t;
    if (gm_t.defined()) t = gm_t.t().mm(b.x);
    if (tx.defined()) t = add_defined(t, gm.t().mm(detail::as_rows_symint(tx)));
    set_tangent(outs[1], t);
  }
  if (outs[2].defined() && gm_t.defined()) set_tangent(outs[2], gm_t.sum(0));
}

std::tuple<Tensor, Tensor, Tensor> fused_linear_relu_backward_autograd(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight, const Tensor& mask,
    std::array<bool, 3> output_mask) {
  auto node = make_node<FusedLinearReluBackwardBackward>(grad_output, input, weight);
  Tensor gi, gw, gb;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(gi, gw, gb) = torch_relu_ext::detail::fused_linear_relu_backward(
        grad_output, input, weight, mask, output_mask);
  }
  if (node) {
    torch::autograd::set_history({gi, gw, gb}, node);
    node->grad_output_ = SavedVariable(grad_output, false);
    node->input_ = SavedVariable(input, false);
    node->weight_ = SavedVariable(weight, false);
    node->mask_ = SavedVariable(mask, false);
  }
  set_backward_tangents(grad_output, input, weight, mask, {gi, gw, gb});
  return {gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, Autograd, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_autograd);
  m.impl("fused_linear_relu_forward", &forward_with_mask);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_autograd);
}

}  // namespace torch_relu_ext::autograd
