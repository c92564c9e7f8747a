"""Drop-in conversion of existing models.

``convert(model)`` returns a copy of the model in which
  - an nn.Linear followed by nn.ReLU (inplace or not) in an nn.Sequential, at
    any nesting depth, becomes a FusedLinearReLU (the ReLU's slot becomes a
    _FusedAway placeholder, so the other layers keep their state_dict keys);
  - with fx=True, an nn.Linear whose output is used only by ReLUs (F.relu,
    torch.relu, Tensor.relu, an nn.ReLU module, inplace or not) becomes a
    FusedLinearReLU in a GraphModule traced from forward (which keeps only
    what torch.fx records: docs/usage.md); the default, "auto", reports them;
  - with prelu=True (default), every nn.PReLU becomes a DeadAwarePReLU.
A Linear is fused only when that is correct by construction: it sits at
exactly one place in the model (no module reached under two names, or called
twice), shares no parameter with another module, has no hooks, and every use
of its output is a ReLU; a Sequential's pair also needs its ReLU object called
on nothing else. All of it is read off torch.fx traces in train and eval
mode; in-place conversions are undone if forward's trace changes over the
converted modules, and no GraphModule is made where forward's graph depends
on the mode. An untraceable forward is left alone with a warning (fx=False
converts its Sequentials, assuming forward calls them only as a whole).
Everything else is left alone and reported once,
with its reason. Weights are shared with the copy's parameters (same values,
device, dtype), and the train/eval state is kept. revert(converted) goes back
to plain modules; the record it needs lives in the converted modules
themselves, so it survives deepcopy, pickle and torch.save.
"""

import contextlib
import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import fx, nn

from .nn import DeadAwarePReLU, FusedLinearReLU

__all__ = ["convert", "revert", "ConversionReport"]

# How a FusedLinearReLU made by convert() records where its ReLU went.
_ORIGIN = "_relu_ext_origin"  # "sequential" or "fx"


@dataclass
class ConversionReport:
    """What convert() (or revert()) did: module names in the returned model."""

    fused: List[str] = field(default_factory=list)  # Linear(+ReLU) converted (or reverted)
    prelu: List[str] = field(default_factory=list)  # PReLU converted (or reverted)
    skipped: Dict[str, str] = field(default_factory=dict)  # module left alone -> why
    notes: List[str] = field(default_factory=list)  # about the model as a whole
    _seen: set = field(default_factory=set, repr=False, compare=False)  # ids of modules reported

    def __str__(self):
        lines = [
            f"fused Linear+ReLU: {len(self.fused)}",
            *[f"  {n}" for n in self.fused],
            f"PReLU <-> DeadAwarePReLU: {len(self.prelu)}",
            *[f"  {n}" for n in self.prelu],
            f"left unchanged: {len(self.skipped)}",
            *[f"  {n}: {why}" for n, why in self.skipped.items()],
            *[f"note: {n}" for n in self.notes],
        ]
        return "\n".join(lines)

    def _skip(self, name: str, why: str, module=None) -> None:
        # One line per module (a module at two places is one module); the
        # first reason found is the one kept.
        key = id(module) if module is not None else name
        if key not in self._seen:
            self._seen.add(key)
            self.skipped[name or "(root)"] = why


class _FusedAway(nn.Identity):
    """Stands where a ReLU was fused into the preceding Linear; keeps it for revert."""

    def __init__(self, relu: nn.Module):
        super().__init__()
        self._relu = [relu]  # a list: not registered as a submodule

    def original(self) -> nn.Module:
        return self._relu[0]


def _fused_from(linear: nn.Linear, origin: str) -> FusedLinearReLU:
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
    setattr(fused, _ORIGIN, origin)
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


def _prelu_back(d: DeadAwarePReLU) -> nn.PReLU:
    p = nn.PReLU(d.num_parameters, init=d.init, device=d.weight.device, dtype=d.weight.dtype)
    p.weight = d.weight
    p.train(d.training)
    return p


def _plain_relu(m) -> bool:
    return type(m) is nn.ReLU and not _has_hooks(m)


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None))


