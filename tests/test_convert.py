"""convert()/revert(): drop-in conversion of existing models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_relu_ext import convert, revert
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU


def same_outputs(a, b, x, tol=1e-6):
    torch.testing.assert_close(a(x), b(x), rtol=tol, atol=tol)


def test_nested_sequential_with_inplace_relu_and_prelu():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True)),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.PReLU(8),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(5, 6)
    converted, report = convert(model, report=True)
    assert isinstance(converted[0][0], FusedLinearReLU) and isinstance(converted[1], FusedLinearReLU)
    assert isinstance(converted[4], DeadAwarePReLU) and type(converted[5]) is nn.Linear
    assert sorted(report.fused) == ["0.0", "1"] and report.prelu == ["4"]
    assert report.skipped == {"3": "not followed by a ReLU", "5": "not followed by a ReLU"}
    assert not converted.training
    same_outputs(model, converted, x)
    # Parameter keys unchanged; the original model is untouched.
    assert dict(converted.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert type(model[1]) is nn.Linear
    back = revert(converted)
    assert type(back[1]) is nn.Linear and type(back[2]) is nn.ReLU and type(back[4]) is nn.PReLU
    assert type(back[0][1]) is nn.ReLU and back[0][1].inplace
    same_outputs(model, back, x)


def test_dtype_device_and_training_state_kept():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).double().train()
    converted = convert(model)
    assert converted[0].weight.dtype == torch.float64 and converted[0].training
    x = torch.randn(3, 4, dtype=torch.float64)
    same_outputs(model, converted, x)


def test_torchvision_mlp():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is in requirements-dev.txt")
    torch.manual_seed(1)
    model = torchvision.ops.MLP(10, [32, 32, 5], activation_layer=nn.ReLU, dropout=0.1).eval()
    converted, report = convert(model, report=True)
    assert sum(isinstance(m, FusedLinearReLU) for m in converted.modules()) == 2
    assert len(report.fused) == 2
    same_outputs(model, converted, torch.randn(7, 10))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 8)
        self.shared = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = torch.relu(self.fc2(h))
        h = self.act(self.fc3(h)).relu()
        s = self.shared(h)
        h = F.relu(s) + s  # the Linear output is used twice: not fusable
        return self.head(h)


def test_fx_functional_model():
    torch.manual_seed(2)
    model = Functional().eval()
    converted, report = convert(model, report=True)  # default: in place only, the rest reported
    assert not isinstance(converted, torch.fx.GraphModule) and report.fused == []
    assert "fx=True" in report.skipped["fc1"]
    converted, report = convert(model, report=True, fx=True)
    assert isinstance(converted, torch.fx.GraphModule)
    assert sorted(report.fused) == ["fc1", "fc2", "fc3"]
    assert report.skipped["shared"] == "its output is also used other than by a ReLU"
    assert sum(isinstance(m, FusedLinearReLU) for m in converted.modules()) == 3
    x = torch.randn(4, 6)
    same_outputs(model, converted, x)
    # Gradients reach the converted copy's parameters (the original's are
    # untouched unless convert(..., inplace=True)).
    converted(x).sum().backward()
    assert converted.fc1.weight.grad is not None and model.fc1.weight.grad is None
    back = revert(converted)
    assert not any(isinstance(m, FusedLinearReLU) for m in back.modules())
    same_outputs(model, back, x)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return F.relu(self.fc(self.body(x)))
        return self.body(x)


def test_untraceable_model_is_left_alone_unless_fx_false():
    # Without a trace convert cannot see how forward uses its Sequentials
    # (slices, pieces, inspection): nothing is fused unless fx=False states
    # that forward calls them only as a whole.
    model = Untraceable().eval()
    x = torch.rand(3, 4)
    with pytest.warns(UserWarning, match="not traceable by torch.fx"):
        converted, report = convert(model, report=True)
    assert report.fused == [] and type(converted.body[0]) is nn.Linear
    assert any("not traceable" in s for s in report.notes)
    assert report.skipped == {
        "body.0": "forward is not traceable by torch.fx (fx=False fuses it)",
        "fc": "not followed by a ReLU",
    }
    same_outputs(model, converted, x)
    converted, report = convert(model, report=True, fx=False)
    assert isinstance(converted.body[0], FusedLinearReLU) and type(converted.fc) is nn.Linear
    same_outputs(model, converted, x)
    assert "fused Linear+ReLU: 1" in str(report)


# ---------------------------------------------------------------------------
# Regressions: models on which convert() once fused a ReLU that was not there,
# or revert() dropped one, without an error.


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(F.relu(self.fc(x)))  # only the first call is followed by a ReLU


def test_linear_called_twice_is_left_alone():
    model = CalledTwice()
    x = torch.randn(4, 8)
    converted, report = convert(model, report=True)
    assert report.fused == [] and report.skipped == {"fc": "it is called at 2 places in forward"}
    same_outputs(model, converted, x)


def test_module_in_two_sequential_slots_is_left_alone():
    la = nn.Linear(8, 8)
    model = nn.Sequential(la, nn.ReLU(), nn.Linear(8, 8), la, nn.ReLU())
    x = torch.randn(4, 8)
    converted, report = convert(model, report=True)
    assert report.fused == []
    # One line per module, though la sits at "0" and "3".
    assert report.skipped == {"0": "the module sits at 2 places in the model", "2": "not followed by a ReLU"}
    same_outputs(model, converted, x)


def test_tied_weights_are_left_alone():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b, nn.ReLU())
    converted, report = convert(model, report=True)
    assert report.fused == [] and set(report.skipped) == {"0", "2"}
    assert "tied" in report.skipped["0"]
    same_outputs(model, converted, torch.randn(3, 8))


def test_linear_with_hooks_is_left_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.min().item()))
    converted, report = convert(model, report=True)
    assert report.skipped == {"0": "it has hooks"}
    converted(torch.randn(5, 4))
    assert seen and seen[-1] < 0  # the hook still sees the Linear's own output


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_revert_survives_copies(how, tmp_path):
    import copy
    import pickle

    torch.manual_seed(0)
    model = Functional().eval()
    nested = nn.Sequential(nn.Sequential(nn.Linear(6, 6), nn.ReLU()), nn.PReLU(6), nn.Linear(6, 6)).eval()
    x = torch.randn(4, 6)
    for m in (model, nested):
        converted = convert(m, fx=True)
        if how == "deepcopy":
            copied = copy.deepcopy(converted)
        elif how == "pickle":
            copied = pickle.loads(pickle.dumps(converted))
        else:
            torch.save(converted, tmp_path / "m.pt")
            copied = torch.load(tmp_path / "m.pt", weights_only=False)
        back, report = revert(copied, report=True)
        assert report.fused and not any(isinstance(c, (FusedLinearReLU, DeadAwarePReLU)) for c in back.modules())
        same_outputs(m, back, x)


def test_revert_leaves_user_built_fused_layers_alone():
    model = nn.Sequential(FusedLinearReLU(4, 4), nn.Linear(4, 2))
    back, report = revert(model, report=True)
    assert isinstance(back[0], FusedLinearReLU) and "not made by convert()" in report.skipped["0"]


def test_bad_inputs_and_nothing_to_convert():
    with pytest.raises(TypeError, match=r"convert: expected an nn.Module, but got int"):
        convert(3)
    with pytest.raises(TypeError, match=r"revert: expected an nn.Module, but got str"):
        revert("model")
    with pytest.raises(ValueError, match=r"convert: expected fx to be True, False or 'auto', but got 'yes'"):
        convert(nn.Linear(2, 2), fx="yes")
    with pytest.raises(TypeError, match="TorchScript"):
        convert(torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.ReLU())))
    with pytest.warns(UserWarning, match="nothing converted in Linear"):
        assert type(convert(nn.Linear(2, 2))) is nn.Linear


# ---------------------------------------------------------------------------
# A generator of model patterns: each one is converted and compared with the
# original on random inputs, forward and backward, then reverted.

W = 6
RELUS = ["F.relu", "torch.relu", "method", "module", "F.relu_inplace", "method_inplace", "module_inplace"]


class Pattern(nn.Module):
    """Runs a list of steps; the Linear pool may hold one module twice
    (shared) or two modules with one weight (tied)."""

    def __init__(self, steps, pool, seqs):
        super().__init__()
        self.steps = steps
        self.pool = nn.ModuleList(pool)  # duplicates allowed: shared modules
        self.seqs = nn.ModuleList(seqs)
        self.relu = nn.ReLU()
        self.relu_inplace = nn.ReLU(inplace=True)
        self.ln = nn.LayerNorm(W)
        self.bn = nn.BatchNorm1d(W)

    def forward(self, x):
        saved = x
        for kind, arg in self.steps:
            if kind == "lin":
                x = self.pool[arg](x)
            elif kind == "seq":
                x = self.seqs[arg](x)
            elif kind == "norm":
                x = self.ln(x) if arg == "ln" else self.bn(x)
            elif kind == "save":
                saved = x
            elif kind == "res":
                x = x + saved
            elif kind == "fork":  # the value used twice: by a ReLU and by an add
                x = F.relu(x) + x
            elif kind == "relu":
                if arg == "F.relu":
                    x = F.relu(x)
                elif arg == "torch.relu":
                    x = torch.relu(x)
                elif arg == "method":
                    x = x.relu()
                elif arg == "module":
                    x = self.relu(x)
                elif arg == "F.relu_inplace":
                    x = F.relu(x, inplace=True)
                elif arg == "method_inplace":
                    x = x.relu_()
                else:
                    x = self.relu_inplace(x)
        return x


def make_pattern(seed):
    g = torch.Generator().manual_seed(seed)

    def pick(n):
        return int(torch.randint(n, (1,), generator=g))

    pool = [nn.Linear(W, W, dtype=torch.float64) for _ in range(4)]
    if pick(3) == 0:
        pool.append(pool[pick(4)])  # shared: one module at two pool slots
    if pick(3) == 0:
        pool[1].weight = pool[0].weight  # tied
    seqs = []
    for _ in range(2):
        inner = [nn.Linear(W, W, dtype=torch.float64), nn.ReLU(inplace=bool(pick(2)))]
        if pick(2):
            inner = [nn.Sequential(*inner), nn.Dropout(0.0), nn.Linear(W, W, dtype=torch.float64)]
        if pick(4) == 0:
            inner.insert(1, nn.LayerNorm(W, dtype=torch.float64))
        seqs.append(nn.Sequential(*inner))
    steps = [("lin", pick(len(pool)))]  # something to differentiate
    for _ in range(4 + pick(5)):
        r = pick(10)
        if r < 4:
            steps.append(("lin", pick(len(pool))))
            if pick(3):
                steps.append(("relu", RELUS[pick(len(RELUS))]))
        elif r == 4:
            steps.append(("seq", pick(2)))
        elif r == 5:
            steps.append(("norm", ["ln", "bn"][pick(2)]))
        elif r == 6:
            steps.append(("save", None))
        elif r == 7:
            steps.append(("res", None))
        elif r == 8:
            steps.append(("fork", None))
        elif steps[-1][0] in ("relu", "seq"):
            # An in-place ReLU on a ReLU's output breaks eager's own backward.
            steps.append(("relu", RELUS[pick(4)]))
        else:
            steps.append(("relu", RELUS[pick(len(RELUS))]))
    return Pattern(steps, pool, seqs).double()


@pytest.mark.parametrize("seed", range(40))
def test_generated_patterns_convert_exactly(seed):
    import copy

    model = make_pattern(seed).train()
    x = torch.randn(5, W, dtype=torch.float64)
    converted, report = convert(model, report=True)
    # Each module is reported once: fused, or skipped with one reason.
    assert not set(report.fused) & set(report.skipped)
    assert len(report.fused) == len(set(report.fused))
    g = torch.randn(5, W, dtype=torch.float64)
    out = model(x.clone())
    (out * g).sum().backward()
    out_c = converted(x.clone())
    (out_c * g).sum().backward()
    torch.testing.assert_close(out_c, out, rtol=1e-12, atol=1e-12)
    # Names, duplicates included: tied weights have two names, and which one
    # named_parameters() keeps depends on module order.
    grads = {n: p.grad for n, p in model.named_parameters(remove_duplicate=False)}
    grads_c = {n: p.grad for n, p in converted.named_parameters(remove_duplicate=False)}
    assert grads_c.keys() <= grads.keys()
    for n, gr in grads_c.items():
        torch.testing.assert_close(gr, grads[n], rtol=1e-12, atol=1e-12, msg=n)
    back = revert(copy.deepcopy(converted))
    assert not any(isinstance(m, FusedLinearReLU) for m in back.modules())
    torch.testing.assert_close(back(x.clone()), model(x.clone()), rtol=1e-12, atol=1e-12)


def test_generator_reaches_fusions_and_refusals():
    """The patterns above are not all trivially unconvertible."""
    fused = skipped_shared = skipped_called = 0
    for seed in range(40):
        _, report = convert(make_pattern(seed), report=True)
        fused += len(report.fused)
        skipped_shared += sum("places in the model" in why or "tied" in why for why in report.skipped.values())
        skipped_called += sum("called at" in why or "also used" in why for why in report.skipped.values())
    assert fused >= 20 and skipped_shared >= 3 and skipped_called >= 3, (fused, skipped_shared, skipped_called)


class SequentialAlsoCalledDirectly(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.seq(x)) + self.seq[0](x).sum(-1, keepdim=True)


def test_sequential_linear_also_called_directly_is_left_alone():
    model = SequentialAlsoCalledDirectly()
    x = torch.randn(3, 4)
    converted, report = convert(model, report=True)
    assert report.fused == [] and report.skipped["seq.0"] == "it is called at 2 places in forward"
    same_outputs(model, converted, x)


def test_untraceable_forward_warns_and_points_to_fx_false():
    with pytest.warns(UserWarning, match="not traceable by torch.fx, so convert cannot check"):
        convert(Untraceable())
    converted, report = convert(Untraceable(), fx=False, report=True)  # the assumption stated: no warning
    assert "fx=False" in report.notes[0] and isinstance(converted.body[0], FusedLinearReLU)


class PreActivationAlsoUsed(nn.Module):
    """The Sequential's Linear output is also read directly (found by a new-user trial)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        pre = self.body[0](x)
        return self.head(self.body[1](pre)) + pre.mean()


