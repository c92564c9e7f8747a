// Argument checks shared by every device's kernels (defined in ops.cpp).
// Messages name the operator, the argument, what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>

namespace torch_relu_ext::detail {

// The building blocks of every operator's checks: a defined, strided,
// non-quantized tensor; one of float32/float64/bfloat16/float16; the dtype
// and device of `ref`.
void check_tensor(const char* op, const char* name, const at::Tensor& t);
void check_float(const char* op, const char* name, const at::Tensor& t);
void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref);

void check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias);

void check_linear_backward_args(const char* op, const at::Tensor& grad_output,
                                const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& mask);

void check_mask_unpack_args(const char* op, const at::Tensor& mask, int64_t rows,
                            int64_t out_features);

// Whether masks on this device use the padded (cuBLASLt) leading dimension.
inline bool mask_padded(const at::Device& device) { return device.is_cuda(); }

void check_prelu_args(const char* op, const at::Tensor& input, const at::Tensor& weight);

void check_prelu_backward_args(const char* op, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& weight);

// (*, features) viewed as (rows, features); unlike reshape({-1, features})
// this also works when features == 0.
inline at::Tensor as_rows(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return t.reshape({rows, t.size(-1)});
}

// as_rows for code that also runs under torch.compile's symbolic shapes
// (the autograd formulas): no concrete sizes are read.
inline at::Tensor as_rows_symint(const at::Tensor& t) {
  c10::SymInt rows = 1;
  const auto sizes = t.sym_sizes();
  for (size_t d = 0; d + 1 < sizes.size(); ++d) rows = rows * sizes[d];
  return t.reshape_symint({rows, sizes.back()});
}

void check_dead_stats_args(const char* op, const at::Tensor& ema,
                           const at::Tensor& num_batches_tracked, const at::Tensor& counts,
                           double momentum);

// Channels of a PReLU input: size(1) for 2+ dims, else 1.
int64_t prelu_channels(const at::Tensor& input);

// A PReLU input as the dense [A, C, B] array every device's kernels walk:
// C channels, A and B the products of the dims laid out before and after the
// channel dim in memory. Dense layouts (contiguous, channels-last, any other
// permutation) are used in place; only non-dense views are copied, in the
// layout empty_like would pick. The channel of offset o is (o / B) % C.
struct PreluLayout {
  at::Tensor x;
  int64_t A = 1;
  int64_t C = 1;
  int64_t B = 1;
};
PreluLayout prelu_layout(const at::Tensor& input);

// `t` with exactly the strides of `like` (same shape): `t` itself when they
// already match, else a copy. Lets one kernel walk two tensors in lockstep.
at::Tensor with_strides_of(const at::Tensor& t, const at::Tensor& like);

// (rows, out_features) of a fused_linear_relu output of shape (*, out).
std::pair<int64_t, int64_t> output_rows_cols(const at::Tensor& output);

}  // namespace torch_relu_ext::detail
