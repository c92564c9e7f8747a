"""Dead-neuron statistics, report, revival and distributed sync."""

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port
from torch import nn

from torch_relu_ext import dead_neuron_report, revive_dead_, sync_dead_stats
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

ops = torch.ops.relu_ext


def ema_reference(fracs, momentum):
    ema = None
    for p in fracs:
        ema = p.clone() if ema is None else (1 - momentum) * ema + momentum * p
    return ema


@pytest.mark.parametrize("rows,out_f", [(1, 1), (7, 13), (64, 8), (33, 130)])
def test_mask_count_matches_positive_count(rows, out_f):
    x = torch.randn(rows, 5)
    w = torch.randn(out_f, 5)
    b = torch.randn(out_f)
    b[0] = float("nan")  # the mask passes NaN: counted as active
    out, mask = ops.fused_linear_relu_forward(x, w, b)
    pre = x @ w.T + b
    expected = (~(pre <= 0)).sum(0)
    assert torch.equal(ops.relu_mask_count(mask, out), expected)


def test_linear_ema_matches_reference():
    torch.manual_seed(0)
    layer = FusedLinearReLU(6, 10, momentum=0.1, track_dormant=True)
    with torch.no_grad():
        layer.bias[:3] = -50.0  # three units that never fire
    fracs, means = [], []
    for batch in (16, 5, 40):
        x = torch.randn(2, batch, 6)  # leading dims: rows = 2 * batch
        y = layer(x)
        pre = x @ layer.weight.detach().T + layer.bias.detach()
        fracs.append((pre > 0).float().reshape(-1, 10).mean(0))
        means.append(y.detach().reshape(-1, 10).mean(0))
    torch.testing.assert_close(layer.active_ema, ema_reference(fracs, 0.1))
    torch.testing.assert_close(layer.abs_mean_ema, ema_reference(means, 0.1))
    assert int(layer.num_batches_tracked) == 3
    assert layer.dead_mask()[:3].all() and layer.dead_fraction() >= 0.3
    assert layer.dormant_mask()[:3].all()


@pytest.mark.parametrize("num_parameters,num_channels", [(4, None), (1, 4), (1, 1)])
def test_prelu_ema_matches_reference(num_parameters, num_channels):
    torch.manual_seed(1)
    act = DeadAwarePReLU(num_parameters, num_channels=num_channels, momentum=0.2)
    fracs = []
    for batch in (3, 8):
        x = torch.randn(batch, 4, 5, 5)
        x[:, 1] = -x[:, 1].abs()  # channel 1 never positive
        act(x)
        per_channel = (x > 0).float().transpose(0, 1).reshape(4, -1).mean(1)
        fracs.append(per_channel if act.active_ema.numel() == 4 else (x > 0).float().mean().reshape(1))
    torch.testing.assert_close(act.active_ema, ema_reference(fracs, 0.2))
    if act.active_ema.numel() == 4:
        assert act.dead_mask().tolist() == [False, True, False, False]


def test_buffers_change_only_in_training_and_when_tracking():
    layer = FusedLinearReLU(3, 4)
    act = DeadAwarePReLU(4)
    layer.eval()
    act.eval()
    layer(torch.randn(5, 3))
    act(torch.randn(5, 4))
    assert int(layer.num_batches_tracked) == 0 and int(act.num_batches_tracked) == 0
    assert not layer.dead_mask().any()  # nothing measured: nothing dead
    off = FusedLinearReLU(3, 4, track_dead_stats=False)
    off(torch.randn(5, 3))
    assert int(off.num_batches_tracked) == 0 and torch.equal(off.active_ema, torch.zeros(4))
    layer.train()
    layer(torch.randn(5, 3))
    assert int(layer.num_batches_tracked) == 1


def test_state_dict_round_trip_and_reset():
    layer = FusedLinearReLU(3, 4)
    for _ in range(3):
        layer(torch.randn(8, 3))
    other = FusedLinearReLU(3, 4)
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.active_ema, layer.active_ema)
    assert int(other.num_batches_tracked) == 3
    layer.reset_dead_stats()
    assert int(layer.num_batches_tracked) == 0 and not layer.active_ema.any()


