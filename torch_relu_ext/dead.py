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


def _describe(node, modules) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(modules[node.target]).__name__})"
    if node.op == "output":
        return "the model's output"
    if node.op == "call_method":
        return f"Tensor.{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _next_in_graph(gm, layer: nn.Module, modules: Dict[str, nn.Module]):
    """(next Linear, None) when layer's output reaches one Linear only through
    pass-through modules in the traced forward, else (None, reason)."""
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
        if mod is not None and _linear_like(mod):
            return None, f"its output reaches {_describe(user, modules)} other than as its input"
        return None, f"its output goes to {_describe(user, modules)}"


def _graphs(model: nn.Module, name: str, out: list, untraced: list) -> None:
    """Traced forwards covering the model: its own, or (when torch.fx cannot
    trace it) those of its submodules, recursively."""
    import torch.fx as fx

    from .convert import _trace

    gm = model if isinstance(model, fx.GraphModule) else _trace(model)[0]
    if gm is not None:
        out.append((name, gm))
        return
    if list(model.children()):
        untraced.append(name or type(model).__name__)
    for child_name, child in model.named_children():
        _graphs(child, f"{name}.{child_name}" if name else child_name, out, untraced)


def _next_layers(model: nn.Module, pairs) -> Dict[nn.Module, Tuple[Optional[nn.Module], Optional[str]]]:
    """For each FusedLinearReLU: the one Linear its output feeds in the traced
    forward (or pairs), with a reason when that is not established."""
    layers = [m for m in model.modules() if isinstance(m, FusedLinearReLU)]
    graphs, untraced = [], []
    _graphs(model, "", graphs, untraced)
    if untraced and layers and (pairs is None or any(m not in pairs for m in layers)):
        warnings.warn(
            f"revive_dead_: torch.fx cannot trace the forward of {', '.join(untraced)}; the next Linear of each "
            "layer is taken from the traceable submodules ("
            + ", ".join(n or "(root)" for n, _ in graphs)
            + "), assuming those are called only as a whole",
            stacklevel=4,
        )
    found: Dict[nn.Module, Tuple[Optional[nn.Module], Optional[str]]] = {}
    for gname, gm in graphs:
        modules = dict(gm.named_modules())
        for m in layers:
            if m not in found and any(v is m for v in modules.values()):
                nxt, why = _next_in_graph(gm, m, modules)
                if nxt is None and why == "its output goes to the model's output" and gname:
                    why = f"its output leaves '{gname}'"
                found[m] = (nxt, why)
    slots = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    owners = Counter(id(p) for m in model.modules() for p in {p for p in m._parameters.values() if p is not None})
    for m, (nxt, _) in list(found.items()):
        if nxt is None:
            continue
        if slots[id(m)] > 1 or slots[id(nxt)] > 1:
            found[m] = (None, "it or the next Linear sits at several places in the model")
        elif any(owners[id(p)] > 1 for mod in (m, nxt) for p in mod._parameters.values() if p is not None):
            found[m] = (None, "it or the next Linear shares parameters with another module (tied weights)")
    for m in layers:
        if m not in found:
            found[m] = (None, "torch.fx cannot trace the forward that calls it")
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
    The next Linear must be known: the one consumer of the layer's output in
    the forward as torch.fx traces it (Dropout and Identity in between are
    fine; when the model's own forward cannot be traced, its traceable
    submodules' forwards, with a warning that they are assumed to be called
    only as a whole), or ``pairs[layer]``. A layer whose output goes anywhere else (a
    LayerNorm or BatchNorm, a residual add, two consumers), or where the layer
    or the next Linear is used twice or shares (ties) parameters, is not
    revived, and a warning names it and says why: reviving it would change the
    output.
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
    if optimizer is not None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not any(id(p) in held for p in model.parameters()):
            warnings.warn(
                "revive_dead_: the optimizer holds none of the model's parameters (after convert(), which returns "
                "a copy, build the optimizer from the converted model); its moments are left alone",
                stacklevel=3,
            )
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
