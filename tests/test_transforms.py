"""Forward-mode AD and torch.func transforms against eager PyTorch.

These once gave wrong numbers without an error (a zero or missing tangent),
so every check compares values with eager's, in float64.
"""

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import torch_relu_ext as tre

D = torch.float64


@pytest.fixture(autouse=True)
def _quiet_vmap_fallback():
    # vmap runs our operators through PyTorch's per-sample fallback, which warns.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        yield


def ours_linear(x, w, b=None):
    return tre.fused_linear_relu(x, w, b)


def eager_linear(x, w, b=None):
    return F.relu(F.linear(x, w, b))


def ours_prelu(x, w):
    return tre.dead_prelu(x, w)[0]


def eager_prelu(x, w):
    return F.prelu(x, w)


def linear_inputs(shape=(5, 4), out=3, bias=True):
    x = torch.randn(*shape, dtype=D)
    w = torch.randn(out, shape[-1], dtype=D)
    b = torch.randn(out, dtype=D) if bias else None
    return x, w, b


def prelu_inputs(shape=(4, 3, 5), channels=3):
    x = torch.randn(*shape, dtype=D)
    x.view(-1)[::7] = 0.0  # exact zeros: eager's forward formula tests x >= 0
    return x, torch.rand(channels, dtype=D)


LINEAR_CASES = [
    pytest.param((5, 4), 3, True, id="2d"),
    pytest.param((2, 3, 4), 6, True, id="3d"),
    pytest.param((5, 4), 3, False, id="nobias"),
    pytest.param((0, 4), 3, True, id="empty"),
    pytest.param((4,), 2, True, id="1d-input"),
]


@pytest.mark.parametrize("shape,out,bias", LINEAR_CASES)
def test_linear_jvp_every_argument(shape, out, bias):
    x, w, b = linear_inputs(shape, out, bias)
    primals = (x, w) + ((b,) if bias else ())
    tangents = tuple(torch.randn_like(p) for p in primals)
    ours = jvp(ours_linear, primals, tangents)
    eager = jvp(eager_linear, primals, tangents)
    torch.testing.assert_close(ours, eager)


def test_linear_forward_ad_dual_tensors_and_reverse_mode_together():
    x, w, b = linear_inputs()
    tx, tw, tb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    with fwAD.dual_level():
        for duals in [(tx, None, None), (None, tw, None), (None, None, tb), (tx, tw, tb)]:
            args = [fwAD.make_dual(p, t) if t is not None else p for p, t in zip((x, w, b), duals)]
            expected = fwAD.unpack_dual(eager_linear(*args)).tangent
            got = fwAD.unpack_dual(ours_linear(*args)).tangent
            assert got is not None
            torch.testing.assert_close(got, expected)
        # A weight that requires grad as well: both modes at once.
        wr = w.clone().requires_grad_()
        out = ours_linear(fwAD.make_dual(x, tx), wr, b)
        torch.testing.assert_close(
            fwAD.unpack_dual(out).tangent, fwAD.unpack_dual(eager_linear(fwAD.make_dual(x, tx), w, b)).tangent
        )
        out.sum().backward()
    we = w.clone().requires_grad_()
    eager_linear(x, we, b).sum().backward()
    torch.testing.assert_close(wr.grad, we.grad)


def test_linear_tangent_with_nan_and_inf():
    """Rows with finite inputs: eager's numbers. Rows holding Inf/NaN: eager's
    linear multiplies the input by the weight's zero tangent (Inf * 0 = NaN);
    ours adds no term for a zero tangent, so the tangent stays t @ W^T where
    the output passes the ReLU (NaN outputs pass, as in eager's ReLU)."""
    x, w, b = linear_inputs((6, 4), 5)
    x[0, 0], x[1, 1], x[2, 2] = float("nan"), float("inf"), -float("inf")
    t = torch.randn_like(x)
    out, tangent = jvp(lambda x: ours_linear(x, w, b), (x,), (t,))
    eager_out, eager_tangent = jvp(lambda x: eager_linear(x, w, b), (x,), (t,))
    torch.testing.assert_close(out, eager_out, equal_nan=True)
    torch.testing.assert_close(tangent[3:], eager_tangent[3:])
    torch.testing.assert_close(tangent, (t @ w.T).masked_fill(out <= 0, 0))
    assert tangent.isfinite().all()


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda f, a: jacfwd(f, argnums=(0, 1, 2))(*a), id="jacfwd"),
        pytest.param(lambda f, a: jacrev(f, argnums=(0, 1, 2))(*a), id="jacrev"),
        pytest.param(lambda f, a: grad(lambda *a: f(*a).pow(2).sum(), argnums=(0, 1, 2))(*a), id="grad"),
        pytest.param(lambda f, a: vjp(f, *a)[1](torch.ones(5, 3, dtype=D)), id="vjp"),
        pytest.param(lambda f, a: hessian(lambda x: f(x, *a[1:]).pow(2).sum())(a[0]), id="hessian"),
        pytest.param(lambda f, a: vmap(grad(lambda xi: f(xi, *a[1:]).pow(2).sum()))(a[0]), id="per-sample-grad"),
        pytest.param(lambda f, a: vmap(f, in_dims=(0, None, None))(*a), id="vmap"),
    ],
)
def test_linear_torch_func(transform):
    args = linear_inputs()
    torch.testing.assert_close(transform(ours_linear, args), transform(eager_linear, args))


