"""Functionalization of relu_ext::dead_stats_update_ (the modules' in-place
statistics step), for torch.export, torch.compile and torch.func.functionalize.

Without a Functionalize kernel the mutating op reaches graphs wrapped in the
auto_functionalized higher-order op, which the ONNX exporter cannot translate
(training-mode models failed in torch.onnx.export). This kernel writes the
step as _registry.ema_update_ (the one definition of the update) plus the
copies back into the buffers.
"""

import torch

from ._registry import ema_update_

_lib = torch.library.Library("relu_ext", "IMPL")
_OP = "relu_ext::dead_stats_update_"


def _dead_stats_update_functionalize(ema, num_batches_tracked, counts, elements, momentum):
    torch._check(0.0 < momentum <= 1.0, lambda: f"{_OP}: expected momentum in (0, 1], but got {momentum}")
    torch._check(
        counts.shape == ema.shape,
        lambda: f"{_OP}: expected argument 'counts' to have the shape of 'ema' {list(ema.shape)}, but got {list(counts.shape)}",
    )
    torch._check(
        num_batches_tracked.numel() == 1,
        lambda: f"{_OP}: expected argument 'num_batches_tracked' to have one element, but got {num_batches_tracked.numel()}",
    )
    ema_update_(ema, counts.to(ema.dtype) / elements, num_batches_tracked, momentum)
    num_batches_tracked.add_(1)


_lib.impl("dead_stats_update_", _dead_stats_update_functionalize, "Functionalize")
