"""Drop-in conversion of existing models.

convert(model) returns a copy of the model in which
  - every nn.Linear followed by nn.ReLU (inplace or not) in an nn.Sequential,
    at any nesting depth, becomes a FusedLinearReLU (the ReLU's slot becomes a
    _FusedAway placeholder, so the other layers keep their state_dict keys);
  - with fx=True (default "auto": when the model's forward is traceable),
    a Linear submodule whose output feeds only a ReLU (F.relu, torch.relu,
    Tensor.relu, an nn.ReLU module, inplace or not) becomes a FusedLinearReLU
    in the traced GraphModule;
  - with prelu=True (default), every nn.PReLU becomes a DeadAwarePReLU.
Weights are shared with the copy's parameters (same values, device, dtype),
and the train/eval state is kept. What cannot be converted is left untouched
and listed in the report. revert(converted) goes back to plain modules.
"""

import copy
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from .nn import DeadAwarePReLU, FusedLinearReLU

__all__ = ["convert", "revert", "ConversionReport"]


@dataclass
class ConversionReport:
    fused: List[str] = field(default_factory=list)  # Linear(+ReLU) converted
    prelu: List[str] = field(default_factory=list)  # PReLU converted
    skipped: List[str] = field(default_factory=list)  # what was left alone, and why

    def __str__(self):
        lines = [
            f"fused Linear+ReLU: {len(self.fused)}",
            *[f"  {n}" for n in self.fused],
            f"PReLU -> DeadAwarePReLU: {len(self.prelu)}",
            *[f"  {n}" for n in self.prelu],
            f"left unchanged: {len(self.skipped)}",
            *[f"  {n}" for n in self.skipped],
        ]
        return "\n".join(lines)


class _FusedAway(nn.Identity):
    """Stands where a ReLU was fused into the preceding Linear; keeps it for revert."""

    def __init__(self, relu: nn.Module):
        super().__init__()
        self._relu = [relu]  # a list: not registered as a submodule

    def original(self) -> nn.Module:
        return self._relu[0]


def _fused_from(linear: nn.Linear) -> FusedLinearReLU:
    fused = FusedLinearReLU(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    fused.weight = linear.weight
    fused.bias = linear.bias
    fused.train(linear.training)
    return fused


def _linear_from(fused: FusedLinearReLU) -> nn.Linear:
    lin = nn.Linear(
        fused.in_features, fused.out_features, bias=fused.bias is not None, device=fused.weight.device, dtype=fused.weight.dtype
    )
    lin.weight = fused.weight
    lin.bias = fused.bias
    lin.train(fused.training)
    return lin


def _prelu_from(p: nn.PReLU) -> DeadAwarePReLU:
    d = DeadAwarePReLU(p.num_parameters, init=p.init, device=p.weight.device, dtype=p.weight.dtype)
    d.weight = p.weight
    d.train(p.training)
    d._converted_from_prelu = True
    return d


def _plain_relu(m: nn.Module) -> bool:
    return type(m) is nn.ReLU


def _convert_sequentials(model: nn.Module, prelu: bool, report: ConversionReport) -> None:
    for name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i, (child_name, child) in enumerate(children):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and i + 1 < len(children) and _plain_relu(children[i + 1][1]):
                setattr(seq, child_name, _fused_from(child))
                relu_name, relu = children[i + 1]
                setattr(seq, relu_name, _FusedAway(relu))
                report.fused.append(full)
    if prelu:
        _convert_prelus(model, report)


def _convert_prelus(model: nn.Module, report: ConversionReport) -> None:
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is nn.PReLU:
                setattr(mod, child_name, _prelu_from(child))
                report.prelu.append(f"{name}.{child_name}" if name else child_name)


_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}


def _is_relu_node(node: fx.Node, modules) -> bool:
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return True
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return True
    return node.op == "call_module" and _plain_relu(modules.get(node.target))


class _Tracer(fx.Tracer):
    """Keeps this package's modules as leaves (their statistics code is not
    traceable, and they need no conversion)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (FusedLinearReLU, DeadAwarePReLU, _FusedAway)) or super().is_leaf_module(m, qualname)


def _convert_fx(model: nn.Module, report: ConversionReport) -> Tuple[nn.Module, bool]:
    try:
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph, model.__class__.__name__)
    except Exception as e:
        report.skipped.append(f"(forward not traceable by torch.fx: {type(e).__name__}: {str(e)[:120]})")
        return model, False
    modules = dict(gm.named_modules())
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.Linear:
            continue
        users = list(node.users)
        if len(users) != 1 or not _is_relu_node(users[0], modules):
            if any(_is_relu_node(u, modules) for u in users):
                report.skipped.append(f"{node.target} (its output is also used before the ReLU)")
            continue
        relu = users[0]
        fused = _fused_from(modules[node.target])
        gm.add_submodule(node.target, fused)  # replaces the Linear, same name and parameters
        relu.replace_all_uses_with(node)
        gm.graph.erase_node(relu)
        report.fused.append(node.target)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
        return gm, True
    return model, False


def convert(model: nn.Module, *, prelu: bool = True, fx: object = "auto", inplace: bool = False):
    """Returns (converted model, ConversionReport). See the module docstring.

    Example::

        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> fused, report = convert(m)
        >>> type(fused[0]).__name__, report.fused
        ('FusedLinearReLU', ['0'])
    """
    original = model
    model = model if inplace else copy.deepcopy(model)
    report = ConversionReport()
    _convert_sequentials(model, prelu, report)
    if fx is True or fx == "auto":
        converted, changed = _convert_fx(model, report)
        if changed:
            converted._relu_ext_before = [model]  # for revert (not a submodule)
            model = converted
        elif fx is True and not report.fused:
            report.skipped.append("(torch.fx found no Linear followed by ReLU)")
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and name not in report.fused:
            report.skipped.append(f"{name} (Linear not followed by a ReLU)")
    del original
    return model, report


def revert(model: nn.Module) -> nn.Module:
    """Undo convert(): plain nn.Linear + nn.ReLU and nn.PReLU, same parameters."""
    before = getattr(model, "_relu_ext_before", None)
    if before:
        model = before[0]
    for _name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, FusedLinearReLU):
                setattr(mod, child_name, _linear_from(child))
            elif isinstance(child, _FusedAway):
                setattr(mod, child_name, child.original())
            elif isinstance(child, DeadAwarePReLU) and getattr(child, "_converted_from_prelu", False):
                p = nn.PReLU(child.num_parameters, init=child.init, device=child.weight.device, dtype=child.weight.dtype)
                p.weight = child.weight
                p.train(child.training)
                setattr(mod, child_name, p)
    return model
