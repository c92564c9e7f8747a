"""Functional forms of the public relu_ext operators (thin wrappers over
torch.ops). The internal operators have no wrapper here: they are reachable as
``torch.ops.relu_ext.<name>`` only (torch_relu_ext._registry lists them)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["fused_linear_relu", "dead_prelu"]


def fused_linear_relu(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``relu(input @ weight.T + bias)`` in one operator.

    Shapes: ``input`` (*, in_features), ``weight`` (out_features, in_features),
    ``bias`` (out_features) or None; result (*, out_features). As in
    ``F.linear``, a 1-D ``weight`` (in_features,) gives a result of shape (*)
    (``bias`` then has one element, or is None).

    For backward it keeps the input, the weight and a 1-bit-per-element ReLU
    mask instead of the output (32x less than eager for the ReLU in float32).

    Example::

        >>> x, w, b = torch.randn(8, 4), torch.randn(3, 4), torch.randn(3)
        >>> torch.equal(fused_linear_relu(x, w, b) > 0, torch.relu(x @ w.T + b) > 0)
        True
    """
    if weight.dim() == 1:
        # F.linear's vector weight: one output feature, dropped from the shape.
        if bias is not None and bias.numel() != 1:
            raise RuntimeError(
                "relu_ext::fused_linear_relu: with a 1-D 'weight' (in_features,), expected 'bias' to have one element, "
                f"but got shape {list(bias.shape)}"
            )
        b = bias.reshape(1) if bias is not None else None
        return torch.ops.relu_ext.fused_linear_relu(input, weight.unsqueeze(0), b).squeeze(-1)
    if bias is not None and bias.dim() <= 1 and bias.numel() == 1 and weight.dim() == 2:
        # F.linear broadcasts a one-element bias over the outputs.
        bias = bias.reshape(1).expand(weight.shape[0]).contiguous()
    return torch.ops.relu_ext.fused_linear_relu(input, weight, bias)


def dead_prelu(input: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
    """``F.prelu(input, weight)`` plus per-channel active counts, in one pass.

    Returns ``(output, active_count)``: ``output`` equals ``F.prelu(input,
    weight)``; ``active_count`` is int64 of shape (C,), the number of strictly
    positive input elements per channel (C = input.size(1) for inputs with 2+
    dims, else 1). A channel whose count stays 0 is dead.

    Example::

        >>> out, count = dead_prelu(torch.tensor([[1.0, -2.0], [3.0, -4.0]]), torch.tensor([0.25]))
        >>> count.tolist()
        [2, 0]
    """
    out, count = torch.ops.relu_ext.dead_prelu(input, weight)
    return out, count
