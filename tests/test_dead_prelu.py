"""dead_prelu against F.prelu (same dtype: bitwise; float64 references), on
cpu and, where a GPU is visible, cuda."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, assert_within, cpu_and_cuda

from torch_relu_ext import functional as RF

ops = torch.ops.relu_ext


@pytest.fixture(params=cpu_and_cuda())
def device(request):
    return request.param


def channel_dims(x):
    """Dims reduced for per-channel statistics (all but dim 1)."""
    if x.dim() < 2:
        return list(range(x.dim()))
    return [d for d in range(x.dim()) if d != 1]


def channels(x):
    return x.shape[1] if x.dim() >= 2 else 1


def make(shape, dtype, layout, device="cpu"):
    kw = dict(dtype=dtype, device=device)
    if layout == "contiguous":
        return torch.randn(shape, **kw)
    if layout == "channels_last":
        mf = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        return torch.randn(shape, **kw).to(memory_format=mf)
    if layout == "transposed":
        return torch.randn(tuple(reversed(shape)), **kw).permute(*reversed(range(len(shape))))
    if layout == "sliced":
        return torch.randn(shape[:-1] + (2 * shape[-1],), **kw)[..., ::2]
    if layout == "expanded":
        return torch.randn((1,) + shape[1:], **kw).expand(shape)
    raise ValueError(layout)


CASES = [
    # (shape, layout)
    ((), "contiguous"),
    ((7,), "contiguous"),
    ((9,), "sliced"),
    ((0,), "contiguous"),
    ((5, 3), "contiguous"),
    ((5, 3), "transposed"),
    ((1, 1), "contiguous"),
    ((0, 4), "contiguous"),
    ((4, 0), "contiguous"),
    ((2, 3, 5), "contiguous"),
    ((2, 3, 5), "transposed"),
    ((2, 3, 4, 5), "contiguous"),
    ((2, 3, 4, 5), "channels_last"),
    ((2, 3, 4, 5), "sliced"),
    ((3, 4, 2, 5), "expanded"),
    ((2, 3, 2, 3, 4), "channels_last"),
    ((0, 3, 4, 5), "channels_last"),
    ((40000, 13), "contiguous"),  # many row chunks
    ((8, 7, 33, 35), "contiguous"),  # many flat chunks across channel runs
    ((8, 7, 33, 35), "channels_last"),
    ((2, 1, 300, 301), "contiguous"),  # one channel
    # Rows path: whole vectors of channels, counters in registers.
    ((37, 64), "contiguous"),
    ((6, 48, 5, 3), "channels_last"),
    ((9, 2100), "contiguous"),  # more channels than one counter group (1024), odd tail
    # Rows of several register groups of channels, over more than one chunk
    # of rows (~1 MiB): 25 vectors of 16 floats (groups of 8, 8, 8, 1), and
    # 256 channels (16-bit counters with AVX-512, groups with AVX2).
    ((1100, 400), "contiguous"),
    ((3, 256, 20, 20), "channels_last"),
    # 160..512 channels, a multiple of 32: 16-bit counters in registers (AVX-512).
    ((33, 160), "contiguous"),
    ((2, 512, 3, 7), "channels_last"),
]


def check(x, w):
    dtype = x.dtype
    out, count = RF.dead_prelu(x, w)
    ref = F.prelu(x, w)
    # Same dtype: the same element-wise formula, so bitwise equal (NaN too).
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert out.stride() == ref.stride() or out.numel() == 0
    # float64 reference of the formula.
    w64 = w.double()
    if w.numel() > 1 and x.dim() >= 2:
        w64 = w64.reshape([1, -1] + [1] * (x.dim() - 2))
    elif w.numel() == 1:
        w64 = w64.reshape(())
    x64 = x.double()
    exact = torch.where(x64 > 0, x64, w64 * x64)
    assert_within(out, exact, exact.abs() * 2 + x64.abs(), dtype, "output")
    # Active counts: strictly positive inputs per channel.
    assert count.dtype == torch.int64 and count.shape == (channels(x),)
    expect = (x > 0).sum(channel_dims(x)) if x.dim() >= 2 else (x > 0).sum().reshape(1)
    assert torch.equal(count, expect.reshape(-1))

    # Gradients against float64 formulas.
    xr = x.detach().clone().requires_grad_()
    wr = w.detach().clone().requires_grad_()
    y, _ = RF.dead_prelu(xr, wr)
    g = torch.randn_like(y)
    gi, gw = torch.autograd.grad(y, (xr, wr), g)
    # grad_input is element-wise: bitwise equal to eager in the same dtype.
    xe = x.detach().clone().requires_grad_()
    we = w.detach().clone().requires_grad_()
    gi_e, _ = torch.autograd.grad(F.prelu(xe, we), (xe, we), g)
    torch.testing.assert_close(gi, gi_e, rtol=0, atol=0, equal_nan=True)
    g64 = g.double()
    contrib = torch.where(x64 > 0, torch.zeros((), dtype=torch.float64), x64 * g64)
    if w.numel() == 1:
        ref_gw, mag = contrib.sum().reshape(w.shape), contrib.abs().sum().reshape(w.shape)
    else:
        dims = channel_dims(x)
        ref_gw, mag = contrib.sum(dims).reshape(w.shape), contrib.abs().sum(dims).reshape(w.shape)
    assert gw.shape == w.shape and gw.dtype == dtype
    assert_within(gw, ref_gw, mag, dtype, "grad_weight")


# Per-channel weights only where there is more than one channel (with one
# channel both weight forms are the same case).
WEIGHT_CASES = [
    (shape, layout, per_channel)
    for shape, layout in CASES
    for per_channel in (False, True)
    if not per_channel or (len(shape) >= 2 and shape[1] != 1)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,layout,per_channel", WEIGHT_CASES, ids=str)
def test_matches_prelu(device, dtype, shape, layout, per_channel):
    x = make(shape, dtype, layout, device=device)
    c = channels(x)
    n = c if per_channel else 1
    w = (torch.rand(n, dtype=torch.float32) * 0.5 - 0.1).to(dtype).to(device)
    check(x, w)


def test_large_and_vectorized(device):
    """Sizes that take CUDA's vectorized (16-byte) paths and many chunks."""
    for shape, mf in [
        ((8, 64, 56, 56), torch.contiguous_format),
        ((8, 64, 56, 56), torch.channels_last),
        ((4096, 1000), torch.contiguous_format),
        ((3, 5, 7, 9), torch.contiguous_format),
    ]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=mf)
            check(x, torch.rand(shape[1], dtype=dtype, device=device))


