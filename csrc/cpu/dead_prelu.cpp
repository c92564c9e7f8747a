// CPU kernels of dead_prelu (forward with per-channel active counts) and
// dead_prelu_backward (grad_input and grad_weight in one pass).
//
// Any dense layout (contiguous, channels-last, transposed...) is processed in
// place as an [A, C, B] array; only non-dense views are copied first. The
// output takes the input's strides, as F.prelu's does.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "dead_prelu_kernel.h"

namespace torch_relu_ext::cpu {
namespace {

using at::Tensor;

// Elements per reduction chunk, and the most chunks: partial sums live in a
// [chunks, C] buffer and are added in chunk order (bitwise reproducible).
constexpr int64_t kChunkElems = 32768;
constexpr int64_t kMaxChunks = 64;

using Layout = detail::PreluLayout;

int64_t chunk_count(int64_t units, int64_t elems_per_unit) {
  const int64_t total = units * std::max<int64_t>(1, elems_per_unit);
  return std::clamp<int64_t>(total / kChunkElems, 1,
                             std::min(kMaxChunks, std::max<int64_t>(1, units)));
}

std::tuple<Tensor, Tensor> dead_prelu_cpu(const Tensor& input, const Tensor& weight) {
  detail::check_prelu_args("relu_ext::dead_prelu", input, weight);
  const Layout l = detail::prelu_layout(input);
  const int64_t channels = detail::prelu_channels(input);
  Tensor out = at::empty_strided(l.x.sizes(), l.x.strides(), l.x.options());
  Tensor counts = at::zeros({channels}, input.options().dtype(at::kLong));
  const int64_t numel = l.x.numel();
  if (numel == 0) return {out, counts};
  const Tensor w = weight.contiguous();
  const bool w_scalar = w.numel() == 1;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, l.x.scalar_type(), "dead_prelu_cpu", [&] {
        const DeadPreluKernel<scalar_t>& k = dead_prelu_kernels().get<scalar_t>();
        const scalar_t* x_p = l.x.data_ptr<scalar_t>();
        scalar_t* y_p = out.data_ptr<scalar_t>();
        const scalar_t* w_p = w.data_ptr<scalar_t>();
        const bool rows_path = l.B == 1;
        // Units split into chunks: rows for the rows path, elements otherwise.
        const int64_t units = rows_path ? l.A : numel;
        // Counts are integers, exact in any order: one chunk per thread
        // (more chunks only cost partial buffers to clear and add up).
        const int64_t nchunks = std::min<int64_t>(chunk_count(units, rows_path ? l.C : 1),
                                                  std::max(1, at::get_num_threads()));
        const int64_t per = (units + nchunks - 1) / nchunks;
        int64_t* counts_p = counts.data_ptr<int64_t>();
        // One chunk counts straight into the (zeroed) result: small inputs
        // skip the partial buffers.
        std::vector<int64_t> partial(nchunks > 1 ? nchunks * l.C : 0, 0);
        at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t u0 = c * per;
            const int64_t u1 = std::min(units, u0 + per);
            if (u0 >= u1) continue;
            int64_t* cnt = nchunks > 1 ? partial.data() + c * l.C : counts_p;
            if (rows_path) {
              k.forward_rows(x_p + u0 * l.C, y_p + u0 * l.C, w_p, w_scalar, u1 - u0, l.C, cnt);
            } else {
              k.forward_flat(x_p, y_p, w_p, w_scalar, u0, u1, l.C, l.B, cnt);
            }
          }
        });
        if (nchunks > 1) {
          for (int64_t c = 0; c < nchunks; ++c) {
            for (int64_t ch = 0; ch < l.C; ++ch) counts_p[ch] += partial[c * l.C + ch];
          }
        }
      });
  return {out, counts};
}

