// CPU kernels of fused_linear_relu (forward, forward with mask, backward) and
// of relu_mask_unpack. Every matrix product goes through gemm::mm
// (gemm/gemm.h), which also applies the forward's bias, ReLU and mask bits.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../core/relu_mask.h"
#include "fused_linear_relu_kernel.h"
#include "gemm/gemm.h"

namespace torch_relu_ext::cpu {
namespace {

using at::Tensor;

int64_t round_up8(int64_t v) { return (v + 7) / 8 * 8; }

template <bool kWithMask>
std::tuple<Tensor, Tensor> forward_impl(const char* op, const Tensor& input, const Tensor& weight,
                                        const std::optional<Tensor>& bias_opt) {
  detail::check_linear_args(op, input, weight, bias_opt);
  const int64_t out_f = weight.size(0);
  const Tensor x = detail::as_rows(input);
  const int64_t rows = x.size(0);
  std::vector<int64_t> out_sizes = input.sizes().vec();
  out_sizes.back() = out_f;

  Tensor out;
  Tensor mask;
  if (kWithMask) {
    mask = at::empty({core::relu_mask_bytes(rows, out_f, /*padded=*/false)},
                     input.options().dtype(at::kByte));
  }
  if (rows == 0 || out_f == 0) {
    return {at::empty({rows, out_f}, input.options()).view(out_sizes), mask};
  }

  const gemm::Epilogue ep{bias_opt.has_value() ? *bias_opt : Tensor(),
                          kWithMask ? mask.data_ptr<uint8_t>() : nullptr};
  const gemm::Backend backend =
      gemm::choose(kWithMask ? gemm::Use::kForwardMasked : gemm::Use::kForward, input.scalar_type(),
                   rows, out_f, x.size(1));
  out = gemm::mm(backend, x, weight.t(), Tensor(), false, &ep);
  return {out.view(out_sizes), mask};
}

Tensor fused_linear_relu_cpu(const Tensor& input, const Tensor& weight,
                             const std::optional<Tensor>& bias) {
  return std::get<0>(forward_impl<false>("relu_ext::fused_linear_relu", input, weight, bias));
}

std::tuple<Tensor, Tensor> fused_linear_relu_forward_cpu(const Tensor& input, const Tensor& weight,
                                                         const std::optional<Tensor>& bias) {
  return forward_impl<true>("relu_ext::fused_linear_relu_forward", input, weight, bias);
}

// Backward, one row block at a time (see block_rows): the masked gradient of
// a block (mask ? grad_output : 0, plus its column sums for the bias
// gradient) is written to a block-sized buffer that is reused, and the two
// products consume it while it is still in cache: grad_input's rows of the
// block, and the block's term of grad_weight (accumulated in block order). No
// output-sized temporary: for large layers its allocation (page faults on
// fresh memory) cost as much as the products. 16-bit types keep one full
// masked gradient and one product for grad_weight, so that grad_weight is
// rounded once (as in eager) rather than once per block.
//
// Determinism: block and chunk sizes depend only on the shape, partial bias
// sums are taken per chunk in double and added in chunk order, and the
// grad_weight terms are added in block order.
constexpr int64_t kBiasChunks = 16;  // per block

std::tuple<Tensor, Tensor, Tensor> fused_linear_relu_backward_cpu(const Tensor& grad_output,
                                                                  const Tensor& input,
                                                                  const Tensor& weight,
                                                                  const Tensor& mask,
                                                                  std::array<bool, 3> output_mask) {
  detail::check_linear_backward_args("relu_ext::fused_linear_relu_backward", grad_output, input,
                                     weight, mask);
  const int64_t out_f = weight.size(0);
  const int64_t in_f = weight.size(1);
  const Tensor x = detail::as_rows(input);
  const Tensor g = detail::as_rows(grad_output).contiguous();
  const Tensor m = mask.contiguous();
  const int64_t rows = x.size(0);
  const bool want_gm = output_mask[0] || output_mask[1];
  const bool half = at::isReducedFloatingType(g.scalar_type());

  Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::empty({rows, in_f}, g.options());
  if (output_mask[1]) grad_weight = at::empty({out_f, in_f}, weight.options());
  if (output_mask[2]) grad_bias = at::empty({out_f}, weight.options());
  if (!want_gm && !output_mask[2]) return {};
  if (rows == 0 || out_f == 0) {
    // Nothing flows back: every gradient is zero (or empty).
    if (grad_input.defined()) grad_input.zero_();
    if (grad_weight.defined()) grad_weight.zero_();
    if (grad_bias.defined()) grad_bias.zero_();
    return {output_mask[0] ? grad_input.view(input.sizes()) : Tensor(), grad_weight, grad_bias};
  }

  const int64_t brows =
      half ? rows
           : std::min(rows, gemm::block_rows(out_f, in_f, static_cast<int64_t>(g.element_size())));
  const int64_t nblocks = (rows + brows - 1) / brows;
  Tensor gm;
  if (want_gm) gm = at::empty({brows, out_f}, g.options());
  // One backend per product for the whole batch (not per block).
  const gemm::Backend gi_backend =
      gemm::choose(gemm::Use::kGradInput, g.scalar_type(), rows, in_f, out_f);
  const gemm::Backend gw_backend =
      gemm::choose(gemm::Use::kGradWeight, g.scalar_type(), out_f, in_f, rows);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, g.scalar_type(), "fused_linear_relu_backward_cpu", [&] {
        std::vector<double> partial, total;
        if (output_mask[2]) {
          partial.assign(kBiasChunks * out_f, 0.0);
          total.assign(out_f, 0.0);
        }
        const auto mask_grad = fused_linear_relu_kernels().get<scalar_t>().mask_grad;
        const scalar_t* g_p = g.data_ptr<scalar_t>();
        scalar_t* gm_p = want_gm ? gm.data_ptr<scalar_t>() : nullptr;
        const uint8_t* m_p = m.data_ptr<uint8_t>();
        for (int64_t b = 0; b < nblocks; ++b) {
          const int64_t r0 = b * brows;
          const int64_t n = std::min(rows, r0 + brows) - r0;
          const int64_t chunk_rows =
              std::max<int64_t>(8, round_up8((n + kBiasChunks - 1) / kBiasChunks));
          const int64_t nchunks = (n + chunk_rows - 1) / chunk_rows;
          at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t s0 = c * chunk_rows;
              const int64_t s1 = std::min(n, s0 + chunk_rows);
              double* acc = output_mask[2] ? partial.data() + c * out_f : nullptr;
              if (acc != nullptr) std::fill(acc, acc + out_f, 0.0);
              mask_grad(g_p + (r0 + s0) * out_f, gm_p != nullptr ? gm_p + s0 * out_f : nullptr, m_p,
                        (r0 + s0) * out_f, s1 - s0, out_f, acc);
            }
          });
          if (output_mask[2]) {
            for (int64_t c = 0; c < nchunks; ++c) {
              const double* acc = partial.data() + c * out_f;
              for (int64_t o = 0; o < out_f; ++o) total[o] += acc[o];
            }
          }
          if (!want_gm) continue;
          const Tensor gm_b = gm.narrow(0, 0, n);
          if (output_mask[0]) {  // grad_input rows = gm_b x W
            gemm::mm(gi_backend, gm_b, weight, grad_input.narrow(0, r0, n), false, nullptr);
          }
          if (output_mask[1]) {  // grad_weight (+)= gm_b^T x x_b, in block order
            gemm::mm(gw_backend, gm_b.t(), x.narrow(0, r0, n), grad_weight, b > 0, nullptr);
          }
        }
        if (output_mask[2]) {
          scalar_t* gb = grad_bias.data_ptr<scalar_t>();
          for (int64_t o = 0; o < out_f; ++o) gb[o] = static_cast<scalar_t>(total[o]);
        }
      });

  return {output_mask[0] ? grad_input.view(input.sizes()) : Tensor(), grad_weight, grad_bias};
}

