"""Modules: drop-in replacements for nn.Linear + nn.ReLU and nn.PReLU."""

import torch
from torch import Tensor
from torch import nn

__all__ = ["FusedLinearReLU", "DeadAwarePReLU"]


class FusedLinearReLU(nn.Linear):
    """``nn.Sequential(nn.Linear(in, out), nn.ReLU())`` as one fused operator.

    Same parameters, initialisation and state_dict keys (``weight``, ``bias``)
    as :class:`torch.nn.Linear`, so checkpoints load in both directions.

    Shape: input (*, in_features) -> output (*, out_features).

    Example::

        >>> layer = FusedLinearReLU(20, 30)
        >>> layer(torch.randn(128, 20)).shape
        torch.Size([128, 30])
    """

    def forward(self, input: Tensor) -> Tensor:
        return torch.ops.relu_ext.fused_linear_relu(input, self.weight, self.bias)


class DeadAwarePReLU(nn.PReLU):
    """:class:`torch.nn.PReLU` computed by ``relu_ext::dead_prelu``.

    Same parameter (``weight``), initialisation (``init``, default 0.25) and
    state_dict keys as :class:`torch.nn.PReLU`. The operator also counts, per
    channel, the strictly positive inputs in the same pass over memory.

    Shape: input (N, C, *) or any shape when ``num_parameters == 1``.

    Example::

        >>> act = DeadAwarePReLU(num_parameters=3)
        >>> act(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    def forward(self, input: Tensor) -> Tensor:
        out, _ = torch.ops.relu_ext.dead_prelu(input, self.weight)
        return out