std::tuple<Tensor, Tensor> dead_prelu_backward_cpu(const Tensor& grad_output, const Tensor& input,
                                                   const Tensor& weight,
                                                   std::array<bool, 2> output_mask) {
  detail::check_prelu_backward_args("relu_ext::dead_prelu_backward", grad_output, input, weight);
  const Layout l = detail::prelu_layout(input);
  // grad_output in the same memory layout as the input we read.
  const Tensor g = detail::with_strides_of(grad_output, l.x);
  Tensor grad_input, grad_weight;
  if (output_mask[0]) {
    grad_input = at::empty_strided(l.x.sizes(), l.x.strides(), l.x.options());
  }
  if (output_mask[1]) grad_weight = at::empty(weight.sizes(), weight.options());
  const int64_t numel = l.x.numel();
  const Tensor w = weight.contiguous();
  const bool w_scalar = w.numel() == 1;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, l.x.scalar_type(), "dead_prelu_backward_cpu", [&] {
        const DeadPreluKernel<scalar_t>& k = dead_prelu_kernels().get<scalar_t>();
        const scalar_t* x_p = l.x.data_ptr<scalar_t>();
        const scalar_t* g_p = g.data_ptr<scalar_t>();
        const scalar_t* w_p = w.data_ptr<scalar_t>();
        scalar_t* gi_p = output_mask[0] ? grad_input.data_ptr<scalar_t>() : nullptr;
        const bool rows_path = l.B == 1;
        const int64_t units = rows_path ? l.A : numel;
        const int64_t nchunks = numel == 0 ? 1 : chunk_count(units, rows_path ? l.C : 1);
        const int64_t per = (units + nchunks - 1) / nchunks;
        std::vector<double> partial(output_mask[1] ? nchunks * l.C : 0, 0.0);
        if (numel > 0) {
          at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t u0 = c * per;
              const int64_t u1 = std::min(units, u0 + per);
              if (u0 >= u1) continue;
              double* gw = output_mask[1] ? partial.data() + c * l.C : nullptr;
              if (rows_path) {
                k.backward_rows(x_p + u0 * l.C, g_p + u0 * l.C, w_p, w_scalar, u1 - u0, l.C,
                                gi_p ? gi_p + u0 * l.C : nullptr, gw);
              } else {
                k.backward_flat(x_p, g_p, w_p, w_scalar, u0, u1, l.C, l.B, gi_p, gw);
              }
            }
          });
        }
        if (output_mask[1]) {
          // Per-channel sums in chunk order; a single shared weight takes the
          // sum over channels.
          std::vector<double> per_channel(l.C, 0.0);
          for (int64_t c = 0; c < nchunks && numel > 0; ++c) {
            for (int64_t ch = 0; ch < l.C; ++ch) per_channel[ch] += partial[c * l.C + ch];
          }
          scalar_t* gw_p = grad_weight.data_ptr<scalar_t>();
          if (w_scalar) {
            double s = 0;
            for (const double v : per_channel) s += v;
            gw_p[0] = static_cast<scalar_t>(s);
          } else {
            for (int64_t ch = 0; ch < l.C; ++ch) gw_p[ch] = static_cast<scalar_t>(per_channel[ch]);
          }
        }
      });
  return {grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CPU, m) {
  m.impl("dead_prelu", &dead_prelu_cpu);
  m.impl("dead_prelu_backward", &dead_prelu_backward_cpu);
}

// Sparse and quantized CPU tensors dispatch to their own keys: the same
// kernels reject them there, with a message that names the argument.
TORCH_LIBRARY_IMPL(relu_ext, SparseCPU, m) {
  m.impl("dead_prelu", &dead_prelu_cpu);
  m.impl("dead_prelu_backward", &dead_prelu_backward_cpu);
}
TORCH_LIBRARY_IMPL(relu_ext, SparseCsrCPU, m) {
  m.impl("dead_prelu", &dead_prelu_cpu);
  m.impl("dead_prelu_backward", &dead_prelu_backward_cpu);
}
TORCH_LIBRARY_IMPL(relu_ext, QuantizedCPU, m) {
  m.impl("dead_prelu", &dead_prelu_cpu);
  m.impl("dead_prelu_backward", &dead_prelu_backward_cpu);
}

}  // namespace torch_relu_ext::cpu
