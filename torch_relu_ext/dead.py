"""Model-level dead-neuron tools: a report, revival (ReDo-style) and the
synchronisation of statistics across distributed ranks."""

import math
import warnings
from collections import Counter
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


# Modules that map a zero to a zero element by element: a revived unit's
# output still reaches the next Linear only through its own (zeroed) column.
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _flat_sequence(seq: nn.Sequential) -> List[nn.Module]:
    """The chain of modules a plain nn.Sequential runs, nested ones flattened."""
    out = []
    for m in seq._modules.values():
        if m is None:
            continue
        if type(m) is nn.Sequential:
            out.extend(_flat_sequence(m))
        else:
            out.append(m)
    return out


def _next_in_chain(chain: List[nn.Module], i: int):
    """(next Linear, None) when chain[i]'s output reaches a Linear only
    through pass-through modules, else (None, reason)."""
    for m in chain[i + 1 :]:
        if isinstance(m, _PASS_THROUGH):
            continue
        if _linear_like(m):
            return m, None
        return None, f"a {type(m).__name__} sits between it and the next Linear"
    return None, "its output leaves its nn.Sequential"


def _next_in_graph(gm, layer: nn.Module, modules: Dict[str, nn.Module]):
    """The same question in a torch.fx GraphModule (e.g. from convert())."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and modules.get(n.target) is layer]
    if len(nodes) != 1:
        return None, f"it is called at {len(nodes)} places in forward"
    node = nodes[0]
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None, "its output has several consumers"
        user = users[0]
        mod = modules.get(user.target) if user.op == "call_module" else None
        if mod is not None and isinstance(mod, _PASS_THROUGH):
            node = user
            continue
        if mod is not None and _linear_like(mod) and user.args[:1] == (node,):
            return mod, None
        return None, f"its output goes to {user.format_node()}"


def _next_layers(model: nn.Module, pairs) -> Dict[nn.Module, Tuple[Optional[nn.Module], Optional[str]]]:
    """For each FusedLinearReLU: the one Linear its output feeds, when that is
    known from the model's structure (or from pairs), with a reason when not."""
    import torch.fx as fx

    slots = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    found: Dict[nn.Module, Tuple[Optional[nn.Module], Optional[str]]] = {}
    for seq in model.modules():
        if type(seq) is nn.Sequential:
            chain = _flat_sequence(seq)
            for i, c in enumerate(chain):
                if isinstance(c, FusedLinearReLU) and found.get(c, (None, None))[0] is None:
                    found[c] = _next_in_chain(chain, i)
    if isinstance(model, fx.GraphModule):
        modules = dict(model.named_modules())
        for m in modules.values():
            if isinstance(m, FusedLinearReLU) and found.get(m, (None, None))[0] is None:
                found[m] = _next_in_graph(model, m, modules)
    for m, (nxt, _) in list(found.items()):
        if nxt is not None and (slots[id(m)] > 1 or slots[id(nxt)] > 1):
            found[m] = (None, "it or the next Linear sits at several places in the model")
    for m in model.modules():
        if isinstance(m, FusedLinearReLU) and m not in found:
            found[m] = (None, "it is not in an nn.Sequential or a torch.fx GraphModule (pass pairs=)")
    if pairs is not None:
        found.update({k: (v, None) for k, v in pairs.items()})
    return found


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
    """Revive dead units in place, as ReDo does (Sokar et al., 2023), without
    changing what the model computes.

    For each FusedLinearReLU with dead units (``dead_mask(threshold)``), except
    the model's output layer (the last Linear in module order):
      - re-draws the dead units' incoming weights from nn.Linear's initial
        distribution U(-1/sqrt(in), 1/sqrt(in)) and zeroes their bias;
      - zeroes the matching input columns of the next Linear, so a revived
        unit changes nothing until training moves that column: the model's
        output stays exactly what it was for units that never fired;
      - zeroes the optimizer's moments (Adam/AdamW exp_avg, exp_avg_sq,
        max_exp_avg_sq; SGD momentum) of exactly those rows and columns. The
        step count is per tensor, shared by the live units, and is left alone;
      - resets the layer's statistics (reset_dead_stats).
    The next Linear must be known: the following module of the same
    nn.Sequential (nested ones flattened; Dropout and Identity in between are
    fine), the one consumer in a torch.fx GraphModule (what convert() returns),
    or ``pairs[layer]``. A layer whose output goes anywhere else (a LayerNorm
    or BatchNorm, a residual add, a module used twice) is not revived, and a
    warning names it and says why: reviving it would change the output.
    ``pairs[layer] = None`` revives such a layer anyway, its incoming weights
    only (the output then changes).

    For each DeadAwarePReLU, dead channels whose slope collapsed
    (|slope| < prelu_collapse_eps) get the init slope back (a shared slope
    only when every channel is dead). That changes the output on those
    channels (their negative inputs are scaled by the new slope), and a
    warning says so.

    Returns {layer name: {"units": [...], "next": name or None, ...}}; layers
    left alone appear with "skipped": reason.
    """
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    linears = [m for m in model.modules() if _linear_like(m)]
    output_layer = linears[-1] if linears else None
    next_of = _next_layers(model, pairs)
    explicit = set(pairs) if pairs is not None else set()
    prelu_changed: List[str] = []

    changes: Dict[str, dict] = {}
    for name, m in _tracked(model):
        dead = m.dead_mask(threshold)
        if not bool(dead.any()):
            continue
        idx = dead.nonzero().flatten().to(m.active_ema.device)
        if isinstance(m, FusedLinearReLU):
            if m is output_layer:
                continue
            nxt, why = next_of.get(m, (None, "unknown"))
            if nxt is None and m not in explicit:
                warnings.warn(
                    f"revive_dead_: {name} has {idx.numel()} dead units but is not revived: {why}, "
                    "so reviving them would change the model's output. Pass pairs={layer: next_linear} "
                    "to name the Linear that consumes it.",
                    stacklevel=3,
                )
                changes[name] = {"units": idx.tolist(), "skipped": why}
                continue
            bound = 1.0 / math.sqrt(m.in_features) if m.in_features > 0 else 0.0
            w_idx = idx.to(m.weight.device)
            m.weight[w_idx] = torch.empty_like(m.weight[w_idx]).uniform_(-bound, bound)
            record = {"units": idx.tolist(), "next": None, "optimizer": []}
            record["optimizer"] += _zero_adam_state(optimizer, m.weight, w_idx, 0)
            if m.bias is not None:
                m.bias[w_idx] = 0.0
                _zero_adam_state(optimizer, m.bias, w_idx, 0)
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
            prelu_changed.append(name)
        else:
            continue
        m.reset_dead_stats()
        changes[name] = record
    if prelu_changed:
        warnings.warn(
            f"revive_dead_: PReLU slopes reset to their init in {', '.join(prelu_changed)}; "
            "this changes the model's output on those channels",
            stacklevel=3,
        )
    return changes