class SequentialIteratedWithOtherActivation(nn.Module):
    """Iterates the Sequential and calls leaky_relu where it holds a ReLU."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        for layer in self.layers:
            x = F.leaky_relu(x, 0.1) if isinstance(layer, nn.ReLU) else layer(x)
        return x


class SequentialReLUOnAnotherValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU())

    def forward(self, x):
        h = torch.relu(self.seq[0](x))
        return h + self.seq[1](x - 1)


@pytest.mark.parametrize("make", [PreActivationAlsoUsed, SequentialIteratedWithOtherActivation])
def test_sequential_pair_whose_linear_output_is_used_otherwise_is_left_alone(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(8, 16)
    with pytest.warns(UserWarning, match="nothing converted"):
        converted, report = convert(model, report=True)
    assert report.fused == []
    assert "forward also uses its output other than through a ReLU" in report.skipped.values()
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=0)


class SequentialReLUAlsoOnAnotherValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU())

    def forward(self, x):
        return self.seq(x) + self.seq[1](x - 1)


@pytest.mark.parametrize("make", [SequentialReLUOnAnotherValue, SequentialReLUAlsoOnAnotherValue])
def test_sequential_relu_called_on_another_value_stays_a_relu(make):
    # The pair is not fused as a pair (its ReLU slot must stay a ReLU); the
    # traced pass then fuses the Linear with the ReLU call that reads it.
    torch.manual_seed(0)
    model = make()
    x = torch.randn(8, 8)
    converted, report = convert(model, report=True, fx=True)
    assert report.fused == ["seq.0"] and "seq.0" not in report.skipped
    assert type(converted.get_submodule("seq.1")) is nn.ReLU
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=0)
    # Without the trace the pair is fused, as documented for fx=False.
    assert type(convert(model, fx=False).seq[1]).__name__ == "_FusedAway"


def test_relu_object_shared_by_slots_still_fuses_each_pair():
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(8, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 2))
    x = torch.randn(5, 8)
    converted, report = convert(model, report=True)
    assert report.fused == ["0", "2"] and isinstance(converted[0], FusedLinearReLU)
    same_outputs(model, converted, x)
    back = revert(converted)
    assert type(back[1]) is nn.ReLU and back[1] is back[3]  # still one shared ReLU
    same_outputs(model, back, x)


def test_hooked_relu_reason():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model[1].register_forward_hook(lambda m, i, o: None)
    with pytest.warns(UserWarning, match="nothing converted"):
        _, report = convert(model, report=True)
    assert report.skipped == {"0": "the ReLU after it has hooks"}


class SlotComparedByIdentity(nn.Module):
    """Iterates its Sequential and keeps the input of a ReLU it recognises by
    identity (a review found convert() fooled by such a forward)."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.seq = nn.Sequential(nn.Linear(8, 8), self.act, nn.Linear(8, 8))

    def forward(self, x):
        pre = x
        for m in self.seq:
            if m is self.act:
                pre = x
            x = m(x)
        return x + pre