def test_report_rows_and_tensorboard():
    model = nn.Sequential(FusedLinearReLU(4, 6), nn.Linear(6, 6), DeadAwarePReLU(6), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias[:2] = -100.0
    model(torch.randn(32, 4))
    report = dead_neuron_report(model)
    assert [r.name for r in report] == ["0", "2"]
    assert report[0].kind == "FusedLinearReLU" and report[0].units == 6 and report[0].dead == 2
    assert report[0].dead_pct == pytest.approx(100 * 2 / 6)
    assert report[0].min_active == 0.0 and report[0].batches == 1
    assert "FusedLinearReLU" in str(report) and "dead %" in str(report)

    class Writer:
        def __init__(self):
            self.scalars = {}

        def add_scalar(self, tag, value, step):
            self.scalars[(tag, step)] = value

    w = Writer()
    report.to_tensorboard(w, step=7)
    assert w.scalars[("dead_neurons/0/dead_pct", 7)] == pytest.approx(100 * 2 / 6)


def test_revive_changes_exactly_the_dead_units():
    torch.manual_seed(2)
    model = nn.Sequential(FusedLinearReLU(5, 8), FusedLinearReLU(8, 6), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias[[1, 4]] = -100.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(16, 5)).sum().backward()
        opt.step()
    dead0 = model[0].dead_mask()
    assert dead0.tolist() == [i in (1, 4) for i in range(8)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state_before = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in model.named_parameters()}
    # Layer 1 must not change: mark it all alive.
    model[1].active_ema.fill_(0.5)
    changes = revive_dead_(model, opt)
    assert set(changes) == {"0"} and changes["0"]["units"] == [1, 4] and changes["0"]["next"] == "1"
    w0, b0, w1 = model[0].weight, model[0].bias, model[1].weight
    dead = torch.tensor([1, 4])
    alive = torch.tensor([i for i in range(8) if i not in (1, 4)])
    # Rows 1, 4 re-drawn within nn.Linear's init bound, bias zeroed, the rest untouched.
    assert not torch.equal(w0[dead], before["0.weight"][dead])
    assert (w0[dead].abs() <= 1 / 5**0.5).all()
    assert torch.equal(w0[alive], before["0.weight"][alive])
    assert torch.equal(b0[dead], torch.zeros(2)) and torch.equal(b0[alive], before["0.bias"][alive])
    # Next layer: input columns 1, 4 zeroed, nothing else.
    assert torch.equal(w1[:, dead], torch.zeros(6, 2))
    assert torch.equal(w1[:, alive], before["1.weight"][:, alive])
    assert torch.equal(model[2].weight, before["2.weight"])
    # Optimizer moments: exactly those rows/columns.
    st0 = opt.state[model[0].weight]
    st1 = opt.state[model[1].weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert not st0[key][dead].any() and torch.equal(st0[key][alive], state_before["0.weight"][key][alive])
        assert not st1[key][:, dead].any() and torch.equal(st1[key][:, alive], state_before["1.weight"][key][:, alive])
    assert torch.equal(st0["step"], state_before["0.weight"]["step"])
    # Statistics start afresh: the next training batch measures every unit.
    assert not model[0].dead_mask().any() and int(model[0].num_batches_tracked) == 0
    model(torch.randn(16, 5))
    assert int(model[0].num_batches_tracked) == 1


def test_revive_never_touches_output_layer_and_resets_collapsed_slopes():
    head = FusedLinearReLU(4, 3)
    model = nn.Sequential(nn.Linear(4, 4), DeadAwarePReLU(4, init=0.25), head)
    with torch.no_grad():
        head.bias.fill_(-100.0)
        model[1].weight.copy_(torch.tensor([0.0, 0.3, 1e-5, 0.2]))
    x = torch.randn(8, 4)
    model[1](-x.abs())  # every channel dead
    head(torch.randn(8, 4))
    w_head = head.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"PReLU slopes reset to their init in 1; this changes the model's output"):
        changes = revive_dead_(model)
    assert torch.equal(head.weight, w_head)  # the output layer is left alone
    assert changes["1"]["slope_reset"] == [0, 2]
    assert model[1].weight.tolist() == pytest.approx([0.25, 0.3, 0.25, 0.2])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_statistics_stay_float32_in_16bit_models(dtype):
    """.to(bfloat16) once converted the moving averages too, and updates of
    momentum * p rounded away: a 16-bit model's EMA drifted from the float32
    model's (0.504 against 0.348 after 400 steps)."""
    torch.manual_seed(5)
    ref = nn.Sequential(FusedLinearReLU(16, 32), DeadAwarePReLU(32, num_channels=32), FusedLinearReLU(32, 8))
    low = nn.Sequential(FusedLinearReLU(16, 32), DeadAwarePReLU(32, num_channels=32), FusedLinearReLU(32, 8))
    low.load_state_dict(ref.state_dict())
    low.to(dtype)
    for m in (low[0], low[1], low[2]):
        assert m.active_ema.dtype == torch.float32 and m.abs_mean_ema.dtype == torch.float32
        assert m.weight.dtype == dtype
    low.half().to(dtype).double().to(dtype)  # any conversion path
    assert low[0].active_ema.dtype == torch.float32
    # Two alternating batches, so the average keeps moving: the float64
    # reference of every update, from the counts the layer reports.
    xs = [torch.randn(64, 16), torch.randn(64, 16) + 0.5]
    fracs = []
    for step in range(400):
        x = xs[step % 2].to(dtype)
        out, mask = ops.fused_linear_relu_forward(x, low[0].weight, low[0].bias)
        fracs.append(ops.relu_mask_count(mask, out).double() / 64)
        low(x)
    expected = ema_reference(fracs, low[0].momentum)
    torch.testing.assert_close(low[0].active_ema.double(), expected, rtol=0, atol=1e-5)


def test_old_16bit_checkpoint_statistics_load_into_float32():
    old = FusedLinearReLU(4, 6)
    state = old.state_dict()
    state["active_ema"] = torch.full((6,), 0.375, dtype=torch.bfloat16)
    state["abs_mean_ema"] = torch.full((6,), 0.5, dtype=torch.bfloat16)
    state["num_batches_tracked"] = torch.tensor(7)
    new = FusedLinearReLU(4, 6).to(torch.bfloat16)
    new.load_state_dict({k: (v.to(torch.bfloat16) if k in ("weight", "bias") else v) for k, v in state.items()})
    assert new.active_ema.dtype == torch.float32 and new.active_ema.tolist() == [0.375] * 6
    assert int(new.num_batches_tracked) == 7


def _kill_units(layer, units):
    with torch.no_grad():
        layer.bias[units] = -100.0


def _revival_case(model, layer, x, **kw):
    """Train-mode passes mark the units dead; returns outputs before and after
    revive_dead_, its record and the warnings it gave."""
    import warnings

    model.train()
    for _ in range(2):
        model(x)
    model.eval()
    before = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        changes = revive_dead_(model, **kw)
    return before, model(x), changes, [str(w.message) for w in caught]


def test_revive_preserves_the_function_in_sequential_models():
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Sequential(FusedLinearReLU(8, 16)),
        nn.Dropout(0.2),
        nn.Identity(),
        nn.Sequential(FusedLinearReLU(16, 16), nn.Linear(16, 3)),
    )
    _kill_units(model[0][0], [0, 5, 9])
    before, after, changes, warned = _revival_case(model, model[0][0], torch.randn(32, 8))
    assert changes["0.0"]["units"] == [0, 5, 9] and changes["0.0"]["next"] == "3.0" and not warned
    assert torch.equal(before, after)  # ReDo: the next layer's columns are zero, bitwise the same output
    assert not torch.equal(model[3][0].weight[:, [0, 5, 9]], torch.ones(16, 3))  # something was zeroed
    assert not model[3][0].weight[:, [0, 5, 9]].any()


