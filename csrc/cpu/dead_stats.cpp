// CPU kernel of relu_ext::dead_stats_update_: one loop over the units (the
// composite version in csrc/composite runs five ATen ops, which is most of a
// small layer's statistics cost).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../checks.h"

namespace torch_relu_ext::cpu {
namespace {

using at::Tensor;

void dead_stats_update_cpu(const Tensor& ema, const Tensor& num_batches_tracked,
                           const Tensor& counts, c10::SymInt sym_elements, double momentum) {
  detail::check_dead_stats_args("relu_ext::dead_stats_update_", ema, num_batches_tracked, counts,
                                momentum);
  TORCH_CHECK(ema.is_contiguous() && num_batches_tracked.scalar_type() == at::kLong,
              "relu_ext::dead_stats_update_: expected a contiguous 'ema' and an int64 "
              "'num_batches_tracked'");
  const double elements = static_cast<double>(sym_elements.expect_int());
  const Tensor c = counts.to(at::kLong).contiguous();
  const int64_t* cp = c.data_ptr<int64_t>();
  int64_t* nbt = num_batches_tracked.data_ptr<int64_t>();
  const bool first = *nbt == 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, ema.scalar_type(), "dead_stats_update_", [&] {
        scalar_t* e = ema.data_ptr<scalar_t>();
        for (int64_t i = 0; i < ema.numel(); ++i) {
          const double frac = static_cast<double>(cp[i]) / elements;
          const double prev = static_cast<double>(e[i]);
          e[i] = static_cast<scalar_t>(first ? frac : prev * (1.0 - momentum) + frac * momentum);
        }
      });
  *nbt += 1;
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CPU, m) { m.impl("dead_stats_update_", &dead_stats_update_cpu); }

}  // namespace torch_relu_ext::cpu