def test_slot_compared_by_identity_is_left_alone():
    torch.manual_seed(0)
    model = SlotComparedByIdentity()
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="nothing converted"):
        converted, report = convert(model, report=True)
    assert report.fused == [] and report.skipped["seq.0"] == "forward also uses its output other than through a ReLU"
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=0)
    assert model.seq[1] is model.act  # the model is left as it was


class DropoutByMode(nn.Module):
    """F.dropout(training=self.training) and a train-only branch: a traced
    GraphModule would freeze the mode it was converted in (found by a
    new-user trial)."""

    def __init__(self):
        super().__init__()
        self.l, self.o = nn.Linear(16, 64), nn.Linear(64, 4)
        self.body = nn.Sequential(nn.Linear(16, 16), nn.ReLU())

    def forward(self, x):
        h = F.relu(self.l(x + self.body(x)))
        h = F.dropout(h, 0.5, training=self.training)
        return self.o(h) + (0.0 if self.training else 100.0)


@pytest.mark.parametrize("converted_in", ["train", "eval"])
def test_mode_dependent_forward_is_not_frozen_by_fx(converted_in):
    torch.manual_seed(0)
    model = DropoutByMode().train(converted_in == "train")
    converted, report = convert(model, report=True, fx=True)
    assert not isinstance(converted, torch.fx.GraphModule)
    assert report.fused == ["body.0"]  # the Sequential pair: forward runs live
    assert "l" in report.skipped and "train and eval" in report.skipped["l"]
    x = torch.randn(8, 16)
    model.eval(), converted.eval()
    torch.testing.assert_close(converted(x), model(x))
    model.train(), converted.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(converted(x), a)


