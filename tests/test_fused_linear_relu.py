"""fused_linear_relu (and its mask operators) against torch.nn.functional
(float64 references), on every device: cpu, and cuda on both forward paths
(cuBLASLt's epilogue, and cuBLAS + our kernel) where a GPU is visible."""

import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, MAG_TOL, assert_within, gpu, mask_bytes

from torch_relu_ext import _C
from torch_relu_ext import functional as RF

ops = torch.ops.relu_ext
CUBLASLT_OFF = "TORCH_RELU_EXT_DISABLE_CUBLASLT"


@pytest.fixture(params=["cpu", pytest.param("cuda-cublaslt", marks=gpu), pytest.param("cuda-fallback", marks=gpu)])
def device(request, monkeypatch):
    """The device a test runs on; on cuda, each forward path in turn."""
    if request.param == "cpu":
        return "cpu"
    monkeypatch.setenv(CUBLASLT_OFF, "1" if request.param == "cuda-fallback" else "0")
    return "cuda"


def on_cublaslt(device):
    """Whether the CUDA forward may take cuBLASLt's epilogue (its semantics
    differ from eager's at exact zeros and for 16-bit NaN/Inf: docs/cuda.md)."""
    return device == "cuda" and os.environ.get(CUBLASLT_OFF, "0") == "0"


def make_input(lead, in_f, dtype, layout="contiguous", device="cpu"):
    """An input of shape (*lead, in_f) in the requested memory layout."""
    shape = tuple(lead) + (in_f,)
    kw = dict(dtype=dtype, device=device)
    if layout == "contiguous":
        return torch.randn(shape, **kw)
    if layout == "transposed":
        # Last dim not innermost: a transposed view.
        base = torch.randn(tuple(reversed(shape)), **kw)
        return base.permute(*reversed(range(len(shape))))
    if layout == "sliced":
        base = torch.randn(shape[:-1] + (2 * in_f,), **kw)
        return base[..., ::2]
    if layout == "expanded":
        if not lead:
            return torch.randn(shape, **kw)
        base = torch.randn((1,) * len(lead) + (in_f,), **kw)
        return base.expand(shape)
    raise ValueError(layout)


def reference(x, w, b):
    """Float64 pre-activation and its magnitude bound sum|x w| + |b|."""
    x64, w64 = x.double(), w.double()
    pre = x64 @ w64.T
    mag = x64.abs() @ w64.abs().T
    if b is not None:
        pre = pre + b.double()
        mag = mag + b.double().abs()
    return pre, mag


def check_forward_and_grads(x, w, b):
    dtype = x.dtype
    out_f = w.shape[0]
    pre, mag = reference(x, w, b)
    out = RF.fused_linear_relu(x, w, b)
    assert out.dtype == dtype and out.shape == x.shape[:-1] + (out_f,)
    assert_within(out, F.relu(pre), mag, dtype, "output")

    out2, mask = ops.fused_linear_relu_forward(x, w, b)
    # With and without the mask may run different GEMM kernels (cuBLASLt picks
    # per epilogue): both must be within the bound, not necessarily equal.
    assert_within(out2, F.relu(pre), mag, dtype, "output of fused_linear_relu_forward")
    rows = math.prod(x.shape[:-1])
    assert mask.dtype == torch.uint8 and mask.shape == (mask_bytes(rows, out_f, x.device),)
    active = ops.relu_mask_unpack(mask, list(out.shape))
    # The mask is "pre-activation not <= 0" (positive or NaN); near 0 the rounding of this dtype may
    # legitimately decide either way, so only clear cases are compared.
    clear = (pre.abs() > MAG_TOL[dtype] * mag) | pre.isnan()
    assert torch.equal(active[clear], (~(pre <= 0))[clear])
    # Bits past the last element are zero (CPU's compact layout; the CUDA
    # layout's padding is checked in test_cuda.py).
    n = out.numel()
    if n % 8 and x.device.type == "cpu":
        assert int(mask[-1]) >> (n % 8) == 0

    # Gradients: the float64 reference uses the kernel's own mask (checked
    # above) so that near-zero pre-activations do not flip the comparison.
    xr = x.detach().clone().requires_grad_()
    wr = w.detach().clone().requires_grad_()
    br = None if b is None else b.detach().clone().requires_grad_()
    y = RF.fused_linear_relu(xr, wr, br)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in (xr, wr, br) if t is not None], g)
    gm = torch.where(active, g.double(), 0.0).reshape(rows, out_f)
    x2 = x.double().reshape(rows, x.shape[-1])
    ref_gi = (gm @ w.double()).reshape(x.shape)
    ref_gw = gm.T @ x2
    mag_gi = (gm.abs() @ w.double().abs()).reshape(x.shape)
    mag_gw = gm.abs().T @ x2.abs()
    assert_within(grads[0], ref_gi, mag_gi, dtype, "grad_input")
    assert_within(grads[1], ref_gw, mag_gw, dtype, "grad_weight")
    if b is not None:
        assert_within(grads[2], gm.sum(0), gm.abs().sum(0), dtype, "grad_bias")
    for t, gr in zip((xr, wr, br), grads):
        assert gr.shape == t.shape and gr.dtype == dtype


