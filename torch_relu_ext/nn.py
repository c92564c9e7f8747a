"""Modules: drop-in replacements for nn.Linear + nn.ReLU and nn.PReLU that
also track, per unit, how often it fires (dead-neuron statistics).

Definitions (also in the README):
  active fraction  p_c = (elements of unit c with pre-activation > 0) / (elements of unit c)
                   per forward pass. FusedLinearReLU: unit = output feature,
                   counted from the 1-bit ReLU mask (a popcount, no pass over
                   the output; the mask bit is also set for NaN). DeadAwarePReLU:
                   unit = channel, counted by dead_prelu in the same pass.
  active_ema       EMA of p_c, updated in training mode only (BatchNorm's
                   momentum convention: ema = (1 - momentum) * ema + momentum * p;
                   default momentum 0.01); the first tracked batch sets it to p.
  dead             active_ema <= dead_threshold (default 0.01; 0 = never fired),
                   and at least one batch tracked.
  dormant (ReDo)   s_c = E|h_c| / (mean_k E|h_k| + 1e-9) <= tau (default 0.025),
                   from abs_mean_ema (opt-in: track_dormant=True costs one
                   reduction over the output).
"""

from typing import Optional

import torch
from torch import Tensor, nn

from ._registry import ema_update_

__all__ = ["FusedLinearReLU", "DeadAwarePReLU"]

_STAT_BUFFERS = ("active_ema", "abs_mean_ema", "num_batches_tracked")
# Moving averages stay float32 whatever the module's dtype: in bfloat16 an
# update of momentum * p (0.01 * p) rounds away next to the average itself.
_FLOAT_STATS = ("active_ema", "abs_mean_ema")


def _under_vmap() -> bool:
    """Whether a torch.func.vmap is active at any level."""
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