class InspectsItsModules(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.act = nn.ReLU()
        self.seq = nn.Sequential(nn.Linear(16, 32), self.act, nn.Linear(32, 8), nn.PReLU())

    def forward(self, x):
        for m in self.seq:
            x = m(x)
            if self.how == "isinstance" and isinstance(m, nn.ReLU):
                x = x + 1.0
            if self.how == "identity" and m is self.act:
                x = x - 1.0
            if self.how == "prelu" and type(m) is nn.PReLU:
                x = x * 2.0
        return x


@pytest.mark.parametrize("how", ["isinstance", "identity", "prelu"])
def test_forward_that_inspects_converted_modules_is_left_alone(how):
    torch.manual_seed(0)
    model = InspectsItsModules(how)
    x = torch.randn(4, 16)
    with pytest.warns(UserWarning, match="nothing converted"):
        converted, report = convert(model, report=True)
    assert report.fused == [] and "forward inspects the modules" in report.skipped["seq.0"]
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=0)
    converted, report = convert(model, report=True, fx=True)
    # Nothing is converted in place (the modules' forward would take another
    # path); the traced pass fuses on the graph of the original path.
    assert any("another path" in n for n in report.notes) and report.prelu == []
    assert report.fused == ["seq.0"] and isinstance(converted, torch.fx.GraphModule)
    assert type(model.seq[0]) is nn.Linear and model.seq[1] is model.act
    torch.testing.assert_close(converted(x), model(x))


