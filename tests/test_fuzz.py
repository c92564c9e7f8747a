"""Differential fuzzing against torch.nn.functional (hypothesis).

Shapes (0 and 1 sizes, primes, several leading dims), dtypes, strides
(transposed, sliced, expanded, channels-last), bias or not, PReLU weight of 1
or C, and values with +-0.0, NaN, +-Inf, denormals and large magnitudes.
At least 1000 cases per operator per run: profile "ci" (default, derandomized
so a failure reproduces; examples kept in .hypothesis/); HYPOTHESIS_PROFILE=long
for 20000 locally.
"""

import math
import os

import torch
import torch.nn.functional as F
from helpers import ABS_FLOOR, DTYPES, MAG_TOL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_relu_ext import functional as RF

ops = torch.ops.relu_ext
settings.register_profile(
    "ci",
    max_examples=1000,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SIZES = st.sampled_from([0, 1, 2, 3, 5, 7, 8, 13, 17])
# Largest magnitude per dtype such that products of two stay finite.
LARGE = {torch.float32: 1e15, torch.float64: 1e100, torch.bfloat16: 1e15, torch.float16: 100.0}
DENORMAL = {torch.float32: 1e-40, torch.float64: 1e-310, torch.bfloat16: 1e-40, torch.float16: 1e-6}


@st.composite
def values(draw, shape, dtype):
    """A tensor of `shape` with random normals and some special values."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    n = t.numel()
    if n:
        specials = [0.0, -0.0, math.nan, math.inf, -math.inf, DENORMAL[dtype], -DENORMAL[dtype], LARGE[dtype], -LARGE[dtype]]
        k = draw(st.integers(0, min(n, 4)))
        flat = t.view(-1)
        for _ in range(k):
            flat[draw(st.integers(0, n - 1))] = draw(st.sampled_from(specials))
    return t.to(dtype)


@st.composite
def layouts(draw, t):
    kind = draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"]))
    if kind == "transposed" and t.dim() >= 2:
        return t.mT.contiguous().mT
    if kind == "sliced" and t.dim() >= 1:
        big = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if kind == "expanded" and t.dim() >= 2 and t.shape[0] > 0:
        return t[:1].expand(t.shape)
    return t


def subnormal_part(t):
    """The subnormal elements of t (in float64), zero elsewhere."""
    t64 = t.double()
    sub = (t64 != 0) & (t64.abs() < torch.finfo(t.dtype).tiny)
    return torch.where(sub, t64, torch.zeros((), dtype=torch.float64))


def either_nan(actual, exact, flushed):
    """The reference with NaN where float64 has +-Inf from a product with a
    subnormal input (flushed != 0 there) and actual is NaN: a product that
    flushes the subnormal to zero gives Inf * 0 = NaN, and ATen's 16-bit
    products flush or not depending on the kernel they pick."""
    return torch.where(exact.isinf() & (flushed != 0) & actual.isnan(), float("nan"), exact)


def aten_nan(actual, exact, x2, w):
    """`exact` with NaN where `actual` is NaN and ATen's own 16-bit product
    x2 @ w^T of the same operands is NaN too, when an operand holds Inf or NaN. oneDNN's
    AMX bfloat16 kernels (Intel Xeon with AMX) put NaN into finite rows that
    share a tile with a row holding Inf (seen with torch 2.15; gone with
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16): an upstream fault our operator
    inherits from the product it calls, accepted only where eager's shows it."""
    if x2.isfinite().all() and w.isfinite().all():
        return exact
    theirs = torch.mm(x2.contiguous(), w.t()).reshape(actual.shape).isnan()
    return torch.where(actual.isnan() & theirs, float("nan"), exact)


def close_to_reference(actual, exact, magnitude, dtype, flushed=None):
    """Same NaN/Inf positions; finite values within the dtype's bound, plus
    `flushed` (the magnitude of the terms a subnormal input contributes) when
    the products may flush subnormal inputs to zero."""
    actual, exact = actual.double(), exact.double()
    assert torch.equal(actual.isnan(), exact.isnan()), "NaN positions differ"
    inf = exact.isinf()
    assert torch.equal(actual[inf], exact[inf]), "Inf values differ"
    fin = exact.isfinite() & magnitude.isfinite()
    bound = MAG_TOL[dtype] * magnitude.double() + ABS_FLOOR[dtype]
    if flushed is not None:
        bound = bound + flushed
    # A finite exact value at the top of the dtype's range may round to
    # +-Inf there (float16 sums of many terms): Inf of the exact value's sign.
    overflow = fin & actual.isinf() & (exact.abs() + bound >= torch.finfo(dtype).max)
    assert torch.equal(actual[overflow].sign(), exact[overflow].sign()), "overflow to the wrong sign"
    fin = fin & ~overflow
    err = (actual[fin] - exact[fin]).abs()
    assert (err <= bound[fin]).all(), f"max error/bound {(err / bound[fin]).max():.3g}"


@given(data=st.data())
def test_fuzz_fused_linear_relu(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    lead = tuple(data.draw(st.lists(SIZES, max_size=3)))
    in_f, out_f = data.draw(SIZES), data.draw(SIZES.filter(lambda s: s > 0))
    x = data.draw(layouts(data.draw(values(lead + (in_f,), dtype))))
    w = data.draw(layouts(data.draw(values((out_f, in_f), dtype))))
    b = data.draw(values((out_f,), dtype)) if data.draw(st.booleans()) else None
    out, mask = ops.fused_linear_relu_forward(x, w, b)
    x64, w64 = x.double(), w.double()
    pre = x64 @ w64.T + (b.double() if b is not None else 0.0)
    mag = x64.abs() @ w64.abs().T + (b.double().abs() if b is not None else 0.0)
    half = dtype in (torch.float16, torch.bfloat16)

    # The 16-bit products are ATen's (oneDNN's or MKL's on x86), which may
    # flush subnormal inputs to zero depending on the kernel they pick: a
    # subnormal's terms may be lost (bounded by `flushed`), and a subnormal
    # times Inf may be NaN where float64 has Inf (either_nan).
    def flushed(a, b, shape):  # terms of a @ b that involve a subnormal input
        if not half:
            return None
        return (subnormal_part(a).abs() @ b.double().abs() + a.double().abs() @ subnormal_part(b).abs()).reshape(shape)

    fl_out = flushed(x.reshape(math.prod(lead), in_f), w.T, mag.shape)
    if half:
        pre = either_nan(out, pre, fl_out)
        pre = aten_nan(out, pre, x.reshape(math.prod(lead), in_f), w)

    # Where rounding decides the sign of a near-zero pre-activation, the
    # reference takes the kernel's decision (the mask) for ReLU.
    active = ops.relu_mask_unpack(mask, list(out.shape))
    close_to_reference(
        out,
        torch.where(active, pre, torch.where(pre.isnan(), pre, 0.0)),
        mag,
        dtype,
        fl_out,
    )
    # Clear signs only: not within rounding of zero, and not so small that
    # the dtype's products underflow to zero (products of subnormals).
    # A product that flushes subnormal inputs may lose their terms (fl_out).
    slack = fl_out if fl_out is not None else 0.0
    clear = (pre.abs() > MAG_TOL[dtype] * mag + ABS_FLOOR[dtype] + slack) | pre.isnan()
    assert torch.equal(active[clear], (~(pre <= 0))[clear])
    assert torch.equal(RF.fused_linear_relu(x, w, b).isnan(), out.isnan())
    # Gradients against the float64 formulas with the kernel's mask.
    xr = x.detach().requires_grad_()
    wr = w.detach().requires_grad_()
    br = b.detach().requires_grad_() if b is not None else None
    y = RF.fused_linear_relu(xr, wr, br)
    g = data.draw(values(tuple(y.shape), dtype))
    grads = torch.autograd.grad(y, [t for t in (xr, wr, br) if t is not None], g)
    rows = math.prod(lead)
    gm = torch.where(active, g.double(), 0.0).reshape(rows, out_f)
    x2 = x64.reshape(rows, in_f)
    ref_gi, ref_gw = (gm @ w64).reshape(x.shape), gm.T @ x2
    gm_in, w_in, x_in = gm.to(dtype), w.reshape(out_f, in_f), x.reshape(rows, in_f)  # what the products read
    fl_gi, fl_gw = flushed(gm_in, w_in, x.shape), flushed(gm_in.T, x_in, ref_gw.shape)
    if half:
        ref_gi, ref_gw = either_nan(grads[0], ref_gi, fl_gi), either_nan(grads[1], ref_gw, fl_gw)
        # The gradient products are ATen's too (gm @ W and gm^T @ x).
        ref_gi = aten_nan(grads[0], ref_gi, gm_in, w_in.T)
        ref_gw = aten_nan(grads[1], ref_gw, gm_in.T, x_in.T)
    mag_gi = (gm.abs() @ w64.abs()).reshape(x.shape)
    close_to_reference(grads[0], ref_gi, mag_gi, dtype, fl_gi)
    close_to_reference(grads[1], ref_gw, gm.abs().T @ x2.abs(), dtype, fl_gw)
    if b is not None:
        close_to_reference(grads[2], gm.sum(0), gm.abs().sum(0), dtype)


@given(data=st.data())
def test_fuzz_dead_prelu(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    shape = tuple(data.draw(st.lists(SIZES, max_size=5)))
    x = data.draw(values(shape, dtype))
    if x.dim() in (4, 5) and data.draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    else:
        x = data.draw(layouts(x))
    c = x.shape[1] if x.dim() >= 2 else 1
    per_channel = c != 1 and data.draw(st.booleans())
    w = data.draw(values((c if per_channel else 1,), dtype))
    out, count = RF.dead_prelu(x, w)
    ref = F.prelu(x, w)
    # Element-wise in the same dtype: bit for bit, signed zeros too. The sign
    # of a NaN is compared in float32/float64; for the 16-bit types eager's
    # vectorized kernels give a NaN the product's sign while ours keeps the
    # NaN operand's (IEEE leaves it unspecified).
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(out.signbit(), ref.signbit())
    else:
        keep = ~ref.isnan()
        assert torch.equal(out.signbit()[keep], ref.signbit()[keep])
    dims = [d for d in range(x.dim()) if d != 1] if x.dim() >= 2 else list(range(x.dim()))
    expect = (x > 0).sum(dims).reshape(-1) if x.dim() >= 2 else (x > 0).sum().reshape(1)
    assert torch.equal(count, expect)
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    xe, we = x.detach().requires_grad_(), w.detach().requires_grad_()
    g = data.draw(values(shape, dtype))
    gi, gw = torch.autograd.grad(RF.dead_prelu(xr, wr)[0], (xr, wr), g)
    gi_e, gw_e = torch.autograd.grad(F.prelu(xe, we), (xe, we), g)
    torch.testing.assert_close(gi, gi_e, rtol=0, atol=0, equal_nan=True)
    keep = ~gi_e.isnan() | torch.tensor(dtype in (torch.float32, torch.float64))
    assert torch.equal(gi.signbit()[keep], gi_e.signbit()[keep])
    # grad_weight is a sum: against the float64 formula.
    x64, g64 = x.double(), g.double()
    term = torch.where(x64 > 0, torch.zeros((), dtype=torch.float64), x64 * g64)
    if per_channel:
        exact, mag = term.sum(dims).reshape(w.shape), term.abs().sum(dims).reshape(w.shape)
    else:
        exact, mag = term.sum().reshape(w.shape), term.abs().sum().reshape(w.shape)
    close_to_reference(gw, exact, mag, dtype)
