// Helpers shared by the autograd kernels. They build graph nodes the way
// PyTorch's generated VariableType code does (a Node subclass per operator,
// not torch::autograd::Function), because torch.func refuses C++ Functions
// but handles ordinary nodes, and because forward-mode AD needs the kernel
// to set the output's tangent itself.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <optional>

namespace torch_relu_ext::autograd {

using at::Tensor;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Forward-mode AD uses level 0, as ATen's own formulas do (torch.func's jvp
// maps its levels onto it).
constexpr uint64_t kFwLevel = 0;

inline bool has_tangent(const Tensor& t) { return t.defined() && t._fw_grad(kFwLevel).defined(); }
inline bool has_tangent(const std::optional<Tensor>& t) { return t.has_value() && has_tangent(*t); }

// The tangent of `t`, or an undefined tensor when it has none (a zero tangent).
inline Tensor tangent(const Tensor& t) { return t.defined() ? t._fw_grad(kFwLevel) : Tensor(); }
inline Tensor tangent(const std::optional<Tensor>& t) {
  return t.has_value() ? tangent(*t) : Tensor();
}

// `t` without its tangent (still differentiable by reverse mode).
inline Tensor primal(const Tensor& t) {
  return t.defined() && has_tangent(t) ? t._fw_primal(kFwLevel) : t;
}

// a + b where either may be undefined (a zero tangent).
inline Tensor add_defined(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

// Gives `out` the tangent `t` (skipped when every input tangent was zero).
inline void set_tangent(const Tensor& out, const Tensor& t) {
  if (t.defined()) out._set_fw_grad(t, kFwLevel, /*is_inplace_op=*/false);
}

// A node of this operator's backward, connected to the inputs that need
// gradients; null when none does (or grad mode is off).
template <typename NodeT, typename... Inputs>
c10::intrusive_ptr<NodeT> make_node(const Inputs&... inputs) {
  if (!torch::autograd::compute_requires_grad(inputs...)) return {};
  auto node = c10::make_intrusive<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

}  // namespace torch_relu_ext::autograd
