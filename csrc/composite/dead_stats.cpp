// relu_ext::dead_stats_update_ for every device: a few ATen ops in C++ (the
// modules called them one by one from Python, which dominated small steps).
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/where.h>
#include <torch/library.h>

namespace torch_relu_ext::composite {
namespace {

using at::Tensor;

void dead_stats_update_(const Tensor& ema, const Tensor& num_batches_tracked, const Tensor& counts,
                        c10::SymInt elements, double momentum) {
  TORCH_CHECK(momentum > 0.0 && momentum <= 1.0,
              "relu_ext::dead_stats_update_: expected momentum in (0, 1], but got ", momentum);
  TORCH_CHECK(counts.sizes() == ema.sizes(),
              "relu_ext::dead_stats_update_: expected argument 'counts' to have the shape of "
              "'ema' ",
              ema.sizes(), ", but got ", counts.sizes());
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
