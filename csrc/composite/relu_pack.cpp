// relu_ext::relu_pack / relu_unpack for every device without a kernel of its
// own (CUDA): a few ATen ops, same layout as the CPU kernels in
// csrc/cpu/relu_pack.cpp. compress_relu_activations() uses them on CPU only.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

namespace torch_relu_ext::composite {
namespace {

using at::Tensor;

at::ScalarType bits_type(const Tensor& t) {
  switch (t.element_size()) {
    case 2:
      return at::kShort;
    case 4:
      return at::kInt;
    default:
      return at::kLong;
  }
}

std::tuple<Tensor, Tensor> relu_pack(const Tensor& self) {
  TORCH_CHECK(self.layout() == at::kStrided && self.is_floating_point(),
              "relu_ext::relu_pack: expected argument 'self' to be a dense floating-point tensor, "
              "but got ",
              self.scalar_type(), " with layout ", self.layout());
  const Tensor flat = self.contiguous().view(-1);
  const Tensor nonzero = flat.view(bits_type(flat)) != 0;
  const int64_t n = flat.numel();
  const Tensor padded = at::constant_pad_nd(nonzero.to(at::kInt), {0, (8 - n % 8) % 8});
  const Tensor shifts = at::arange(8, flat.options().dtype(at::kInt));
  const Tensor bits = padded.view({-1, 8}).bitwise_left_shift(shifts).sum(1).to(at::kByte);
  return {bits, flat.masked_select(nonzero)};
}

Tensor relu_unpack(const Tensor& bits, const Tensor& values, c10::SymIntArrayRef sym_size) {
  const auto size = C10_AS_INTARRAYREF_SLOW(sym_size);
  int64_t n = 1;
  for (const int64_t s : size) n *= s;
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.dim() == 1 && bits.size(0) == (n + 7) / 8,
              "relu_ext::relu_unpack: expected argument 'bits' to be a uint8 tensor of shape (",
              (n + 7) / 8, ",) for size ", size, ", but got ", bits.scalar_type(), " of shape ",
              bits.sizes());
  const Tensor shifts = at::arange(8, bits.options().dtype(at::kInt));
  const Tensor mask = bits.to(at::kInt)
                          .unsqueeze(1)
                          .bitwise_right_shift(shifts)
                          .bitwise_and(1)
                          .view(-1)
                          .narrow(0, 0, n)
                          .to(at::kBool);
  Tensor out = at::zeros({n}, values.options());
  out.masked_scatter_(mask, values);
  return out.view(size);
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CompositeExplicitAutograd, m) {
  m.impl("relu_pack", &relu_pack);
  m.impl("relu_unpack", &relu_unpack);
}

}  // namespace torch_relu_ext::composite
