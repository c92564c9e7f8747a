// C++ API of torch-relu-ext. Each function calls the registered relu_ext
// operator through the PyTorch dispatcher, so autograd, device dispatch and
// TorchScript see exactly what Python sees.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

// The public API.
namespace torch_relu_ext {

// relu(input @ weight.T + bias). input (*, in_features), weight
// (out_features, in_features), bias (out_features) or none.
at::Tensor fused_linear_relu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias = std::nullopt);

// F.prelu(input, weight) plus, per channel, the number of strictly positive
// input elements (int64 [C]; C = input.size(1) for 2+ dims, else 1).
std::tuple<at::Tensor, at::Tensor> dead_prelu(const at::Tensor& input, const at::Tensor& weight);

}  // namespace torch_relu_ext

// detail: internal operators (autograd, autocast and the modules use them):
// callable, but no stability promise (torchvision's convention).
namespace torch_relu_ext::detail {

// Forward that also returns the packed ReLU mask kept for backward: uint8
// [ceil(rows * ld / 8)], where ld = out_features bits per row on CPU and
// out_features rounded up to 128 on CUDA (cuBLASLt's rule; padding bits are
// 0). The bit of output element (r, o) is bit r * ld + o, LSB first, set where
// the pre-activation is not <= 0 (positive or NaN: where eager ReLU's backward
// passes the gradient). Layout and cuBLASLt's exceptions: docs/cuda.md.
std::tuple<at::Tensor, at::Tensor> fused_linear_relu_forward(
    const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias = std::nullopt);

// Gradients of fused_linear_relu from the saved input, weight and mask.
// output_mask selects (grad_input, grad_weight, grad_bias); unselected ones
// are returned undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_relu_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, std::array<bool, 3> output_mask);

// The packed mask expanded to a bool tensor of the given shape.
at::Tensor relu_mask_unpack(const at::Tensor& mask, at::IntArrayRef size);

// Per output feature, the number of set bits of the mask that
// fused_linear_relu_forward returned with `output`: int64 [out_features]. A
// popcount over the mask's real (non-padding) bits; `output` gives the shape
// only, its data is not read.
at::Tensor relu_mask_count(const at::Tensor& mask, const at::Tensor& output);

// (grad_input, grad_weight) of dead_prelu; output_mask selects which.
std::tuple<at::Tensor, at::Tensor> dead_prelu_backward(const at::Tensor& grad_output,
                                                       const at::Tensor& input,
                                                       const at::Tensor& weight,
                                                       std::array<bool, 2> output_mask);

}  // namespace torch_relu_ext::detail