def test_zero_dim_weight(device):
    x = torch.randn(3, 4, device=device)
    check(x, torch.tensor(0.3, device=device))


def test_channels_last_is_not_copied(device):
    x = torch.randn(4, 6, 5, 7, device=device).to(memory_format=torch.channels_last)
    w = torch.rand(6, device=device)
    out, _ = RF.dead_prelu(x, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    xr = x.clone().requires_grad_()
    y, _ = RF.dead_prelu(xr, w)
    (gi,) = torch.autograd.grad(y, xr, torch.randn_like(y).to(memory_format=torch.channels_last))
    assert gi.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_inf_signed_zero(device, dtype):
    vals = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -1e-30, 2.0, -3.0]
    x = torch.tensor(vals * 3, dtype=dtype, device=device).reshape(3, 9).T.contiguous()  # (9, 3)
    for w in (
        torch.tensor([0.25, -0.5, 0.0], dtype=dtype, device=device),
        torch.tensor([float("nan"), float("inf"), -0.0], dtype=dtype, device=device),
    ):
        out, count = RF.dead_prelu(x, w)
        ref = F.prelu(x, w)
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
        # Signed zeros bit for bit.
        assert torch.equal(out.signbit(), ref.signbit())
        assert torch.equal(count, (x > 0).sum(0))
        xr = x.clone().requires_grad_()
        wr = w.clone().requires_grad_()
        xe = x.clone().requires_grad_()
        we = w.clone().requires_grad_()
        g = torch.randn(9, 3, dtype=dtype).to(device)
        a = torch.autograd.grad(RF.dead_prelu(xr, wr)[0], (xr, wr), g)
        e = torch.autograd.grad(F.prelu(xe, we), (xe, we), g)
        torch.testing.assert_close(a[0], e[0], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(a[1], e[1], equal_nan=True, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("shape", [(), (5,), (4, 3), (2, 3, 4), (3, 4, 5), (2, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar_w", "channel_w"])
def test_gradcheck_and_gradgradcheck(device, shape, per_channel):
    x = torch.randn(shape, dtype=torch.float64, device=device)
    # Keep inputs away from the kink at 0 where finite differences break.
    x = torch.where(x.abs() < 0.1, x.sign() * 0.1 + x, x).requires_grad_()
    n = channels(x) if per_channel else 1
    w = torch.rand(n, dtype=torch.float64, device=device, requires_grad=True)

    def fn(a, b):
        return RF.dead_prelu(a, b)[0]

    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_double_backward_matches_eager(device):
    x0 = torch.randn(6, 4, 3, dtype=torch.float64, device=device)
    w0 = torch.rand(4, dtype=torch.float64, device=device)
    res = []
    for fn in (lambda a, b: RF.dead_prelu(a, b)[0], F.prelu):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = fn(x, w)
        gx, gw = torch.autograd.grad((y * y).sum(), (x, w), create_graph=True)
        res.append(torch.autograd.grad(gx.pow(2).sum() + gw.sum(), (x, w), materialize_grads=True))
    for a, e in zip(*res):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_backward_op_output_mask(device):
    x = torch.randn(3, 4, 5, device=device)
    w = torch.rand(4, device=device)
    g = torch.randn_like(x)
    for sel in ([True, True], [True, False], [False, True], [False, False]):
        gi, gw = ops.dead_prelu_backward(g, x, w, sel)
        assert (gi is not None) == sel[0] and (gw is not None) == sel[1]


def test_counts_not_differentiable_and_inputs_unchanged(device):
    x = torch.randn(5, 3, device=device, requires_grad=True)
    w = torch.rand(3, device=device, requires_grad=True)
    xc, wc = x.detach().clone(), w.detach().clone()
    out, count = RF.dead_prelu(x, w)
    assert not count.requires_grad
    out.sum().backward()
    assert torch.equal(x.detach(), xc) and torch.equal(w.detach(), wc)
