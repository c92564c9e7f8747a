// Element-wise math of the two operators, written once for every device.
//
// Conventions (they reproduce PyTorch exactly, including signed zeros and NaN):
//   relu(y)          = y < 0 ? 0 : y        (relu(-0.0) == -0.0, relu(NaN) == NaN)
//   mask bit of y    = !(y <= 0)           (positive or NaN: exactly where eager
//                                          ReLU's backward, threshold_backward(
//                                          grad, relu(y), 0), passes the grad)
//   prelu(x, w)      = x > 0 ? x : w * x
//   d prelu / d x    = x > 0 ? 1 : w
//   d prelu / d w    = x > 0 ? 0 : x
// "Active" for PReLU's dead-neuron statistics means strictly positive.
#pragma once

#include "macros.h"

namespace torch_relu_ext::core {

template <typename T>
RELU_EXT_HD T relu(T y) {
  return y < T(0) ? T(0) : y;
}

// The ReLU mask bit: the gradient passes where this is true.
template <typename T>
RELU_EXT_HD bool relu_passes(T y) {
  return !(y <= T(0));
}

template <typename T>
RELU_EXT_HD bool active(T y) {
  return y > T(0);
}

template <typename T>
RELU_EXT_HD T prelu(T x, T w) {
  return x > T(0) ? x : w * x;
}

template <typename T>
RELU_EXT_HD T prelu_grad_input(T x, T w, T g) {
  return x > T(0) ? g : w * g;
}

template <typename T>
RELU_EXT_HD T prelu_grad_weight(T x, T g) {
  return x > T(0) ? T(0) : x * g;
}

}  // namespace torch_relu_ext::core
