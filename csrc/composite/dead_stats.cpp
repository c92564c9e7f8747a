// relu_ext::dead_stats_update_ for every device without a kernel of its own
// (CUDA, Meta): the ATen ops of torch_relu_ext/_registry.py's ema_update_ (the
// one definition of the update) in C++. The CPU has a one-loop kernel in
// csrc/cpu/dead_stats.cpp.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/where.h>
#include <torch/library.h>

#include "../checks.h"

namespace torch_relu_ext::composite {
namespace {

using at::Tensor;

void dead_stats_update_(const Tensor& ema, const Tensor& num_batches_tracked, const Tensor& counts,
                        c10::SymInt elements, double momentum) {
  detail::check_dead_stats_args("relu_ext::dead_stats_update_", ema, num_batches_tracked, counts,
                                momentum);
  const Tensor frac = counts.to(ema.scalar_type()) / elements;
  const Tensor first = num_batches_tracked == 0;
  ema.copy_(at::where(first, frac, ema * (1.0 - momentum) + frac * momentum));
  num_batches_tracked.add_(1);
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_ext, CompositeExplicitAutograd, m) {
  m.impl("dead_stats_update_", &dead_stats_update_);
}

}  // namespace torch_relu_ext::composite