@pytest.mark.parametrize(
    "shape,channels",
    [((4, 3, 5), 3), ((4, 3, 5), 1), ((6,), 1), ((2, 3, 4, 4), 3)],
    ids=["nc-l", "shared", "1d", "4d"],
)
def test_prelu_jvp_and_dual_tensors(shape, channels):
    x, w = prelu_inputs(shape, channels)
    tx, tw = torch.randn_like(x), torch.randn_like(w)
    torch.testing.assert_close(jvp(ours_prelu, (x, w), (tx, tw)), jvp(eager_prelu, (x, w), (tx, tw)))
    with fwAD.dual_level():
        for dx, dw in [(tx, None), (None, tw)]:
            args = (fwAD.make_dual(x, dx) if dx is not None else x, fwAD.make_dual(w, dw) if dw is not None else w)
            got = fwAD.unpack_dual(ours_prelu(*args)).tangent
            assert got is not None
            torch.testing.assert_close(got, fwAD.unpack_dual(eager_prelu(*args)).tangent)


def test_prelu_channels_last_and_transforms():
    x, w = prelu_inputs((2, 3, 4, 4), 3)
    x = x.to(memory_format=torch.channels_last)
    for t in (
        lambda f: jacfwd(f, argnums=(0, 1))(x, w),
        lambda f: jacrev(f, argnums=(0, 1))(x, w),
        lambda f: hessian(lambda w: f(x, w).pow(2).sum())(w),
        lambda f: hessian(lambda x: f(x, w).pow(3).sum())(x[:1]),
        lambda f: vmap(grad(lambda xi: f(xi.unsqueeze(0), w).pow(2).sum()))(x),
    ):
        torch.testing.assert_close(t(ours_prelu), t(eager_prelu))


def test_gradcheck_forward_and_forward_over_reverse():
    x, w, b = (t.requires_grad_() for t in linear_inputs((4, 3), 5))
    assert gradcheck(ours_linear, (x, w, b), check_forward_ad=True, check_backward_ad=True)
    assert gradgradcheck(ours_linear, (x, w, b), check_fwd_over_rev=True)
    xp = torch.randn(3, 2, 4, dtype=D)
    xp = (xp + 0.1 * xp.sign()).requires_grad_()  # away from the kink for finite differences
    wp = torch.rand(2, dtype=D, requires_grad=True)
    assert gradcheck(ours_prelu, (xp, wp), check_forward_ad=True, check_backward_ad=True)
    assert gradgradcheck(ours_prelu, (xp, wp), check_fwd_over_rev=True)


def test_float32_jvp_within_rounding():
    x, w, b = (t.float() for t in linear_inputs((64, 32), 16))
    t = torch.randn_like(x)
    torch.testing.assert_close(jvp(lambda x: ours_linear(x, w, b), (x,), (t,)), jvp(lambda x: eager_linear(x, w, b), (x,), (t,)))


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        tre.FusedLinearReLU(4, 8, dtype=D), tre.DeadAwarePReLU(8, num_channels=8, dtype=D), nn.Linear(8, 2, dtype=D)
    )


def eager_twin(model):
    twin = nn.Sequential(nn.Linear(4, 8, dtype=D), nn.ReLU(), nn.PReLU(8, dtype=D), nn.Linear(8, 2, dtype=D))
    twin[0].load_state_dict(model[0].state_dict(), strict=False)
    twin[2].weight.data.copy_(model[1].weight)
    twin[3].load_state_dict(model[2].state_dict())
    return twin


def test_modules_under_transforms_train_and_eval():
    model = small_model()
    twin = eager_twin(model)
    x = torch.randn(6, 4, dtype=D)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        twin.train(mode == "train")
        before = int(model[0].num_batches_tracked)
        torch.testing.assert_close(jvp(model, (x,), (torch.ones_like(x),)), jvp(twin, (x,), (torch.ones_like(x),)))
        # The statistics see the jvp's forward once, in training mode only.
        assert int(model[0].num_batches_tracked) == before + (mode == "train")
        g = grad(lambda p: functional_call(model, p, (x,)).pow(2).sum())(dict(model.named_parameters()))
        ge = grad(lambda p: functional_call(twin, p, (x,)).pow(2).sum())(dict(twin.named_parameters()))
        for ours, eager in TWIN_NAMES.items():
            torch.testing.assert_close(g[ours], ge[eager])


TWIN_NAMES = {"0.weight": "0.weight", "0.bias": "0.bias", "1.weight": "2.weight", "2.weight": "3.weight", "2.bias": "3.bias"}


def test_vmap_refuses_statistics_in_training_and_works_in_eval():
    model = small_model()
    params = dict(model.named_parameters())
    x = torch.randn(6, 4, dtype=D)

    def loss(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).sum()

    model.train()
    with pytest.raises(RuntimeError, match=r"FusedLinearReLU: the dead-unit statistics cannot be updated under torch.func.vmap"):
        vmap(grad(loss), in_dims=(None, 0))(params, x)
    model[0].track_dead_stats = False
    with pytest.raises(RuntimeError, match=r"DeadAwarePReLU: .*torch.func.vmap.*model.eval\(\)"):
        vmap(grad(loss), in_dims=(None, 0))(params, x)
    model.eval()
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        one = grad(loss)(params, x[i])
        torch.testing.assert_close(per_sample["0.weight"][i], one["0.weight"])