class _DeadStats(nn.Module):
    """Buffers and queries shared by both modules (not a layer by itself)."""

    def _init_stats(self, units: int, track: bool, momentum: float, dead_threshold: float, track_dormant: bool, device) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.track_dead_stats = track
        self.track_dormant = track_dormant
        self.momentum = momentum
        self.dead_threshold = dead_threshold
        self.register_buffer("active_ema", torch.zeros(units, device=device, dtype=torch.float32))
        self.register_buffer("abs_mean_ema", torch.zeros(units, device=device, dtype=torch.float32))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def _apply(self, fn, recurse=True):
        # .to(dtype), .half(), .bfloat16() convert floating buffers: keep the
        # statistics in float32 and follow only the device fn moves them to.
        stats = {name: self._buffers[name] for name in _FLOAT_STATS if self._buffers.get(name) is not None}
        result = super()._apply(fn, recurse)
        for name, before in stats.items():
            after = self._buffers[name]
            if after.dtype != torch.float32:
                self._buffers[name] = before.to(device=after.device, dtype=torch.float32)
        return result

    @torch.jit.unused
    def _check_stats_transform(self) -> None:
        if _under_vmap():
            raise RuntimeError(
                f"{type(self).__name__}: the dead-unit statistics cannot be updated under torch.func.vmap "
                "(one shared buffer, many batched samples). Call model.eval() or set "
                "track_dead_stats=False on the module for vmap (e.g. per-sample gradients)."
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Checkpoints of nn.Linear / nn.PReLU have no statistics: load them
        # (strict too) and keep fresh statistics.
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        for name in _STAT_BUFFERS:
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    def dead_mask(self, threshold: Optional[float] = None) -> Tensor:
        """Bool per unit: EMA active fraction <= threshold (default dead_threshold)."""
        thr = self.dead_threshold if threshold is None else threshold
        return (self.active_ema <= thr) & (self.num_batches_tracked > 0)

    def dead_fraction(self, threshold: Optional[float] = None) -> float:
        """Fraction of units that are dead."""
        mask = self.dead_mask(threshold)
        return mask.float().mean().item() if mask.numel() else 0.0

    def dormant_mask(self, tau: float = 0.025) -> Tensor:
        """ReDo's tau-dormant units (needs track_dormant=True while training)."""
        if not self.track_dormant:
            raise RuntimeError(
                f"{type(self).__name__}.dormant_mask: the layer was built with track_dormant=False, so it has no "
                "activation magnitudes to score; build it with track_dormant=True"
            )
        score = self.abs_mean_ema / (self.abs_mean_ema.mean() + 1e-9)
        return (score <= tau) & (self.num_batches_tracked > 0)

    def reset_dead_stats(self) -> None:
        """Forget the statistics (e.g. after reviving units)."""
        self.active_ema.zero_()
        self.abs_mean_ema.zero_()
        self.num_batches_tracked.zero_()


class FusedLinearReLU(nn.Linear, _DeadStats):
    """``nn.Sequential(nn.Linear(in, out), nn.ReLU())`` as one fused operator.

    Same parameters, initialisation and parameter keys (``weight``, ``bias``)
    as :class:`torch.nn.Linear`; an ``nn.Linear`` checkpoint loads as is (the
    statistics buffers ``active_ema``, ``abs_mean_ema``, ``num_batches_tracked``
    start fresh). In training mode with ``track_dead_stats`` (default) the
    layer runs ``fused_linear_relu_forward`` and counts active units from the
    1-bit mask; otherwise it runs the plain ``fused_linear_relu``.

    Shape: input (*, in_features) -> output (*, out_features).

    Example::

        >>> layer = FusedLinearReLU(20, 30)
        >>> layer(torch.randn(128, 20)).shape
        torch.Size([128, 30])
        >>> layer.dead_mask().shape
        torch.Size([30])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        track_dead_stats: bool = True,
        momentum: float = 0.01,
        dead_threshold: float = 0.01,
        track_dormant: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_stats(out_features, track_dead_stats, momentum, dead_threshold, track_dormant, device)

    def forward(self, input: Tensor) -> Tensor:
        # torch.jit.trace would bake this batch's row count into the graph:
        # traced models run the plain operator (statistics are for training).
        if self.training and self.track_dead_stats and not torch.jit.is_tracing():
            if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
                self._check_stats_transform()
            out, mask = torch.ops.relu_ext.fused_linear_relu_forward(input, self.weight, self.bias)
            rows = out.numel() // max(self.out_features, 1)
            if rows > 0:
                counts = torch.ops.relu_ext.relu_mask_count(mask, out)
                if self.track_dormant:
                    mean_abs = out.detach().reshape(rows, self.out_features).abs().float().mean(0)
                    ema_update_(self.abs_mean_ema, mean_abs, self.num_batches_tracked, self.momentum)
                torch.ops.relu_ext.dead_stats_update_(self.active_ema, self.num_batches_tracked, counts, rows, self.momentum)
            return out
        return torch.ops.relu_ext.fused_linear_relu(input, self.weight, self.bias)


class DeadAwarePReLU(nn.PReLU, _DeadStats):
    """:class:`torch.nn.PReLU` computed by ``relu_ext::dead_prelu``, which also
    counts, per channel and in the same pass, the strictly positive inputs.

    Same parameter (``weight``), initialisation (``init``, default 0.25) and
    parameter key as :class:`torch.nn.PReLU`. Statistics are kept for
    ``num_channels`` units (default ``num_parameters``; with a single shared
    slope and ``num_channels=1`` the whole layer is one unit).

    Shape: input (N, C, *), or any shape with one unit.

    Example::

        >>> act = DeadAwarePReLU(num_parameters=3)
        >>> act(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    def __init__(
        self,
        num_parameters: int = 1,
        init: float = 0.25,
        device=None,
        dtype=None,
        *,
        num_channels: Optional[int] = None,
        track_dead_stats: bool = True,
        momentum: float = 0.01,
        dead_threshold: float = 0.01,
        track_dormant: bool = False,
    ) -> None:
        super().__init__(num_parameters, init, device, dtype)
        units = num_parameters if num_channels is None else num_channels
        self._init_stats(units, track_dead_stats, momentum, dead_threshold, track_dormant, device)

    def forward(self, input: Tensor) -> Tensor:
        out, counts = torch.ops.relu_ext.dead_prelu(input, self.weight)
        if self.training and self.track_dead_stats and not torch.jit.is_tracing() and input.numel() > 0:
            if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
                self._check_stats_transform()
            units = self.active_ema.shape[0]
            channels = counts.shape[0]
            if units == 1 and channels != 1:
                counts, elements = counts.sum().reshape(1), input.numel()
            else:
                if channels != units:
                    raise RuntimeError(
                        "DeadAwarePReLU: statistics are kept for "
                        + str(units)
                        + " channels (num_channels) but the input has "
                        + str(channels)
                    )
                elements = input.numel() // channels
            if self.track_dormant:
                a = out.detach().abs().float()
                if input.dim() >= 2 and units != 1:
                    mean_abs = a.transpose(0, 1).reshape(channels, -1).mean(1)
                else:
                    mean_abs = a.mean().reshape(1)
                ema_update_(self.abs_mean_ema, mean_abs, self.num_batches_tracked, self.momentum)
            torch.ops.relu_ext.dead_stats_update_(self.active_ema, self.num_batches_tracked, counts, elements, self.momentum)
        return out