class CountsCalls(nn.Module):
    """forward updates a buffer in place (tracing runs it; found by a review)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros(()))
        self.seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        self.step += 1
        return F.relu(self.fc(self.seq(x))) * self.step


@pytest.mark.parametrize("inplace", [False, True])
def test_tracing_leaves_the_models_tensors_as_they_were(inplace):
    torch.manual_seed(0)
    model, reference = CountsCalls(), CountsCalls()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 8)
    converted, report = convert(model, report=True, inplace=inplace)
    assert model.step.item() == 0 and converted.step.item() == 0
    assert report.fused == ["seq.0"]
    for _ in range(3):
        torch.testing.assert_close(converted(x), reference(x))
    # A GraphModule would not update the buffer: fx=True refuses it.
    converted, report = convert(CountsCalls(), report=True, fx=True)
    assert not isinstance(converted, torch.fx.GraphModule)
    assert "in place" in report.skipped["fc"]


def test_what_a_graph_module_would_drop_is_refused_or_left_alone():
    class Functional2(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.PReLU()

        def forward(self, x):
            return self.act(F.relu(self.fc(x)))

    model = Functional2()
    model.register_forward_hook(lambda m, i, o: o * 2)  # a hook of the model itself
    model.act.register_forward_pre_hook(lambda m, i: (i[0] + 1,))  # a hooked PReLU
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="nothing converted"):
        converted, report = convert(model, report=True, fx=True)
    assert "hooks" in report.skipped["fc"] and report.skipped["act"] == "it has hooks"
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=0)


def test_global_module_hooks_stop_the_conversion():
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m)))
    try:
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        with pytest.warns(UserWarning, match="global module hooks are registered"):
            converted, report = convert(model, report=True)
        assert report.fused == [] and type(converted[1]) is nn.ReLU
    finally:
        handle.remove()
    assert convert(model, report=True)[1].fused == ["0"]
