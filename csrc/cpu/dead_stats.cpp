// CPU kernel of relu_ext::dead_stats_update_: one loop over the units (the
// composite version in csrc/composite runs five ATen ops, which is most of a
// small layer's statistics cost), bitwise equal to those ops on the CPU
// (tests/test_dead_stats.py).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
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
  const Tensor c = counts.to(at::kLong).contiguous();
  const int64_t* cp = c.data_ptr<int64_t>();
  int64_t* nbt = num_batches_tracked.data_ptr<int64_t>();
  const bool first = *nbt == 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, ema.scalar_type(), "dead_stats_update_", [&] {
        // The steps and roundings of the ATen ops in torch_relu_ext/_registry.py
        // (ema_update_), which define the update: each op's result rounded to
        // the buffer's dtype, scalars taken in its opmath type.
        using opmath_t = at::opmath_type<scalar_t>;
        const auto elements = static_cast<opmath_t>(sym_elements.expect_int());
        const auto keep = static_cast<opmath_t>(1.0 - momentum);
        const auto mom = static_cast<opmath_t>(momentum);
        const auto rounded = [](opmath_t v) { return static_cast<scalar_t>(v); };
        scalar_t* e = ema.data_ptr<scalar_t>();
        for (int64_t i = 0; i < ema.numel(); ++i) {
          const scalar_t frac =
              rounded(static_cast<opmath_t>(static_cast<scalar_t>(cp[i])) / elements);
          if (first) {
            e[i] = frac;
          } else {
            const scalar_t a = rounded(static_cast<opmath_t>(e[i]) * keep);
            const scalar_t b = rounded(static_cast<opmath_t>(frac) * mom);
            e[i] = rounded(static_cast<opmath_t>(a) + static_cast<opmath_t>(b));
          }
        }
      });
  *nbt += 1;
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CPU, m) { m.impl("dead_stats_update_", &dead_stats_update_cpu); }

}  // namespace torch_relu_ext::cpu
