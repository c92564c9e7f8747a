"""Model-level dead-neuron tools: a report, revival (ReDo-style) and the
synchronisation of statistics across distributed ranks."""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .nn import DeadAwarePReLU, FusedLinearReLU, _DeadStats

__all__ = ["DeadNeuronReport", "LayerStats", "dead_neuron_report", "revive_dead_", "sync_dead_stats"]


@dataclass
class LayerStats:
    name: str
    kind: str
    units: int
    dead: int
    dead_pct: float
    min_active: float
    median_active: float
    batches: int


class DeadNeuronReport(list):
    """One LayerStats row per tracked layer; prints as a table."""

    def __str__(self) -> str:
        head = f"{'layer':<28}{'kind':<16}{'units':>7}{'dead':>7}{'dead %':>9}{'min act':>10}{'median act':>12}{'batches':>9}"
        lines = [head, "-" * len(head)]
        for r in self:
            lines.append(
                f"{r.name:<28}{r.kind:<16}{r.units:>7}{r.dead:>7}{r.dead_pct:>8.1f}%"
                f"{r.min_active:>10.4f}{r.median_active:>12.4f}{r.batches:>9}"
            )
        return "\n".join(lines)

    def to_tensorboard(self, writer, step: int, prefix: str = "dead_neurons") -> None:
        """Write dead % and active fractions per layer to a SummaryWriter (or any
        object with add_scalar(tag, value, step))."""
        for r in self:
            writer.add_scalar(f"{prefix}/{r.name}/dead_pct", r.dead_pct, step)
            writer.add_scalar(f"{prefix}/{r.name}/min_active", r.min_active, step)
            writer.add_scalar(f"{prefix}/{r.name}/median_active", r.median_active, step)


def _tracked(model: nn.Module) -> List[Tuple[str, _DeadStats]]:
    return [(name or type(model).__name__, m) for name, m in model.named_modules() if isinstance(m, _DeadStats)]


def dead_neuron_report(model: nn.Module, threshold: Optional[float] = None) -> DeadNeuronReport:
    """Per tracked layer (FusedLinearReLU, DeadAwarePReLU): units, dead count
    and %, and the min / median EMA active fraction."""
    rows = DeadNeuronReport()
    for name, m in _tracked(model):
        ema = m.active_ema.detach().float().cpu()
        dead = int(m.dead_mask(threshold).sum())
        units = ema.numel()
        rows.append(
            LayerStats(
                name=name,
                kind=type(m).__name__,
                units=units,
                dead=dead,
                dead_pct=100.0 * dead / units if units else 0.0,
                min_active=float(ema.min()) if units else math.nan,
                median_active=float(ema.median()) if units else math.nan,
                batches=int(m.num_batches_tracked),
            )
        )
    return rows


