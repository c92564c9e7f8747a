"""PyTorch's own OpInfo samples for nn.functional.linear and
nn.functional.prelu, put through our functions: values and gradients against
eager, on every dtype the samples cover (ours takes the floating ones; the
others get a clear error)."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_within
from torch.testing._internal.common_methods_invocations import op_db

from torch_relu_ext import functional as RF

OPS = {op.name: op for op in op_db if op.name in ("nn.functional.linear", "nn.functional.prelu")}
FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def cases(name):
    op = OPS[name]
    return [pytest.param(dtype, id=str(dtype).replace("torch.", "")) for dtype in sorted(op.supported_dtypes("cpu"), key=str)]


def linear_args(sample):
    args = (sample.input,) + tuple(sample.args)
    weight = args[1] if len(args) > 1 else sample.kwargs["weight"]
    bias = args[2] if len(args) > 2 else sample.kwargs.get("bias")
    return args[0], weight, bias


def prelu_args(sample):
    weight = sample.args[0] if sample.args else sample.kwargs["weight"]
    return sample.input, weight


def grads(out, inputs, g):
    diff = [t for t in inputs if t is not None and t.requires_grad]
    got = torch.autograd.grad(out, diff, g, allow_unused=True) if diff and out.numel() else [None] * len(diff)
    it = iter(got)
    return [next(it) if t is not None and t.requires_grad else None for t in inputs]


def check_linear(x, w, b, dtype):
    """Values and gradients against float64 formulas of the same (rounded)
    inputs, within the dtype's bound on sums; ReLU's mask is the kernel's own
    where rounding decides a near-zero sign, as in test_fuzz."""
    out = RF.fused_linear_relu(x, w, b)
    eager = F.relu(F.linear(x.detach(), w.detach(), None if b is None else b.detach()))
    assert out.shape == eager.shape and out.dtype == eager.dtype
    vec = w.dim() == 1
    w2 = (w.unsqueeze(0) if vec else w).detach().double()
    b2 = None if b is None else b.detach().double().reshape(-1)
    xr = x.detach().double().reshape(math.prod(x.shape[:-1]), w2.shape[1])
    pre = xr @ w2.T + (b2 if b2 is not None else 0.0)
    mag = xr.abs() @ w2.abs().T + (b2.abs() if b2 is not None else 0.0)
    o2 = out.detach().reshape(pre.shape)
    active = ~(o2 <= 0)
    assert_within(o2, torch.where(active, pre, 0.0), mag, dtype, "output")
    if not (x.requires_grad and out.numel()):
        return
    g = torch.randn_like(out)
    gi, gw, gb = grads(out, (x, w, b), g)
    gm = torch.where(active, g.double().reshape(pre.shape), 0.0)
    gma = gm.abs()
    assert_within(gi, (gm @ w2).reshape(x.shape), (gma @ w2.abs()).reshape(x.shape), dtype, "grad_input")
    assert_within(gw, (gm.T @ xr).reshape(w.shape), (gma.T @ xr.abs()).reshape(w.shape), dtype, "grad_weight")
    if b is not None:
        assert_within(gb, gm.sum(0).reshape(b.shape), gma.sum(0).reshape(b.shape), dtype, "grad_bias")


def check_prelu(x, w, dtype):
    out = RF.dead_prelu(x, w)[0]
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    ref = F.prelu(x64, w64)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert_within(out, ref, ref.abs(), dtype, "output")
    if not (x.requires_grad and out.numel()):
        return
    g = torch.randn_like(out)
    gi, gw = grads(out, (x, w), g)
    rgi, rgw = torch.autograd.grad(ref, (x64, w64), g.double())
    assert_within(gi, rgi, rgi.abs(), dtype, "grad_input")
    if gw is None:
        return
    # grad_weight sums x * g over every element of a channel: bound by sum |x g|.
    mag = torch.autograd.grad(F.prelu(-x64.detach().abs(), w64), w64, g.double().abs())[0].abs()
    assert_within(gw, rgw, mag, dtype, "grad_weight")


@pytest.mark.parametrize("dtype", cases("nn.functional.linear"))
def test_linear_samples(dtype):
    samples = list(OPS["nn.functional.linear"].sample_inputs("cpu", dtype, requires_grad=dtype in FLOATS))
    assert samples
    for s in samples:
        x, w, b = linear_args(s)
        if dtype not in FLOATS:
            with pytest.raises(
                RuntimeError, match="relu_ext::fused_linear_relu: expected argument 'input' to have a floating-point dtype"
            ):
                RF.fused_linear_relu(x, w, b)
            continue
        check_linear(x, w, b, dtype)


@pytest.mark.parametrize("dtype", cases("nn.functional.prelu"))
def test_prelu_samples(dtype):
    samples = list(OPS["nn.functional.prelu"].sample_inputs("cpu", dtype, requires_grad=dtype in FLOATS))
    assert samples
    for s in samples:
        x, w = prelu_args(s)
        check_prelu(x, w, dtype)


def test_samples_cover_vector_weights():
    """The 1-D weight samples (output of shape (*)) are among those run."""
    shapes = [linear_args(s)[1].dim() for s in OPS["nn.functional.linear"].sample_inputs("cpu", torch.float64)]
    assert 1 in shapes and 2 in shapes


def test_vector_weight_with_bias_and_errors():
    x, w = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    b = torch.tensor(0.5, dtype=torch.float64)
    torch.testing.assert_close(RF.fused_linear_relu(x, w, b), F.relu(x @ w + b))
    assert RF.fused_linear_relu(torch.randn(3, dtype=torch.float64), w).shape == ()
    with pytest.raises(
        RuntimeError,
        match=r"relu_ext::fused_linear_relu: with a 1-D 'weight' \(in_features,\), expected 'bias' to have one element, but got shape \[2\]",
    ):
        RF.fused_linear_relu(x, w, torch.randn(2, dtype=torch.float64))
    scripted = torch.jit.script(RF.fused_linear_relu)
    torch.testing.assert_close(scripted(x, w, None), F.relu(x @ w))


def test_vector_weight_through_compile_and_export():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))

        def forward(self, x):
            return RF.fused_linear_relu(x, self.w)

    m, x = M(), torch.randn(3, 5, 4, dtype=torch.float64)
    expected = F.relu(x @ m.w.detach())
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), expected)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), expected)


@pytest.mark.parametrize("bias_shape", [(), (1,)], ids=["0-d", "one"])
def test_one_element_bias_broadcasts_like_f_linear(bias_shape):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(bias_shape, dtype=torch.float64, requires_grad=True)
    ours, eager = RF.fused_linear_relu(x, w, b), F.relu(F.linear(x, w, b))
    torch.testing.assert_close(ours, eager)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, (x, w, b), g), torch.autograd.grad(eager, (x, w, b), g))