def test_revive_preserves_the_function_in_fx_converted_models():
    import torch.nn.functional as F

    from torch_relu_ext import convert

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.c(F.relu(self.b(F.relu(self.a(x)))))

    torch.manual_seed(7)
    model = convert(Net(), fx=True)
    _kill_units(model.a, [2, 3])
    before, after, changes, warned = _revival_case(model, model.a, torch.randn(32, 8))
    assert changes["a"]["next"] == "b" and not warned
    assert torch.equal(before, after)


@pytest.mark.parametrize("between", ["layernorm", "batchnorm", "residual", "end-of-sequential"])
def test_revive_refuses_where_the_output_would_change(between):
    import torch.nn.functional as F

    from torch_relu_ext import convert

    torch.manual_seed(8)
    if between == "layernorm":
        model = nn.Sequential(FusedLinearReLU(8, 16), nn.LayerNorm(16), nn.Linear(16, 3))
        layer, name, why = model[0], "0", "its output goes to module '1' (LayerNorm)"
    elif between == "batchnorm":
        model = nn.Sequential(FusedLinearReLU(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
        layer, name, why = model[0], "0", "its output goes to module '1' (BatchNorm1d)"
    elif between == "residual":

        class Res(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)

            def forward(self, x):
                h = F.relu(self.a(x))
                return self.c(F.relu(self.b(h)) + h)

        model = convert(Res(), fx=True)
        layer, name, why = model.a, "a", "its output has several consumers"
    else:

        class Wrap(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(FusedLinearReLU(8, 16))
                self.head = nn.Linear(16, 3)

            def forward(self, x):
                return self.head(self.body(x) * 2)

        model = Wrap()
        layer, name, why = model.body[0], "body.0", "its output goes to mul"
    _kill_units(layer, [1, 4])
    w = layer.weight.detach().clone()
    before, after, changes, warned = _revival_case(model, layer, torch.randn(32, 8))
    assert changes[name] == {"units": [1, 4], "skipped": why}
    assert sum(f"revive_dead_: {name} has 2 dead units but is not revived: {why}" in w for w in warned) == 1
    assert torch.equal(layer.weight, w) and torch.equal(before, after)
    # Naming the consumer explicitly revives it.
    nxt = model[2] if between in ("layernorm", "batchnorm") else (model.b if between == "residual" else model.head)
    changes = revive_dead_(model, pairs={layer: nxt})
    assert changes[name]["units"] == [1, 4] and not layer.bias[[1, 4]].any()


def _ddp_worker(rank, world, port, out_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(FusedLinearReLU(4, 6), nn.Linear(6, 6), DeadAwarePReLU(6), nn.Linear(6, 2))
    # Rank-specific data: unit 0 fires only on rank 1, unit 1 on no rank.
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.0 if rank == 1 else -1.0, -1.0, 1, 1, 1, 1]))
    model(torch.randn(16, 4))
    before = model[0].dead_mask().clone()
    sync_dead_stats(model)
    torch.save(
        {
            "before": before,
            "after": model[0].dead_mask(),
            "ema": model[0].active_ema.clone(),
            "prelu": model[2].active_ema.clone(),
        },
        f"{out_path}.{rank}",
    )
    # Both ranks done before either tears down: a rank that exits while its
    # peer's gloo threads still talk to it made the peer abort ("terminate
    # called without an active exception", seen under load in a full run).
    dist.barrier()
    dist.destroy_process_group()


def test_sync_dead_stats_two_processes(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_ddp_worker, args=(2, free_port(), out), nprocs=2, join=True)
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert not torch.equal(r0["before"], r1["before"])  # the ranks disagreed
    assert torch.equal(r0["after"], r1["after"])  # now they agree
    assert torch.equal(r0["ema"], r1["ema"]) and torch.equal(r0["prelu"], r1["prelu"])
    assert r0["ema"][0] == pytest.approx(0.5) and r0["after"].tolist()[:2] == [False, True]


def test_sync_is_noop_without_distributed():
    layer = FusedLinearReLU(2, 3)
    layer(torch.randn(4, 2))
    ema = layer.active_ema.clone()
    sync_dead_stats(layer)
    assert torch.equal(layer.active_ema, ema)


def test_modules_with_stats_still_compile_and_script():
    model = nn.Sequential(FusedLinearReLU(4, 6), DeadAwarePReLU(6))
    scripted = torch.jit.script(model)  # shares the buffers with `model`
    scripted(torch.randn(3, 4))
    assert int(scripted[0].num_batches_tracked) == 1
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    for b in (3, 7):
        compiled(torch.randn(b, 4))
    assert int(model[0].num_batches_tracked) == 3 and int(model[1].num_batches_tracked) == 3


def test_dead_stats_update_op():
    ema = torch.tensor([0.5, 0.2])
    nbt = torch.tensor(0)
    ops.dead_stats_update_(ema, nbt, torch.tensor([3, 0]), 4, 0.1)
    assert ema.tolist() == pytest.approx([0.75, 0.0]) and int(nbt) == 1  # first batch: set
    ops.dead_stats_update_(ema, nbt, torch.tensor([4, 4]), 4, 0.1)
    assert ema.tolist() == pytest.approx([0.775, 0.1]) and int(nbt) == 2  # then the EMA step
    with pytest.raises(RuntimeError, match="relu_ext::dead_stats_update_.*momentum"):
        ops.dead_stats_update_(ema, nbt, torch.tensor([1, 1]), 4, 1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dead_stats_update_is_the_one_ema_step(dtype):
    """The CPU kernel of dead_stats_update_, its Functionalize kernel and the
    modules' abs-mean update all follow _registry.ema_update_ (the ATen ops the
    composite kernel runs), bitwise, for every buffer dtype."""
    from torch_relu_ext._registry import ema_update_

    g = torch.Generator().manual_seed(3)
    for elements, momentum in [(4, 0.1), (1000003, 0.01), (7, 1.0), (2**40 + 1, 0.37)]:
        ema = torch.rand(257, generator=g, dtype=torch.float64).to(dtype)
        counts = torch.randint(0, min(elements, 2**31) + 1, (257,), generator=g)
        for tracked in (0, 5):
            want, nbt_want = ema.clone(), torch.tensor(tracked)
            ema_update_(want, counts.to(dtype) / elements, nbt_want, momentum)
            got, nbt = ema.clone(), torch.tensor(tracked)
            ops.dead_stats_update_(got, nbt, counts, elements, momentum)
            assert torch.equal(got, want) and int(nbt) == tracked + 1, (elements, momentum, tracked)

            def step(e, n, c):
                e, n = e.clone(), n.clone()
                ops.dead_stats_update_(e, n, c, elements, momentum)
                return e, n

            fe, fn = torch.func.functionalize(step)(ema, torch.tensor(tracked), counts)
            assert torch.equal(fe, want) and int(fn) == tracked + 1


def test_revive_follows_the_traced_forward_not_the_container():
    """A Sequential used as a container by a custom forward: its next slot is
    not the layer's consumer."""

    class Container(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(FusedLinearReLU(16, 32), nn.Linear(32, 4))
            self.norm = nn.LayerNorm(32)

        def forward(self, x):
            return self.seq[1](self.norm(self.seq[0](x)))

    torch.manual_seed(9)
    model = Container()
    _kill_units(model.seq[0], [0, 1])
    before, after, changes, warned = _revival_case(model, model.seq[0], torch.randn(64, 16))
    assert changes["seq.0"]["skipped"] == "its output goes to module 'norm' (LayerNorm)" and torch.equal(before, after)


def test_revive_refuses_a_next_linear_with_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(FusedLinearReLU(16, 32), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
            self.other = nn.Linear(32, 32)
            self.other.weight = self.seq[1].weight
            self.dec = nn.Linear(32, 4)

        def forward(self, x):
            return self.seq(x) + self.dec(self.other(x.repeat(1, 2)))

    torch.manual_seed(10)
    model = Tied()
    _kill_units(model.seq[0], [3])
    before, after, changes, warned = _revival_case(model, model.seq[0], torch.randn(64, 16))
    assert "tied weights" in changes["seq.0"]["skipped"] and torch.equal(before, after)


def test_revive_warns_about_an_optimizer_of_another_model():
    model = nn.Sequential(FusedLinearReLU(4, 8), nn.Linear(8, 2))
    other = torch.optim.Adam(nn.Linear(2, 2).parameters())
    with pytest.warns(UserWarning, match="the optimizer holds none of the model's parameters"):
        revive_dead_(model, other)


def test_dormant_mask_needs_tracking():
    layer = FusedLinearReLU(4, 3)
    layer(torch.randn(8, 4))
    with pytest.raises(RuntimeError, match="FusedLinearReLU.dormant_mask: the layer was built with track_dormant=False"):
        layer.dormant_mask()
