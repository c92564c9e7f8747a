// The one place that declares every relu_ext operator schema, plus the C++ API
// of ops.h (dispatcher calls) and the argument checks every kernel shares.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include "checks.h"
#include "core/relu_mask.h"
#include "torch_relu_ext/ops.h"

TORCH_LIBRARY(relu_ext, m) {
  m.def(
      "fused_linear_relu(Tensor input, Tensor weight, Tensor? bias=None) "
      "-> Tensor");
  m.def(
      "fused_linear_relu_forward(Tensor input, Tensor weight, "
      "Tensor? bias=None) -> (Tensor output, Tensor mask)");
  m.def(
      "fused_linear_relu_backward(Tensor grad_output, Tensor input, "
      "Tensor weight, Tensor mask, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  m.def("relu_mask_unpack(Tensor mask, SymInt[] size) -> Tensor");
  // `output` gives the (*, out_features) shape only; its data is not read.
  m.def("relu_mask_count(Tensor mask, Tensor output) -> Tensor");
  // In place: ema = first batch ? counts / elements
  //                       : (1 - momentum) * ema + momentum * counts / elements,
  // then num_batches_tracked += 1. The modules' statistics step, in one call.
  m.def(
      "dead_stats_update_(Tensor(a!) ema, Tensor(b!) num_batches_tracked, Tensor counts, "
      "SymInt elements, float momentum) -> ()");
  // Lossless compressed storage of a mostly-zero tensor: 1 bit per element
  // (bit pattern != 0, element i in byte i/8, bit i%8) plus the non-zero
  // elements in order. relu_unpack(relu_pack(t), t.shape) is bitwise t.
  m.def("relu_pack(Tensor self) -> (Tensor bits, Tensor values)");
  m.def("relu_unpack(Tensor bits, Tensor values, SymInt[] size) -> Tensor");
  m.def(
      "dead_prelu(Tensor input, Tensor weight) "
      "-> (Tensor output, Tensor active_count)");
  m.def(
      "dead_prelu_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "bool[2] output_mask) -> (Tensor grad_input, Tensor grad_weight)");
}

namespace torch_relu_ext {

namespace {
template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").template typed<Sig>();
}
}  // namespace

at::Tensor fused_linear_relu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias) {
  static auto op = op_handle<decltype(fused_linear_relu)>("relu_ext::fused_linear_relu");
  return op.call(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor> dead_prelu(const at::Tensor& input, const at::Tensor& weight) {
  static auto op = op_handle<decltype(dead_prelu)>("relu_ext::dead_prelu");
  return op.call(input, weight);
}

// Internal operators (ops.h): the same dispatcher calls, no stability promise.
namespace detail {

std::tuple<at::Tensor, at::Tensor> fused_linear_relu_forward(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  static auto op =
      op_handle<decltype(fused_linear_relu_forward)>("relu_ext::fused_linear_relu_forward");
  return op.call(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_relu_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, std::array<bool, 3> output_mask) {
  static auto op =
      op_handle<decltype(fused_linear_relu_backward)>("relu_ext::fused_linear_relu_backward");
  return op.call(grad_output, input, weight, mask, output_mask);
}

at::Tensor relu_mask_unpack(const at::Tensor& mask, at::IntArrayRef size) {
  static auto op =
      op_handle<at::Tensor(const at::Tensor&, c10::SymIntArrayRef)>("relu_ext::relu_mask_unpack");
  return op.call(mask, c10::fromIntArrayRefSlow(size));
}

at::Tensor relu_mask_count(const at::Tensor& mask, const at::Tensor& output) {
  static auto op = op_handle<decltype(relu_mask_count)>("relu_ext::relu_mask_count");
  return op.call(mask, output);
}

std::tuple<at::Tensor, at::Tensor> dead_prelu_backward(const at::Tensor& grad_output,
                                                       const at::Tensor& input,
                                                       const at::Tensor& weight,
                                                       std::array<bool, 2> output_mask) {
  static auto op = op_handle<decltype(dead_prelu_backward)>("relu_ext::dead_prelu_backward");
  return op.call(grad_output, input, weight, output_mask);
}

// The argument checks every kernel shares (csrc/checks.h).
namespace {

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

void check_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": expected argument '", name,
              "' to be a tensor, but got an undefined tensor");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": expected argument '", name,
              "' to be a dense (strided) tensor, but got layout ", t.layout());
  TORCH_CHECK(!t.is_quantized(), op, ": expected argument '", name,
              "' to be a non-quantized tensor, but got dtype ", t.scalar_type());
}

void check_float(const char* op, const char* name, const at::Tensor& t) {
  check_tensor(op, name, t);
  TORCH_CHECK(supported_float(t.scalar_type()), op, ": expected argument '", name,
              "' to have a floating-point dtype (float32, float64, bfloat16 "
              "or float16), but got ",
              t.scalar_type());
}

void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected argument '", name,
              "' to have the same dtype as '", ref_name, "' (", ref.scalar_type(), "), but got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected argument '", name,
              "' to be on the same device as '", ref_name, "' (", ref.device(), "), but it is on ",
              t.device());
}