def sync_dead_stats(model: nn.Module, group=None) -> None:
    """Average every tracked layer's statistics over the ranks of
    torch.distributed (all-reduce), so every rank sees the same dead masks.
    A no-op when torch.distributed is not initialised."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size(group)
    for _, m in _tracked(model):
        for buf in (m.active_ema, m.abs_mean_ema):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
            buf.div_(world)
        # Batches seen: the largest count, so "tracked" agrees everywhere.
        dist.all_reduce(m.num_batches_tracked, op=dist.ReduceOp.MAX, group=group)


def _linear_like(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear)  # FusedLinearReLU is an nn.Linear


def _zero_adam_state(optimizer, param: torch.Tensor, index, dim: int) -> List[str]:
    """Zero the Adam/AdamW moments of the given rows (dim 0) or columns (dim 1)."""
    if optimizer is None or param not in optimizer.state:
        return []
    state = optimizer.state[param]
    changed = []
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
        buf = state.get(key)
        if isinstance(buf, torch.Tensor) and buf.shape == param.shape:
            buf.index_fill_(dim, index, 0.0)
            changed.append(key)
    return changed


@torch.no_grad()
def revive_dead_(
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    threshold: Optional[float] = None,
    pairs: Optional[Dict[nn.Module, nn.Module]] = None,
    prelu_collapse_eps: float = 1e-3,
) -> Dict[str, dict]:
    """Revive dead units in place, as ReDo does (Sokar et al., 2023).

    For each FusedLinearReLU with dead units (``dead_mask(threshold)``), except
    the model's output layer (the last Linear in module order):
      - re-draws the dead units' incoming weights from nn.Linear's initial
        distribution U(-1/sqrt(in), 1/sqrt(in)) and zeroes their bias;
      - zeroes the matching input columns of the next linear layer: the next
        nn.Linear/FusedLinearReLU in the same nn.Sequential, or
        ``pairs[layer]`` when given (None: no next layer is touched);
      - zeroes the optimizer's moments (Adam/AdamW exp_avg, exp_avg_sq,
        max_exp_avg_sq; SGD momentum) of exactly those rows and columns. The
        step count is per tensor, shared by the live units, and is left alone;
      - resets the layer's statistics (reset_dead_stats): the next training
        batch measures every unit afresh, revived ones included.
    For each DeadAwarePReLU, dead channels whose slope collapsed
    (|slope| < prelu_collapse_eps) get the init slope back (a shared slope
    only when every channel is dead).

    Returns {layer name: {"units": [...], "next": name or None, ...}}.
    """
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    linears = [m for m in model.modules() if _linear_like(m)]
    output_layer = linears[-1] if linears else None
    next_of: Dict[nn.Module, nn.Module] = {}
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            children = list(seq.children())
            for i, c in enumerate(children):
                if isinstance(c, FusedLinearReLU):
                    nxt = next((d for d in children[i + 1 :] if _linear_like(d)), None)
                    if nxt is not None:
                        next_of[c] = nxt
    if pairs is not None:
        next_of.update(pairs)

    changes: Dict[str, dict] = {}
    for name, m in _tracked(model):
        dead = m.dead_mask(threshold)
        if not bool(dead.any()):
            continue
        idx = dead.nonzero().flatten().to(m.active_ema.device)
        if isinstance(m, FusedLinearReLU):
            if m is output_layer:
                continue
            bound = 1.0 / math.sqrt(m.in_features) if m.in_features > 0 else 0.0
            w_idx = idx.to(m.weight.device)
            m.weight[w_idx] = torch.empty_like(m.weight[w_idx]).uniform_(-bound, bound)
            record = {"units": idx.tolist(), "next": None, "optimizer": []}
            record["optimizer"] += _zero_adam_state(optimizer, m.weight, w_idx, 0)
            if m.bias is not None:
                m.bias[w_idx] = 0.0
                _zero_adam_state(optimizer, m.bias, w_idx, 0)
            nxt = next_of.get(m)
            if nxt is not None and nxt is not m:
                n_idx = idx.to(nxt.weight.device)
                nxt.weight[:, n_idx] = 0.0
                _zero_adam_state(optimizer, nxt.weight, n_idx, 1)
                record["next"] = names.get(nxt)
        elif isinstance(m, DeadAwarePReLU):
            w = m.weight
            if w.numel() == 1:
                if not bool(dead.all()) or abs(float(w)) >= prelu_collapse_eps:
                    continue
                w.fill_(m.init)
                record = {"units": idx.tolist(), "slope_reset": [0]}
            else:
                collapsed = dead & (w.detach().abs() < prelu_collapse_eps).to(dead.device)
                if not bool(collapsed.any()):
                    continue
                c_idx = collapsed.nonzero().flatten().to(w.device)
                w[c_idx] = m.init
                _zero_adam_state(optimizer, w, c_idx, 0)
                record = {"units": idx.tolist(), "slope_reset": c_idx.tolist()}
        else:
            continue
        m.reset_dead_stats()
        changes[name] = record
    return changes