class _Uses:
    """Where each module object sits in the model, and which parameters are shared."""

    def __init__(self, model: nn.Module):
        self.slots = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
        owners = Counter()
        for m in model.modules():
            for p in {id(p) for p in m._parameters.values() if p is not None}:
                owners[p] += 1
        self.owners = owners
        self.calls = None  # id(module) -> calls in the traced forward, when traceable

    def why_not(self, linear: nn.Linear):
        """Why this Linear must not be fused, or None."""
        if self.slots[id(linear)] > 1:
            return f"the module sits at {self.slots[id(linear)]} places in the model"
        if self.calls is not None and self.calls[id(linear)] > 1:
            return f"it is called at {self.calls[id(linear)]} places in forward"
        if any(self.owners[id(p)] > 1 for p in linear._parameters.values() if p is not None):
            return "its parameters are shared with another module (tied weights)"
        if _has_hooks(linear):
            return "it has hooks"
        return None


def _qualname(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _slots(seq: nn.Module):
    # Every slot, duplicates included (named_children() skips a module's
    # second slot, which would misplace the ReLU that follows it).
    return [(name, child) for name, child in seq._modules.items() if child is not None]


@dataclass
class _Pair:
    """A Linear followed by a plain nn.ReLU in a Sequential's slots."""

    seq: nn.Sequential
    full: str  # the Linear's name in the model
    linear_name: str
    linear: nn.Linear
    relu_name: str
    relu: nn.Module


def _sequential_pairs(model: nn.Module, report: ConversionReport) -> List[_Pair]:
    pairs = []
    for name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        slots = _slots(seq)
        for i, (child_name, child) in enumerate(slots):
            if type(child) is not nn.Linear or i + 1 >= len(slots):
                continue
            full = _qualname(name, child_name)
            relu_name, relu = slots[i + 1]
            if type(relu) is nn.ReLU and _has_hooks(relu):
                report._skip(full, "the ReLU after it has hooks", child)
            elif _plain_relu(relu):
                pairs.append(_Pair(seq, full, child_name, child, relu_name, relu))
    return pairs


def _pair_verdicts(model: nn.Module, gm: fx.GraphModule, pairs: List[_Pair]):
    """{id(pair): why the traced forward forbids fusing it, or None}. The
    modules are compared by identity (a forward may test `m is self.act`):
    a pair fuses only where its Linear's output is read by ReLUs alone and
    every call of its ReLU object reads the output of a Linear that the
    object follows in some Sequential (a ReLU shared by several pairs, or
    called on anything else, is then refused)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(id(modules[node.target]), []).append(node)
    follows = {}  # id(ReLU object) -> ids of the Linears it follows in a pair
    for pair in pairs:
        follows.setdefault(id(pair.relu), set()).add(id(pair.linear))

    def reads_a_paired_linear(call: fx.Node, relu: nn.Module) -> bool:
        arg = call.args[0] if len(call.args) == 1 and not call.kwargs else None
        return isinstance(arg, fx.Node) and arg.op == "call_module" and id(modules[arg.target]) in follows[id(relu)]

    verdicts = {}
    for pair in pairs:
        nodes = calls.get(id(pair.linear), [])
        verdict = None
        if len(nodes) == 1 and not all(_is_relu_node(u, modules) for u in nodes[0].users):
            verdict = "forward also uses its output other than through a ReLU"
        elif not all(reads_a_paired_linear(call, pair.relu) for call in calls.get(id(pair.relu), [])):
            verdict = "forward calls the ReLU after it on another value"
        verdicts[id(pair)] = verdict
    return verdicts


def _convert_sequentials(pairs: List[_Pair], uses: _Uses, verdicts, report: ConversionReport) -> List[_Pair]:
    fused = []
    for pair in pairs:
        why = uses.why_not(pair.linear) or verdicts.get(id(pair))
        if why:
            report._skip(pair.full, why, pair.linear)
            continue
        setattr(pair.seq, pair.linear_name, _fused_from(pair.linear, "sequential"))
        setattr(pair.seq, pair.relu_name, _FusedAway(pair.relu))
        report.fused.append(pair.full)
        fused.append(pair)
    return fused


def _convert_prelus(model: nn.Module, report: ConversionReport) -> list:
    """Returns the slots changed: (parent, child name, original, reported name or None)."""
    done: Dict[int, DeadAwarePReLU] = {}  # a PReLU at several places stays one module
    changed = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(_slots(mod)):
            if type(child) is not nn.PReLU:
                continue
            if _has_hooks(child):
                report._skip(_qualname(name, child_name), "it has hooks", child)
            else:
                reported = None
                if id(child) not in done:
                    done[id(child)] = _prelu_from(child)
                    reported = _qualname(name, child_name)
                    report.prelu.append(reported)
                setattr(mod, child_name, done[id(child)])
                changed.append((mod, child_name, child, reported))
    return changed


def _undo(fused: List[_Pair], prelus: list, report: ConversionReport) -> None:
    why = "forward inspects the modules (its trace changes once they are converted)"
    for pair in fused:
        setattr(pair.seq, pair.linear_name, pair.linear)
        setattr(pair.seq, pair.relu_name, pair.relu)
        report.fused.remove(pair.full)
        report._skip(pair.full, why, pair.linear)
    for parent, child_name, original, reported in prelus:
        setattr(parent, child_name, original)
        if reported is not None:
            report.prelu.remove(reported)
            report._skip(reported, why, original)


@contextlib.contextmanager
def _tensors_restored(model: nn.Module):
    """Tracing runs forward's Python: the parameters and buffers it changes in
    place are restored on exit (taken once for all of convert's traces).
    Yields a function telling whether any was changed so far."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    saved = [(t, t._version, t.detach().clone()) for t in tensors]
    try:
        yield lambda: any(t._version != version for t, version, _ in saved)
    finally:
        with torch.no_grad():
            for t, version, value in saved:
                if t._version != version:
                    t.copy_(value)


def _trace_modes(model: nn.Module):
    """{True: (GraphModule or None, why not), False: ...}: traced in train and
    in eval mode, every module's own mode restored."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        return {mode: _trace(model.train(mode)) for mode in (True, False)}
    finally:
        for m, mode in modes:
            m.training = mode


def _graph_key(gm: fx.GraphModule, model: nn.Module, was=None) -> list:
    """The graph as (op, target, arguments) per node, with nodes as their
    positions and called modules as the objects they stand for (`was`: id
    of a converted module -> id of the one it replaced), so that a forward
    taking the same path over converted modules gives the same key."""
    modules = dict(model.named_modules(remove_duplicate=False))
    was = was or {}
    position = {node: i for i, node in enumerate(gm.graph.nodes)}
    key = []
    for node in gm.graph.nodes:
        target = node.target
        if node.op == "call_module":
            target = was.get(id(modules[node.target]), id(modules[node.target]))
        args = fx.node.map_arg((node.args, node.kwargs), lambda n: ("node", position[n]))
        key.append((node.op, str(target), repr(args)))
    return key


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


def _trace(model: nn.Module):
    """(GraphModule over the same module objects, None), or (None, why not)."""
    try:
        graph = _Tracer().trace(model)
        return fx.GraphModule(model, graph, model.__class__.__name__), None
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e)[:120]}"


def _call_counts(gm: fx.GraphModule) -> Counter:
    modules = dict(gm.named_modules())
    return Counter(id(modules[n.target]) for n in gm.graph.nodes if n.op == "call_module")


def _convert_fx(model: nn.Module, uses: _Uses, report: ConversionReport, refuse=None):
    """Fuses in a traced GraphModule; with `refuse` (a reason), only reports
    what it would have fused."""
    gm, _ = _trace(model)
    if gm is None:
        return model, False
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.Linear:
            continue
        users = list(node.users)
        if not users or not all(_is_relu_node(u, modules) for u in users):
            if any(_is_relu_node(u, modules) for u in users):
                report._skip(node.target, "its output is also used other than by a ReLU", modules[node.target])
            continue
        why = uses.why_not(modules[node.target])
        if why is None and calls[node.target] > 1:
            why = f"it is called at {calls[node.target]} places in forward"
        if why or refuse:
            report._skip(node.target, why or refuse, modules[node.target])
            continue
        gm.add_submodule(node.target, _fused_from(modules[node.target], "fx"))  # same name and parameters
        report.skipped.pop(node.target, None)  # the Sequential pass may have refused its pair
        for relu in users:
            relu.replace_all_uses_with(node)
            gm.graph.erase_node(relu)
        report.fused.append(node.target)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
        return gm, True
    return model, False


def _check_module(fn: str, model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: expected an nn.Module, but got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"{fn}: expected an eager nn.Module, but got a TorchScript module; convert before scripting")


def convert(model: nn.Module, *, report: bool = False, prelu: bool = True, fx: object = "auto", inplace: bool = False):
    """Returns the converted model; with ``report=True``, ``(model, ConversionReport)``.
    See the module docstring for what is converted. Always use the returned
    model: with ``inplace=True`` the modules are converted in place, but a
    model converted through torch.fx comes back as a new GraphModule.

    Example::

        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> fused = convert(m)
        >>> type(fused[0]).__name__
        'FusedLinearReLU'
        >>> convert(m, report=True)[1].fused
        ['0']
    """
    _check_module("convert", model)
    if fx not in (True, False, "auto"):
        raise ValueError(f"convert: expected fx to be True, False or 'auto', but got {fx!r}")
    model = model if inplace else copy.deepcopy(model)
    rep = ConversionReport()
    hooks = _global_hooks()
    if hooks:
        # They would see _FusedAway and FusedLinearReLU where ReLUs and Linears were.
        rep.notes.append(f"global module hooks are registered ({hooks}): nothing converted")
        warnings.warn(
            f"convert: global module hooks are registered ({hooks}); they would see other modules after "
            "conversion, so nothing is converted",
            stacklevel=2,
        )
        return _finish(model, rep, report)
    uses = _Uses(model)
    pairs = _sequential_pairs(model, rep)
    if fx is False:
        rep.notes.append("fx=False: only nn.Sequential chains searched, their Linears assumed called only through the Sequential")
        _convert_sequentials(pairs, uses, {}, rep)
        if prelu:
            _convert_prelus(model, rep)
        return _finish(model, rep, report)
    with _tensors_restored(model) as changed_tensors:
        # Traced in train and in eval mode: a Sequential's Linear and ReLU fuse
        # only where both graphs show that forward uses them as a pair and
        # nothing else.
        traces = _trace_modes(model)
        mutates = changed_tensors()
        why = next((why for gm, why in traces.values() if gm is None), None)
        if why is not None:
            rep.notes.append(f"forward not traceable by torch.fx ({why})")
            for pair in pairs:
                rep._skip(pair.full, "forward is not traceable by torch.fx (fx=False fuses it)", pair.linear)
            warnings.warn(
                f"convert: the forward of {type(model).__name__} is not traceable by torch.fx, so convert cannot check "
                "how it uses its modules: no Linear+ReLU is fused. If forward calls its nn.Sequentials only as a whole, "
                "convert(model, fx=False) fuses the pairs inside them.",
                stacklevel=2,
            )
            if prelu:
                _convert_prelus(model, rep)
            return _finish(model, rep, report)
        before = {mode: _graph_key(gm, model) for mode, (gm, _) in traces.items()}
        uses.calls = _call_counts(traces[True][0]) | _call_counts(traces[False][0])
        verdicts = {}
        for gm, _ in traces.values():
            for key, verdict in _pair_verdicts(model, gm, pairs).items():
                verdicts[key] = verdicts.get(key) or verdict
        fused = _convert_sequentials(pairs, uses, verdicts, rep)
        prelus = _convert_prelus(model, rep) if prelu else []
        if fused or prelus:
            # The model's own forward runs on the converted modules: if it
            # inspects them (isinstance, identity, attributes), its trace
            # changes. Then nothing is converted in place.
            was = {id(getattr(p.seq, p.linear_name)): id(p.linear) for p in fused}
            was.update({id(getattr(p.seq, p.relu_name)): id(p.relu) for p in fused})
            was.update({id(getattr(parent, name)): id(original) for parent, name, original, _ in prelus})
            after = _trace_modes(model)
            if any(gm is None or _graph_key(gm, model, was) != before[mode] for mode, (gm, _) in after.items()):
                _undo(fused, prelus, rep)
                rep.notes.append("forward takes another path once its modules are converted: none converted in place")
        # Linears outside Sequentials fuse only in a traced GraphModule, which
        # keeps only what torch.fx records (docs/usage.md): asked for with fx=True.
        refuse = None
        if fx == "auto":
            refuse = "fusing it takes a traced GraphModule: convert(model, fx=True)"
        elif before[True] != before[False]:
            refuse = "forward differs between train and eval mode (a traced GraphModule would freeze it)"
        elif mutates:
            refuse = "forward changes the model's tensors in place (a traced GraphModule would not)"
        elif _has_hooks(model):
            refuse = "the model has hooks (a traced GraphModule would drop them)"
        if refuse is not None and fx is True:
            rep.notes.append(f"no conversion through torch.fx: {refuse}")
        converted, changed = _convert_fx(model, uses, rep, refuse)
        if changed:
            model = converted
        return _finish(model, rep, report)


def _global_hooks() -> str:
    """The kinds of global module hooks registered (torch.nn.modules.module), or ''."""
    from torch.nn.modules import module as mod

    kinds = ["forward", "forward_pre", "backward", "backward_pre"]
    return ", ".join(k for k in kinds if getattr(mod, f"_global_{k}_hooks", None))


def _finish(model: nn.Module, rep: ConversionReport, report: bool):
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear:
            rep._skip(name, "not followed by a ReLU", mod)
    if not rep.fused and not rep.prelu:
        warnings.warn(
            f"convert: nothing converted in {type(model).__name__}: no Linear+ReLU that can be fused "
            "and no nn.PReLU (convert(model, report=True) says why)",
            stacklevel=3,
        )
    return (model, rep) if report else model


def _revert_fx(gm: fx.GraphModule, report: ConversionReport) -> None:
    modules = dict(gm.named_modules())
    changed = False
    for node in list(gm.graph.nodes):
        mod = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(mod, FusedLinearReLU) or getattr(mod, _ORIGIN, None) != "fx":
            continue
        gm.add_submodule(node.target, _linear_from(mod))
        with gm.graph.inserting_after(node):
            relu = gm.graph.call_function(torch.relu, (node,))
        node.replace_all_uses_with(relu, delete_user_cb=lambda user, relu=relu: user is not relu)
        report.fused.append(node.target)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()


def revert(model: nn.Module, *, report: bool = False):
    """Undo convert() in place: plain nn.Linear + ReLU and nn.PReLU, same
    parameters. Returns the model; with ``report=True``, ``(model, report)``.
    A FusedLinearReLU that convert() did not make is left alone (reverting it
    to a Linear would drop its ReLU) and reported. A model converted through
    torch.fx comes back as a GraphModule calling nn.Linear then torch.relu."""
    _check_module("revert", model)
    rep = ConversionReport()
    if isinstance(model, fx.GraphModule):
        _revert_fx(model, rep)
    back: Dict[int, nn.PReLU] = {}  # a DeadAwarePReLU at several places stays one module
    for name, mod in list(model.named_modules()):
        slots = _slots(mod)
        for i, (child_name, child) in enumerate(slots):
            full = _qualname(name, child_name)
            if isinstance(child, FusedLinearReLU):
                origin = getattr(child, _ORIGIN, None)
                nxt = slots[i + 1][1] if i + 1 < len(slots) else None
                if origin == "sequential" and isinstance(nxt, _FusedAway):
                    setattr(mod, child_name, _linear_from(child))
                    setattr(mod, slots[i + 1][0], nxt.original())
                    rep.fused.append(full)
                elif origin != "fx":
                    rep._skip(full, "not made by convert(): its ReLU is part of the module")
            elif isinstance(child, DeadAwarePReLU) and getattr(child, "_converted_from_prelu", False):
                if id(child) not in back:
                    back[id(child)] = _prelu_back(child)
                    rep.prelu.append(full)
                setattr(mod, child_name, back[id(child)])
    return (model, rep) if report else model