void check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  check_float(op, "input", input);
  check_float(op, "weight", weight);
  check_same(op, "weight", weight, "input", input);
  TORCH_CHECK(input.dim() >= 1, op,
              ": expected argument 'input' to have shape (*, in_features) "
              "with at least 1 dimension, but got a 0-D tensor");
  TORCH_CHECK(weight.dim() == 2, op,
              ": expected argument 'weight' to have shape (out_features, "
              "in_features), but got a ",
              weight.dim(), "-D tensor of shape ", weight.sizes());
  TORCH_CHECK(input.size(-1) == weight.size(1), op,
              ": expected the last dimension of 'input' (in_features) to "
              "equal weight.size(1) = ",
              weight.size(1), ", but got input of shape ", input.sizes());
  if (bias.has_value() && bias->defined()) {
    check_float(op, "bias", *bias);
    check_same(op, "bias", *bias, "input", input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": expected argument 'bias' to have shape (out_features,) = (", weight.size(0),
                ",), but got shape ", bias->sizes());
  }
}

void check_linear_backward_args(const char* op, const at::Tensor& grad_output,
                                const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& mask) {
  check_linear_args(op, input, weight, std::nullopt);
  check_float(op, "grad_output", grad_output);
  check_same(op, "grad_output", grad_output, "input", input);
  std::vector<int64_t> expected = input.sizes().vec();
  expected.back() = weight.size(0);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op,
              ": expected argument 'grad_output' to have shape ", at::IntArrayRef(expected),
              ", but got ", grad_output.sizes());
  check_tensor(op, "mask", mask);
  TORCH_CHECK(mask.device() == input.device(), op, ": expected argument 'mask' to be on ",
              input.device(), ", but it is on ", mask.device());
  const int64_t out_f = weight.size(0);
  const int64_t rows = out_f == 0 ? 0 : grad_output.numel() / out_f;
  check_mask_unpack_args(op, mask, rows, out_f);
}

void check_mask_unpack_args(const char* op, const at::Tensor& mask, int64_t rows,
                            int64_t out_features) {
  check_tensor(op, "mask", mask);
  const int64_t bytes = core::relu_mask_bytes(rows, out_features, mask_padded(mask.device()));
  TORCH_CHECK(mask.scalar_type() == at::kByte && mask.dim() == 1 && mask.size(0) == bytes, op,
              ": expected argument 'mask' to be a uint8 tensor of shape (", bytes,
              ",) as returned by fused_linear_relu_forward for ", rows, " rows of ", out_features,
              " features on ", mask.device(), ", but got ", mask.scalar_type(), " of shape ",
              mask.sizes());
}

void check_dead_stats_args(const char* op, const at::Tensor& ema,
                           const at::Tensor& num_batches_tracked, const at::Tensor& counts,
                           double momentum) {
  TORCH_CHECK(momentum > 0.0 && momentum <= 1.0, op, ": expected momentum in (0, 1], but got ",
              momentum);
  TORCH_CHECK(counts.sizes() == ema.sizes(), op,
              ": expected argument 'counts' to have the shape of 'ema' ", ema.sizes(), ", but got ",
              counts.sizes());
  TORCH_CHECK(num_batches_tracked.numel() == 1, op,
              ": expected argument 'num_batches_tracked' to have one element, but got ",
              num_batches_tracked.numel());
}

int64_t prelu_channels(const at::Tensor& input) { return input.dim() >= 2 ? input.size(1) : 1; }

PreluLayout prelu_layout(const at::Tensor& input) {
  PreluLayout l;
  l.x = input.is_non_overlapping_and_dense() ? input
                                             : input.contiguous(input.suggest_memory_format());
  const int64_t numel = l.x.numel();
  l.C = input.dim() >= 2 ? l.x.size(1) : 1;
  if (l.C <= 1 || numel == 0) {
    l.B = numel;  // one channel (or nothing): a single run
    return l;
  }
  // Dense and non-overlapping: the dims laid out after the channel dim span
  // exactly stride(1) elements.
  l.B = l.x.stride(1);
  l.A = numel / (l.C * l.B);
  return l;
}

at::Tensor with_strides_of(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_strided(like.sizes(), like.strides(), t.options());
  out.copy_(t);
  return out;
}

std::pair<int64_t, int64_t> output_rows_cols(const at::Tensor& output) {
  if (output.dim() == 0) return {1, 1};
  const at::Tensor rows = as_rows(output);
  return {rows.size(0), rows.size(1)};
}

void check_prelu_args(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  check_float(op, "input", input);
  check_float(op, "weight", weight);
  check_same(op, "weight", weight, "input", input);
  TORCH_CHECK(weight.dim() <= 1, op,
              ": expected argument 'weight' to be a scalar or 1-D tensor, but "
              "got a ",
              weight.dim(), "-D tensor of shape ", weight.sizes());
  const int64_t channels = prelu_channels(input);
  TORCH_CHECK(weight.numel() == 1 || weight.numel() == channels, op,
              ": expected argument 'weight' to have 1 element or one per "
              "channel (",
              channels, " for input of shape ", input.sizes(), "), but got ", weight.numel(),
              " elements");
}

void check_prelu_backward_args(const char* op, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& weight) {
  check_prelu_args(op, input, weight);
  check_float(op, "grad_output", grad_output);
  check_same(op, "grad_output", grad_output, "input", input);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op,
              ": expected argument 'grad_output' to have the shape of 'input' ", input.sizes(),
              ", but got ", grad_output.sizes());
}

}  // namespace detail
}  // namespace torch_relu_ext