SHAPES = [
    # (leading dims, in_features, out_features)
    ((), 7, 5),
    ((1,), 1, 1),
    ((3,), 13, 11),
    ((0,), 4, 3),
    ((5, 0), 4, 3),
    ((4,), 0, 3),
    ((2, 3), 17, 9),
    ((2, 3, 4), 6, 33),
    ((64,), 64, 64),
    ((37,), 130, 257),
    ((9000,), 16, 33),  # many row blocks: the parallel per-block path
    ((30000,), 3, 5),  # few blocks, odd width: the split epilogue path
    ((601,), 3, 4100),  # backward in 3 row blocks, the last one partial
    ((256,), 64, 128),  # CUDA: cuBLASLt-aligned sizes, vectorized mask-grad kernel
    ((1000,), 96, 200),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,in_f,out_f", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_functional(device, dtype, lead, in_f, out_f, bias):
    x = make_input(lead, in_f, dtype, device=device)
    w = (torch.randn(out_f, in_f, dtype=dtype) / max(1, in_f) ** 0.5).to(device)
    b = torch.randn(out_f, dtype=dtype).to(device) if bias else None
    check_forward_and_grads(x, w, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_strided_inputs(device, dtype, layout):
    x = make_input((6, 5), 19, dtype, layout, device=device)
    assert not x.is_contiguous()
    w = torch.randn(23, 19, dtype=dtype).to(device)
    b = torch.randn(23, dtype=dtype).to(device)
    check_forward_and_grads(x, w, b)
    # Non-contiguous weight and bias too.
    wt = torch.randn(19, 23, dtype=dtype).to(device).T
    b2 = torch.randn(46, dtype=dtype).to(device)[::2]
    check_forward_and_grads(x, wt, b2)


def test_float64_exactly_like_eager(device):
    x = torch.randn(33, 21, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(15, 21, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(15, dtype=torch.float64, device=device, requires_grad=True)
    y = RF.fused_linear_relu(x, w, b)
    r = F.relu(F.linear(x, w, b))
    torch.testing.assert_close(y, r, rtol=1e-13, atol=1e-13)
    g = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(r, (x, w, b), g)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def nan_inf_case(dtype, device="cpu", cublaslt=False, rows=16, in_f=8, out_f=6):
    """NaN, +-Inf and signed zeros flow exactly as in the eager composition.

    cublaslt=True checks the documented behaviour of CUDA's cuBLASLt epilogue
    instead: an exactly zero pre-activation passes the gradient (its mask bit
    is set where eager's threshold_backward blocks it), and in float16 and
    bfloat16 NaN/Inf outputs are not guaranteed to match eager's.
    """
    x = torch.randn(rows, in_f, dtype=dtype, device=device)
    x[2, 3] = float("nan")
    x[5, 1] = float("inf")
    x[7, 0] = -float("inf")
    w = torch.randn(out_f, in_f, dtype=dtype, device=device)
    b = torch.randn(out_f, dtype=dtype, device=device)
    b[4] = float("nan")
    w[1] = 0.0
    b[1] = -0.0  # pre-activation is exactly -0.0 or +0.0 on finite rows
    out = RF.fused_linear_relu(x, w, b)
    ref = F.relu(F.linear(x.double(), w.double(), b.double()))
    exact_nonfinite = not (cublaslt and dtype in (torch.float16, torch.bfloat16))
    if exact_nonfinite:
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out.isinf(), ref.isinf())
    finite = ref.isfinite().all(1)
    torch.testing.assert_close(out[finite].double(), ref[finite], rtol=0.05, atol=0.05)
    # Column 1 is ReLU(+-0) on finite rows: gradient blocked; on rows holding
    # NaN or +-Inf it is 0 * Inf = NaN: gradient passed (as in eager).
    _, mask = ops.fused_linear_relu_forward(x, w, b)
    active = ops.relu_mask_unpack(mask, [rows, out_f])
    odd_rows = [2, 5, 7]
    finite_rows = [r for r in range(rows) if r not in odd_rows]
    if cublaslt:
        assert active[finite_rows, 1].all(), f"cuBLASLt: exact zeros pass the gradient: {active[:, 1].tolist()}"
    else:
        assert not active[finite_rows, 1].any(), f"exact zeros must block the gradient: {active[:, 1].tolist()}"
    if exact_nonfinite:
        assert active[odd_rows, 1].all(), f"NaN (0 * Inf) must pass the gradient: {active[:, 1].tolist()}"
        # NaN pre-activations pass the gradient, as threshold_backward does.
        assert active[:, 4].all(), f"NaN bias column: {active[:, 4].tolist()}"
        assert active[2].all(), f"NaN input row: {active[2].tolist()}"
    # Gradients propagate NaN exactly as the eager composition does (with the
    # kernel's own mask where the cuBLASLt epilogue decides differently).
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = RF.fused_linear_relu(xr, wr, br)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (xr, wr, br), g)
    if cublaslt:
        _, mask64 = ops.fused_linear_relu_forward(xr.detach(), wr.detach(), br.detach())
        gm = torch.where(ops.relu_mask_unpack(mask64, [rows, out_f]), g, 0.0)
        expected = (gm @ wr.detach(), gm.T @ xr.detach(), gm.sum(0))
    else:
        xe, we, be = (t.detach().double().requires_grad_() for t in (x, w, b))
        expected = torch.autograd.grad(F.relu(F.linear(xe, we, be)), (xe, we, be), g)
    for a, r in zip(ours, expected):
        torch.testing.assert_close(a, r, equal_nan=True, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_inf_signed_zero(device, dtype):
    nan_inf_case(dtype, device=device, cublaslt=on_cublaslt(device))


# float32 products our own AVX-512 kernels take where this CPU runs them
# (_C.cpu_gemm() == "own-avx512"; ATen's elsewhere, and for fewer than 16
# rows or 8 outputs): the edges of their 8 x 48 register tiles (and the
# narrower tiles of a panel's last 1-32 columns), reductions deeper than one
# 256-deep block, more outputs than one 3072-wide block.
# ((20,), 40, 200): 3 row tiles, so with 2+ threads columns are split too.
OWN_GEMM_SHAPES = [
    ((16,), 1, 32),
    ((17,), 5, 49),
    ((5, 9), 300, 97),
    ((16,), 513, 3100),
    ((130,), 16, 48),
    ((20,), 40, 200),
    ((16,), 30, 8),
    ((33,), 7, 20),
]


@pytest.mark.parametrize("lead,in_f,out_f", OWN_GEMM_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced", "expanded"])
def test_own_float32_product(lead, in_f, out_f, layout):
    x = make_input(lead, in_f, torch.float32, layout)
    w = torch.randn(out_f, in_f) / in_f**0.5
    if layout == "transposed":
        w = (torch.randn(in_f, out_f) / in_f**0.5).T
    check_forward_and_grads(x, w, torch.randn(out_f))
    check_forward_and_grads(x, w, None)


def test_own_float32_product_nan_inf_signed_zero():
    nan_inf_case(torch.float32, rows=40, in_f=20, out_f=50)


@pytest.mark.parametrize("lead,in_f,out_f", [((20,), 40, 200), ((300,), 70, 130), ((16,), 513, 3100)], ids=str)
def test_float32_results_do_not_depend_on_thread_count(lead, in_f, out_f):
    """Forward, mask and all three gradients bitwise equal on 1, 2 and 7
    threads: our product splits rows, and columns when rows are few, without
    changing any element's order of summation. (Where ATen's products run
    instead, they are compared within rounding.)"""
    torch.manual_seed(5)
    x = torch.randn(*lead, in_f)
    w = torch.randn(out_f, in_f) / in_f**0.5
    b = torch.randn(out_f)
    g = torch.randn(*lead, out_f)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 7):
            torch.set_num_threads(n)
            out, mask = ops.fused_linear_relu_forward(x, w, b)
            results.append((out, mask, *ops.fused_linear_relu_backward(g, x, w, mask, [True, True, True])))
    finally:
        torch.set_num_threads(threads)
    own = _C.cpu_gemm() != "aten"
    for other in results[1:]:
        for i, (a, e) in enumerate(zip(results[0], other)):
            if own:
                assert torch.equal(a, e), f"output {i}"
            elif i in (0, 2, 3):  # ATen's products: within rounding (the mask
                # and grad_bias follow the products' signs near zero)
                torch.testing.assert_close(a, e)


def test_relu_of_negative_zero_matches_torch(device):
    # torch.relu(-0.0) is -0.0: reproduced bit for bit.
    x = torch.zeros(4, 1, device=device)
    w = torch.ones(3, 1, device=device)
    b = torch.tensor([-0.0, 0.0, -1.0], device=device)
    out = RF.fused_linear_relu(x, w, b)
    ref = F.relu(F.linear(x, w, b))
    assert torch.equal(out.signbit(), ref.signbit())


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck_and_gradgradcheck(device, bias):
    x = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True) if bias else None
    args = (x, w, b) if bias else (x, w)
    assert torch.autograd.gradcheck(RF.fused_linear_relu, args)
    assert torch.autograd.gradgradcheck(RF.fused_linear_relu, args)


def test_gradgradcheck_leading_dims(device):
    x = torch.randn(2, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(RF.fused_linear_relu, (x, w, b))


def test_gradient_penalty_matches_eager(device):
    # Double backward in a real use: an input-gradient penalty.
    def penalty(fn, x, w, b):
        y = fn(x, w, b)
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return (gx**2).sum()

    x0 = torch.randn(10, 7, dtype=torch.float64, device=device)
    w0 = torch.randn(5, 7, dtype=torch.float64, device=device)
    b0 = torch.randn(5, dtype=torch.float64, device=device)
    grads = []
    for fn in (RF.fused_linear_relu, lambda x, w, b: F.relu(F.linear(x, w, b))):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        p = penalty(fn, x, w, b)
        grads.append(torch.autograd.grad(p, (x, w, b), allow_unused=True, materialize_grads=True))
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_only_needed_gradients(device):
    x = torch.randn(8, 4, device=device)
    w = torch.randn(3, 4, device=device, requires_grad=True)
    b = torch.randn(3, device=device)
    y = RF.fused_linear_relu(x, w, b)
    (gw,) = torch.autograd.grad(y.sum(), w)
    pre = x @ w.detach().T + b
    torch.testing.assert_close(gw, ((pre > 0).float()).T @ x)


def test_inference_path_skips_mask_and_matches(device):
    x = torch.randn(50, 12, device=device)
    w = torch.randn(9, 12, device=device, requires_grad=True)
    with torch.no_grad():
        y = RF.fused_linear_relu(x, w)
    assert y.grad_fn is None
    torch.testing.assert_close(y, F.relu(F.linear(x, w.detach())))


def test_inputs_not_modified(device):
    x = torch.randn(20, 6, device=device, requires_grad=True)
    w = torch.randn(7, 6, device=device, requires_grad=True)
    b = torch.randn(7, device=device, requires_grad=True)
    copies = [t.detach().clone() for t in (x, w, b)]
    y = RF.fused_linear_relu(x, w, b)
    g = torch.randn_like(y)
    g_copy = g.clone()
    y.backward(g)
    for t, c in zip((x, w, b), copies):
        assert torch.equal(t.detach(), c)
    assert torch.equal(g, g_copy)


@pytest.mark.parametrize("lead", [(), (7,), (3, 5), (2, 0)], ids=str)
def test_backward_op_output_mask(device, lead):
    x = torch.randn(lead + (6,), device=device)
    w = torch.randn(4, 6, device=device)
    out, mask = ops.fused_linear_relu_forward(x, w, None)
    g = torch.randn_like(out)
    for sel in itertools.product([False, True], repeat=3):
        gi, gw, gb = ops.fused_linear_relu_backward(g, x, w, mask, list(sel))
        for flag, t, shape in zip(sel, (gi, gw, gb), (x.shape, w.shape, (4,))):
            if flag:
                assert t is not None and t.shape == shape
            else:
                assert t is None


def test_mask_count(device):
    """relu_mask_count: per output feature, the mask's set bits, i.e. the
    positive pre-activations (compared where the sign is clear of rounding)."""
    for rows, out_f in ((1, 1), (33, 130), (1000, 256)):
        x = torch.randn(rows, 16, device=device)
        w = torch.randn(out_f, 16, device=device)
        out, mask = ops.fused_linear_relu_forward(x, w, None)
        pre = x.double() @ w.double().T
        clear = (pre.abs() > 1e-4).all(0)
        counts = ops.relu_mask_count(mask, out)
        assert counts.dtype == torch.int64 and counts.shape == (out_f,)
        assert torch.equal(counts[clear], (pre > 0).sum(0)[clear])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_blocks_each_selection_bitwise(dtype):
    """Backward runs in row blocks (a block-sized masked gradient, reused):
    each output alone is bitwise what it is when all three are asked for, and
    repeated calls agree bitwise (block order fixed, thread-count independent)."""
    torch.manual_seed(3)
    x = torch.randn(601, 5, dtype=dtype)
    w = torch.randn(4100, 5, dtype=dtype)
    b = torch.randn(4100, dtype=dtype)
    out, mask = ops.fused_linear_relu_forward(x, w, b)
    g = torch.randn_like(out)
    full = ops.fused_linear_relu_backward(g, x, w, mask, [True, True, True])
    again = ops.fused_linear_relu_backward(g, x, w, mask, [True, True, True])
    for i in range(3):
        assert torch.equal(full[i], again[i])
        sel = [j == i for j in range(3)]
        alone = ops.fused_linear_relu_backward(g, x, w, mask, sel)
        assert torch.equal(alone[i], full[i]), f"output {i} alone differs"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.fused_linear_relu_backward(g, x, w, mask, [True, True, True])
    finally:
        torch.set_num_threads(threads)
    # grad_bias is reduced by our own fixed chunks: bitwise equal on any
    # thread count. The products are BLAS's, whose blocking may follow the
    # thread count: within the rounding bound of their sums (sums of 4100
    # terms cancel, so a relative tolerance on the result would not do).
    assert torch.equal(one[2], full[2])
    gm = torch.where(ops.relu_mask_unpack(mask, list(out.shape)), g, 0).double().abs()
    magnitude = (gm @ w.double().abs(), gm.T @ x.double().abs())
    for i in range(2):
        assert_within(one[i], full[i], magnitude[i], dtype, f"output {i}")