Tensor relu_mask_unpack_cpu(const Tensor& mask, c10::SymIntArrayRef sym_size) {
  const at::IntArrayRef size = C10_AS_INTARRAYREF_SLOW(sym_size);
  Tensor out = at::empty(size, mask.options().dtype(at::kBool));
  const auto [rows, cols] = detail::output_rows_cols(out);
  detail::check_mask_unpack_args("relu_ext::relu_mask_unpack", mask, rows, cols);
  const Tensor m = mask.contiguous();
  const uint8_t* m_p = m.data_ptr<uint8_t>();
  bool* o = out.data_ptr<bool>();
  const int64_t ld = core::relu_mask_ld(cols, false);
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, cols)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1; ++r) {
                       for (int64_t c = 0; c < cols; ++c) {
                         o[r * cols + c] = core::relu_mask_bit(m_p, r * ld + c);
                       }
                     }
                   });
  return out;
}

Tensor relu_mask_count_cpu(const Tensor& mask, const Tensor& output) {
  const auto [rows, cols] = detail::output_rows_cols(output);
  detail::check_mask_unpack_args("relu_ext::relu_mask_count", mask, rows, cols);
  Tensor counts = at::zeros({cols}, mask.options().dtype(at::kLong));
  if (rows == 0 || cols == 0) return counts;
  const Tensor m = mask.contiguous();
  const uint8_t* m_p = m.data_ptr<uint8_t>();
  const int64_t ld = core::relu_mask_ld(cols, false);
  // Fixed row chunks with private counters, summed in order.
  const int64_t nchunks = std::clamp<int64_t>(rows * cols / 262144, 1, 64);
  const int64_t per = (rows + nchunks - 1) / nchunks;
  std::vector<int64_t> partial(nchunks * cols, 0);
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* acc = partial.data() + c * cols;
      for (int64_t r = c * per; r < std::min(rows, (c + 1) * per); ++r) {
        for (int64_t o = 0; o < cols; ++o) acc[o] += core::relu_mask_bit(m_p, r * ld + o);
      }
    }
  });
  int64_t* out = counts.data_ptr<int64_t>();
  for (int64_t c = 0; c < nchunks; ++c) {
    for (int64_t o = 0; o < cols; ++o) out[o] += partial[c * cols + o];
  }
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cpu);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cpu);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cpu);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cpu);
  m.impl("relu_mask_count", &relu_mask_count_cpu);
}

// Sparse and quantized CPU tensors dispatch to their own keys: the same
// kernels reject them there, with a message that names the argument.
TORCH_LIBRARY_IMPL(relu_ext, SparseCPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cpu);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cpu);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cpu);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cpu);
}
TORCH_LIBRARY_IMPL(relu_ext, SparseCsrCPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cpu);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cpu);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cpu);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cpu);
}
TORCH_LIBRARY_IMPL(relu_ext, QuantizedCPU, m) {
  m.impl("fused_linear_relu", &fused_linear_relu_cpu);
  m.impl("fused_linear_relu_forward", &fused_linear_relu_forward_cpu);
  m.impl("fused_linear_relu_backward", &fused_linear_relu_backward_cpu);
  m.impl("relu_mask_unpack", &relu_mask_unpack_cpu);
}

}  // namespace torch_relu_ext::cpu
