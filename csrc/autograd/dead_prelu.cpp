// Autograd of dead_prelu, registered in C++ on the Autograd key (reverse and
// forward mode, see csrc/autograd/autograd_utils.h). The active counts are
// integer statistics and not differentiable.
#include <ATen/TensorOperators.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "autograd_utils.h"
#include "torch_relu_ext/ops.h"

namespace torch_relu_ext::autograd {
namespace {

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

Tensor zero_like_scalar(const Tensor& t) { return at::zeros({}, t.options()); }

struct DeadPreluBackward : public torch::autograd::TraceableFunction {
  std::string name() const override { return "DeadPreluBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list result(2);
    const std::array<bool, 2> selected = {task_should_compute_output(0),
                                          task_should_compute_output(1)};
    if (!grads[0].defined() || !(selected[0] || selected[1])) return result;
    auto [gi, gw] = torch_relu_ext::detail::dead_prelu_backward(grads[0], input_.unpack(),
                                                                weight_.unpack(), selected);
    result[0] = gi;
    result[1] = gw;
    return result;
  }
  SavedVariable input_, weight_;
};

// Eager's _prelu_kernel tangent: where(x >= 0, tx, w * tx + tw * x).
Tensor forward_tangent(const Tensor& input, const Tensor& weight) {
  const Tensor tx = tangent(input);
  const Tensor tw = tangent(weight);
  if (!tx.defined() && !tw.defined()) return {};
  const Tensor x = primal(input);
  const Tensor w = broadcast_weight(primal(weight), x);
  Tensor neg;
  if (tx.defined()) neg = w * tx;
  if (tw.defined()) neg = add_defined(neg, broadcast_weight(tw, x) * x);
  return at::where(x >= 0, tx.defined() ? tx : zero_like_scalar(neg), neg);
}

std::tuple<Tensor, Tensor> dead_prelu_autograd(const Tensor& input, const Tensor& weight) {
  auto node = make_node<DeadPreluBackward>(input, weight);
  Tensor out, counts;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, counts) = torch_relu_ext::dead_prelu(input, weight);
  }
  if (node) {
    torch::autograd::set_history(out, node);
    node->input_ = SavedVariable(input, false);
    node->weight_ = SavedVariable(weight, false);
  }
  set_tangent(out, forward_tangent(input, weight));
  return {out, counts};
}

// Derivatives of dead_prelu_backward. With pos = input > 0 (piecewise
// constant in input):
//   grad_input  = where(pos, g, w * g)
//   grad_weight = reduce(where(pos, 0, x * g))
struct DeadPreluBackwardBackward : public torch::autograd::TraceableFunction {
  std::string name() const override { return "DeadPreluBackwardBackward"; }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    grad_output_.reset_data();
    input_.reset_data();
    weight_.reset_data();
  }
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const Tensor g = grad_output_.unpack();
    const Tensor x = input_.unpack();
    const Tensor weight = weight_.unpack();
    const Tensor& gg_input = grads[0];
    const Tensor ggw = grads[1].defined() ? broadcast_weight(grads[1], x) : Tensor();
    const Tensor pos = x > 0;
    const Tensor zero = zero_like_scalar(x);
    variable_list result(3);
    if (task_should_compute_output(0)) {
      Tensor d_g;
      if (gg_input.defined())
        d_g = at::where(pos, gg_input, broadcast_weight(weight, x) * gg_input);
      if (ggw.defined()) d_g = add_defined(d_g, at::where(pos, zero, x * ggw));
      result[0] = d_g;
    }
    if (ggw.defined() && task_should_compute_output(1)) {
      result[1] = at::where(pos, zero, g * ggw);
    }
    if (gg_input.defined() && task_should_compute_output(2)) {
      result[2] = reduce_to_weight(at::where(pos, zero, g * gg_input), weight);
    }
    return result;
  }
  SavedVariable grad_output_, input_, weight_;
};

// Eager's _prelu_kernel_backward tangents (its formula tests x >= 0):
//   grad_input:  where(x >= 0, tg, tg * w + g * tw)
//   grad_weight: reduce(where(x >= 0, 0, g * tx + tg * x))
void set_backward_tangents(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                           const Tensor& gi, const Tensor& gw) {
  const Tensor tg = tangent(grad_output);
  const Tensor tx = tangent(input);
  const Tensor tw = tangent(weight);
  if (!tg.defined() && !tx.defined() && !tw.defined()) return;
  const Tensor g = primal(grad_output);
  const Tensor x = primal(input);
  const Tensor w = broadcast_weight(primal(weight), x);
  const Tensor nonneg = x >= 0;
  const Tensor zero = zero_like_scalar(x);
  if (gi.defined()) {
    Tensor neg;
    if (tg.defined()) neg = tg * w;
    if (tw.defined()) neg = add_defined(neg, g * broadcast_weight(tw, x));
    if (neg.defined()) set_tangent(gi, at::where(nonneg, tg.defined() ? tg : zero, neg));
  }
  if (gw.defined() && (tx.defined() || tg.defined())) {
    Tensor t;
    if (tx.defined()) t = g * tx;
    if (tg.defined()) t = add_defined(t, tg * x);
    set_tangent(gw, reduce_to_weight(at::where(nonneg, zero, t), primal(weight)));
  }
}

std::tuple<Tensor, Tensor> dead_prelu_backward_autograd(const Tensor& grad_output,
                                                        const Tensor& input, const Tensor& weight,
                                                        std::array<bool, 2> output_mask) {
  auto node = make_node<DeadPreluBackwardBackward>(grad_output, input, weight);
  Tensor gi, gw;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(gi, gw) =
        torch_relu_ext::detail::dead_prelu_backward(grad_output, input, weight, output_mask);
  }
  if (node) {
    torch::autograd::set_history({gi, gw}, node);
    node->grad_output_ = SavedVariable(grad_output, false);
    node->input_ = SavedVariable(input, false);
    node->weight_ = SavedVariable(weight, false);
  }
  set_backward_tangents(grad_output, input, weight, gi, gw);
  return {gi, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, Autograd, m) {
  m.impl("dead_prelu", &dead_prelu_autograd);
  m.impl("dead_prelu_backward", &dead_prelu_backward_autograd);
}

}  // namespace torch_relu_ext::autograd
