"""The CPU matrix product of fused_linear_relu (csrc/cpu/gemm): every backend
against the float64 reference, its choice, and its setting's errors.

Each backend is forced in this process with _C.set_cpu_gemm (the same values
as TORCH_RELU_EXT_CPU_GEMM); a backend that cannot run a product (dtype, CPU)
gives way to the auto choice, which _C.cpu_gemm_backend reports."""

import subprocess
import sys

import pytest
import torch
from helpers import child_env
from test_fused_linear_relu import check_forward_and_grads, make_input, nan_inf_case

from torch_relu_ext import _C

ops = torch.ops.relu_ext
BACKENDS = ["own", "onednn", "dnnl", "amx", "aten"]
DNAME = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@pytest.fixture(params=BACKENDS)
def backend(request):
    _C.set_cpu_gemm(request.param)
    yield request.param
    _C.set_cpu_gemm("auto")


def runs(backend, dtype, m=64, n=64, k=64):
    """Whether the forced backend really runs this product (else the auto choice does)."""
    return _C.cpu_gemm_backend("forward", DNAME[dtype], m, n, k) == backend


# Rows 1-16 (serving batches), the own kernel's tile edges (8 rows, 48/32/16
# columns, 256-deep reduction blocks), and shapes where oneDNN's ReLU post-op
# route is taken (many rows and columns, short reductions: see gemm.cpp).
SHAPES = [
    ((1,), 7, 5),
    ((2,), 33, 17),
    ((3,), 64, 64),
    ((7,), 13, 49),
    ((8,), 5, 8),
    ((9,), 257, 20),
    ((15,), 16, 97),
    ((16,), 300, 3100),
    ((2, 17), 40, 200),
    ((130,), 4, 130),
    ((256,), 13, 512),
    ((601,), 16, 4100),  # 3 row blocks of the pass after a library product, the last partial
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("lead,in_f,out_f", SHAPES, ids=str)
def test_every_backend_matches_float64(backend, dtype, lead, in_f, out_f):
    torch.manual_seed(in_f * 31 + out_f)
    x = make_input(lead, in_f, dtype)
    w = (torch.randn(out_f, in_f) / in_f**0.5).to(dtype)
    b = torch.randn(out_f, dtype=dtype)
    check_forward_and_grads(x, w, b)
    check_forward_and_grads(x, w, None)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_backend_odd_strides(backend, dtype, layout):
    torch.manual_seed(1)
    for lead, in_f, out_f in [((5,), 9, 50), ((64,), 8, 96)]:
        x = make_input(lead, in_f, dtype, layout)
        w = (torch.randn(in_f, out_f) / in_f**0.5).to(dtype).T  # a transposed weight
        check_forward_and_grads(x, w, torch.randn(out_f, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_every_backend_overlapping_rows(backend, dtype):
    """Inputs and weights whose rows overlap in memory (legal for F.linear):
    oneDNN cannot describe them, so they are copied first (a review found the
    'onednn' route raising here, under auto for float16 and large bfloat16)."""
    torch.manual_seed(2)
    for rows, in_f, out_f in [(9, 7, 50), (300, 16, 64)]:
        x = torch.randn(rows * 3 + in_f, dtype=dtype).as_strided((rows, in_f), (3, 1))
        w = (torch.randn(out_f * 2 + in_f) / in_f**0.5).to(dtype).as_strided((out_f, in_f), (2, 1))
        check_forward_and_grads(x, w, torch.randn(out_f, dtype=dtype))


def test_every_backend_keeps_negative_zero_of_float16_rounding(backend):
    """A negative float16 sum too small for float16 rounds to -0.0, which
    torch.relu keeps. oneDNN's ReLU post-op runs before the rounding and gave
    +0.0 (a review finding), so float16 never takes that route. (In float32
    and bfloat16 the post-op route maps an exact -0.0 to +0.0, as
    docs/cpu_gemm.md says.)"""
    m, n, k = 64, 64, 2  # a shape where the post-op route would pay
    x = torch.full((m, k), 1e-4, dtype=torch.float16)
    w = torch.full((n, k), -1e-4, dtype=torch.float16)
    eager = torch.relu(torch.nn.functional.linear(x, w))
    assert torch.signbit(eager).all()
    out, mask = ops.fused_linear_relu_forward(x, w, None)
    for y in (out, ops.fused_linear_relu(x, w, None)):
        assert torch.equal(y, eager) and torch.equal(torch.signbit(y), torch.signbit(eager))
    assert not ops.relu_mask_unpack(mask, [m, n]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rows,in_f,out_f", [(16, 8, 6), (40, 20, 50), (96, 4, 200)])
def test_every_backend_nan_inf_signed_zero(backend, dtype, rows, in_f, out_f):
    nan_inf_case(dtype, rows=rows, in_f=in_f, out_f=out_f)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_backend_keeps_nan_from_overflow(backend, dtype):
    """Finite inputs whose products overflow: a backend's accumulation may
    meet +Inf and -Inf (oneDNN's bfloat16 kernels do here) and make NaN.
    oneDNN's ReLU post-op would turn that NaN into 0 (and its mask bit into
    0), so its route must not be taken: the output keeps exactly the NaNs of
    the backend's bare product, and their mask bits are set."""
    rows, in_f, out_f = 256, 64, 256
    x = torch.full((rows, in_f), 3e38, dtype=dtype)
    w = torch.ones(out_f, in_f, dtype=dtype)
    w[3] = torch.tensor([10.0, -10.0] * (in_f // 2))
    w[5, : in_f // 2], w[5, in_f // 2 :] = 10.0, -10.0
    out, mask = ops.fused_linear_relu_forward(x, w, None)
    ran = {use: _C.cpu_gemm_backend(use, DNAME[dtype], rows, out_f, in_f) for use in ("forward", "forward_masked")}
    bare = {"onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), "aten": lambda: x @ w.T}
    if ran["forward_masked"] in bare:
        assert torch.equal(out.isnan(), bare[ran["forward_masked"]]().isnan())
    if ran["forward"] in bare:
        assert torch.equal(ops.fused_linear_relu(x, w, None).isnan(), bare[ran["forward"]]().isnan())
    if dtype == torch.bfloat16:
        # Columns 3 and 5 meet +Inf and -Inf partial sums: NaN on every
        # backend here (a ReLU post-op would have made them 0). float32's
        # fused multiply-adds keep +Inf instead.
        assert out[:, [3, 5]].isnan().all() and ops.fused_linear_relu(x, w, None)[:, [3, 5]].isnan().all()
    assert ops.relu_mask_unpack(mask, [rows, out_f])[out.isnan()].all()
    assert (out[~out.isnan()] >= 0).all()


def test_empty_and_one_dimensional(backend):
    for dtype in (torch.float32, torch.bfloat16):
        check_forward_and_grads(torch.randn(0, 4, dtype=dtype), torch.randn(3, 4, dtype=dtype), None)
        check_forward_and_grads(torch.randn(6, 0, dtype=dtype), torch.randn(3, 0, dtype=dtype), torch.randn(3, dtype=dtype))
        x, w = torch.randn(9, dtype=dtype), torch.randn(40, 9, dtype=dtype)
        check_forward_and_grads(x, w, torch.randn(40, dtype=dtype))


def test_forced_backend_runs_where_it_can(backend):
    # float64 is ATen's only; float32 runs on every backend where built.
    assert runs("aten", torch.float64) or _C.cpu_gemm_backend("forward", "float64", 64, 64, 64) == "aten"
    if backend == "aten":
        assert runs("aten", torch.float32) and runs("aten", torch.bfloat16)
    if backend == "onednn" and torch.backends.mkldnn.is_available():
        assert runs("onednn", torch.float32)
    if backend == "dnnl" and "dnnl: oneDNN" in _C.cpu_gemm():
        assert runs("dnnl", torch.float32) and _C.cpu_gemm_backend("grad_weight", "float32", 8, 8, 8) == "dnnl"
    if backend == "own" and _C.cpu_isa() == "avx512":
        assert runs("own", torch.float32) and _C.cpu_gemm_backend("grad_weight", "float32", 8, 8, 8) == "own"
    # Empty reductions are ATen's whatever the setting.
    assert _C.cpu_gemm_backend("forward", "float32", 4, 4, 0) == "aten"
    assert _C.cpu_gemm().startswith(backend + ": forward float32")


def test_auto_choice_is_reported():
    desc = _C.cpu_gemm()
    assert desc.startswith("auto: forward float32 2048x1024x1024 ")
    for use in ("forward", "forward_masked", "grad_input", "grad_weight"):
        for dname in DNAME.values():
            assert _C.cpu_gemm_backend(use, dname, 2048, 1024, 1024) in BACKENDS
    assert _C.cpu_gemm_backend("forward", "float64", 2048, 1024, 1024) == "aten"
    with pytest.raises(ValueError, match="use must be"):
        _C.cpu_gemm_backend("sideways", "float32", 1, 1, 1)


def test_setting_rejects_bad_values():
    for bad in ("mkl", "OWN", "onednn ", "1"):
        with pytest.raises(
            ValueError, match=f"TORCH_RELU_EXT_CPU_GEMM must be 'auto', 'own', 'onednn', 'dnnl', 'amx' or 'aten'.*got '{bad}'"
        ):
            _C.set_cpu_gemm(bad)
    assert _C.cpu_gemm().startswith("auto:")  # unchanged by the failed calls


@pytest.mark.parametrize("bad", ["blas", "oneDNN"])
def test_environment_variable_bad_value_is_a_clear_error(bad):
    code = "import torch, torch_relu_ext; torch_relu_ext.fused_linear_relu(torch.ones(2, 3), torch.ones(4, 3))"
    env = child_env(TORCH_RELU_EXT_CPU_GEMM=bad)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert (
        f"TORCH_RELU_EXT_CPU_GEMM must be 'auto', 'own', 'onednn', 'dnnl', 'amx' or 'aten' (the CPU matrix product of fused_linear_relu), got '{bad}'"
        in proc.stderr
    )


def results_on_threads(setting, fn, counts=(1, 2, 7)):
    """fn()'s tensors with the backend forced, on each thread count."""
    threads = torch.get_num_threads()
    _C.set_cpu_gemm(setting)
    try:
        res = []
        for n in counts:
            torch.set_num_threads(n)
            res.append(fn())
    finally:
        torch.set_num_threads(threads)
        _C.set_cpu_gemm("auto")
    return res


def assert_bitwise_equal_results(res):
    for other in res[1:]:
        for a, e in zip(res[0], other):
            assert torch.equal(a.view(torch.uint8), e.view(torch.uint8))


def test_own_results_do_not_depend_on_thread_count():
    """Our kernels reduce every element in the same order whatever the
    thread split (the forward epilogue and the masks too): bitwise equal on
    1, 2 and 7 threads. Other backends: see docs/cpu_gemm.md."""
    if _C.cpu_isa() != "avx512":
        pytest.skip("our kernels need the AVX-512 loops")
    torch.manual_seed(2)
    x, w, b = torch.randn(300, 70), torch.randn(130, 70), torch.randn(130)
    g = torch.randn(300, 130)

    def run():
        out, mask = ops.fused_linear_relu_forward(x, w, b)
        return (out, mask, ops.fused_linear_relu(x, w, b), *ops.fused_linear_relu_backward(g, x, w, mask, [True] * 3))

    assert_bitwise_equal_results(results_on_threads("own", run))


def amx_available():
    return "amx: yes" in _C.cpu_gemm()


def amx_forward(x, w, b):
    """(output, mask) of the training forward and the inference output, on the forced amx backend."""
    _C.set_cpu_gemm("amx")
    try:
        assert _C.cpu_gemm_backend("forward_masked", "bfloat16", x.shape[0], w.shape[0], w.shape[1]) == "amx"
        out, mask = ops.fused_linear_relu_forward(x, w, b)
        return out, mask, ops.fused_linear_relu(x, w, b)
    finally:
        _C.set_cpu_gemm("auto")


# The AMX forward's edges: 32-row tiles (direct reads of x need whole tiles
# and k a multiple of 32), 256-row blocks, 32-column panels in groups of 4,
# reductions of 256, odd k (the last pair padded), rows whose mask bits do
# not start on a byte (out_f not a multiple of 8).
AMX_SHAPES = [
    (1, 13, 5),
    (5, 1, 1),
    (40, 2, 1),
    (31, 64, 33),
    (32, 64, 32),
    (64, 96, 130),
    (257, 288, 129),
    (300, 479, 256),
    (512, 32, 1000),
    (300, 1100, 520),  # a packed weight over 1 MiB: 256-row blocks, the last one partial
]


@pytest.mark.parametrize("rows,in_f,out_f", AMX_SHAPES, ids=str)
def test_amx_forward_edges(rows, in_f, out_f):
    """Our AMX forward against float64 on its tile, block and panel edges,
    with NaN, Inf and signed zeros at tile corners: outputs within bfloat16's
    rounding, NaN and Inf exactly where float64 has them, and mask bits
    exactly those of its own rounded pre-activations (not <= 0)."""
    if not amx_available():
        pytest.skip("needs AMX bfloat16 tiles")
    import torch.nn.functional as F

    torch.manual_seed(rows * 7 + in_f)
    x = torch.randn(rows, in_f).bfloat16()
    w = (torch.randn(out_f, in_f) / in_f**0.5).bfloat16()
    b = torch.randn(out_f).bfloat16()
    for r, c, v in [(0, 0, float("nan")), (rows - 1, in_f - 1, float("inf")), (min(rows - 1, 31), 0, -float("inf"))]:
        x[r, c] = v
    if out_f > 34 and in_f > 2:  # non-finite weights and bias, away from the zero column
        w[33, 1], w[34, in_f - 1], b[out_f - 1] = float("nan"), float("inf"), -float("inf")
    w[min(out_f - 1, 32)] = 0.0
    b[min(out_f - 1, 32)] = -0.0
    out, mask, inf = amx_forward(x, w, b)
    pre = F.linear(x.double(), w.double(), b.double())
    ref = F.relu(pre)
    assert torch.equal(out.view(torch.int16), inf.view(torch.int16))
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    fin = ref.isfinite()
    torch.testing.assert_close(out[fin].double(), ref[fin], rtol=0.02, atol=0.02)
    # Exact zeros keep their sign (relu(-0.0) = -0.0) and block the gradient.
    zero_col = min(out_f - 1, 32)
    finite_rows = pre[:, zero_col].isfinite()
    assert (out[finite_rows, zero_col] == 0).all()
    bits = ops.relu_mask_unpack(mask, [rows, out_f])
    assert torch.equal(bits, (out > 0) | out.isnan())


def test_amx_rounds_like_eager():
    """Sums that are exact in float (small integers) are rounded once to
    bfloat16: bitwise eager's relu(F.linear) but for NaN payloads, including biases whose sums are
    float subnormals, which eager's oneDNN product flushes to zeros of their
    sign (c10::BFloat16's rounding, used by amx until session 8, kept them)."""
    if not amx_available():
        pytest.skip("needs AMX bfloat16 tiles")
    g = torch.Generator().manual_seed(3)
    rows, in_f, out_f = 96, 64, 160
    x = torch.randint(-9, 10, (rows, in_f), generator=g).bfloat16()
    w = torch.randint(-9, 10, (out_f, in_f), generator=g).bfloat16()
    b = torch.randint(-300, 300, (out_f,), generator=g).bfloat16()
    x[:8] = 0  # rows where the output is the bias alone
    b[:4] = torch.tensor([5e-39, -5e-39, 1e-45, -1e-40])  # bfloat16 subnormals
    b[4:6] = torch.tensor([float("nan"), float("inf")])
    eager = torch.relu(torch.nn.functional.linear(x, w, b))
    assert (eager[:8, :4] == 0).all()  # eager flushes the subnormal sums
    out, mask, inf = amx_forward(x, w, b)
    nan = eager.isnan()  # NaN payloads: eager keeps the bias's, amx writes 0x7FC0
    for y in (out, inf):
        assert torch.equal(y.isnan(), nan) and (y[nan].view(torch.int16) == 0x7FC0).all()
        assert torch.equal(y[~nan].view(torch.int16), eager[~nan].view(torch.int16))
    assert torch.equal(ops.relu_mask_unpack(mask, [rows, out_f]), (eager > 0) | nan)
    # A NaN sum (Inf - Inf) meeting a NaN bias with another payload: both
    # operators write 0x7FC0 (a review found their bits differing).
    x2 = torch.zeros(4, 64).bfloat16()
    x2[:, :2] = float("inf")
    w2 = torch.zeros(40, 64).bfloat16()
    w2[:, 0], w2[:, 1] = 1.0, -1.0
    b2 = torch.tensor([0x7FC1, -1] * 20, dtype=torch.int16).view(torch.bfloat16)  # NaNs: 0x7FC1, 0xFFFF
    y2, m2, i2 = amx_forward(x2, w2, b2)
    assert (y2.view(torch.int16) == 0x7FC0).all() and (i2.view(torch.int16) == 0x7FC0).all()
    assert ops.relu_mask_unpack(m2, [4, 40]).all()


def test_amx_follows_aten_cpu_capability():
    """Its epilogue is AVX-512 code: below avx512 it gives way, as `own`."""
    if not amx_available():
        pytest.skip("needs AMX bfloat16 tiles")
    code = (
        "import torch_relu_ext; from torch_relu_ext import _C; print(_C.cpu_gemm_backend('forward', 'bfloat16', 2048, 64, 256))"
    )
    for isa, want_amx in (("avx2", False), ("avx512", True)):
        env = child_env(ATEN_CPU_CAPABILITY=isa, TORCH_RELU_EXT_CPU_GEMM="amx")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (proc.stdout.strip() == "amx") == want_amx, (isa, proc.stdout)


def test_amx_results_do_not_depend_on_thread_count():
    """Each output element is reduced in the same order whatever the split
    of rows between threads: bitwise equal on 1, 2 and 7 threads."""
    if not amx_available():
        pytest.skip("needs AMX bfloat16 tiles")
    torch.manual_seed(3)
    # 32-row blocks (a small weight), and 256-row ones (a weight over 1 MiB).
    for in_f, out_f in [(300, 130), (1100, 520)]:
        x, w, b = torch.randn(600, in_f).bfloat16(), torch.randn(out_f, in_f).bfloat16(), torch.randn(out_f).bfloat16()
        res = results_on_threads("amx", lambda: (*ops.fused_linear_relu_forward(x, w, b), ops.fused_linear_relu(x, w, b)))
        assert_bitwise_equal_results(res)


def test_amx_choice():
    """Auto takes our AMX forward for small bfloat16 weights, and with the
    mask for products that write much (measured in docs/cpu_gemm.md), never
    for gradients; forced, it gives way to auto
    where it cannot run (gradients, other dtypes)."""
    if not amx_available():
        assert _C.cpu_gemm_backend("forward", "bfloat16", 2048, 64, 256) != "amx"
        pytest.skip("needs AMX bfloat16 tiles")
    assert _C.cpu_gemm_backend("forward", "bfloat16", 2048, 64, 256) == "amx"
    assert _C.cpu_gemm_backend("forward_masked", "bfloat16", 16, 512, 13) == "amx"
    assert _C.cpu_gemm_backend("forward", "bfloat16", 2048, 1024, 1024) != "amx"
    assert _C.cpu_gemm_backend("forward_masked", "bfloat16", 2048, 4096, 64) == "amx"
    assert _C.cpu_gemm_backend("forward_masked", "bfloat16", 8192, 1024, 1024) == "amx"
    assert _C.cpu_gemm_backend("forward_masked", "bfloat16", 2048, 1024, 479) != "amx"
    # Short reductions of weights up to 2^19: output-bound, amx from 64 rows (k <= 64) or 512 (k <= 128).
    assert _C.cpu_gemm_backend("forward", "bfloat16", 2048, 4096, 64) == "amx"
    assert _C.cpu_gemm_backend("forward", "bfloat16", 32, 4096, 64) != "amx"
    assert _C.cpu_gemm_backend("forward", "bfloat16", 512, 2048, 128) == "amx"
    assert _C.cpu_gemm_backend("forward", "bfloat16", 256, 4096, 128) != "amx"
    assert _C.cpu_gemm_backend("forward", "bfloat16", 2048, 4096, 256) != "amx"
    assert _C.cpu_gemm_backend("forward_masked", "bfloat16", 2048, 512, 13) == "amx"
    assert _C.cpu_gemm_backend("forward", "bfloat16", 2048, 512, 256) == "amx"  # a 2^17 weight
    assert _C.cpu_gemm_backend("forward", "bfloat16", 2048, 1024, 256) != "amx"  # 2^18
    assert _C.cpu_gemm_backend("forward_masked", "bfloat16", 8192, 512, 13) == "amx"
    assert _C.cpu_gemm_backend("forward_masked", "bfloat16", 2048, 4096, 4096) != "amx"
    # Few outputs, long reductions: most of a 32-column panel wasted.
    assert _C.cpu_gemm_backend("forward", "bfloat16", 1, 1, 65536) != "amx"
    assert _C.cpu_gemm_backend("forward", "bfloat16", 1, 8, 8192) != "amx"
    # A large output of a small weight: written whole rows at a time (32-row blocks).
    assert _C.cpu_gemm_backend("forward", "bfloat16", 8192, 1024, 64) == "amx"
    assert _C.cpu_gemm_backend("forward", "float32", 2048, 64, 256) != "amx"
    _C.set_cpu_gemm("amx")
    try:
        assert _C.cpu_gemm_backend("forward", "bfloat16", 2048, 1024, 1024) == "amx"
        for use in ("grad_input", "grad_weight"):
            assert _C.cpu_gemm_backend(use, "bfloat16", 2048, 64, 256) != "amx"
        assert _C.cpu_gemm_backend("forward", "float16", 64, 64, 64) != "amx"
    finally:
        _C.set_cpu_gemm("auto")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sixteen_bit_aten_route_rounds_once_like_eager(dtype):
    """ATen's 16-bit route puts the bias into the product (addmm), as eager's
    F.linear does: one rounding, so outputs and mask bits equal eager's bit
    for bit. Taken when forced, and under auto whenever an input holds NaN or
    Inf (oneDNN's AMX guard). Adding the bias after a rounded product flipped
    895 mask bits of this layer against float64 (pre-activations near 0)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x, w, b = torch.randn(2048, 479), torch.randn(1024, 479) / 479**0.5, torch.randn(1024)
    x[0, 0] = float("nan")
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    eager = F.relu(F.linear(x, w, b))
    for setting in ("aten", "auto"):
        _C.set_cpu_gemm(setting)
        try:
            out, mask = ops.fused_linear_relu_forward(x, w, b)
            inf = ops.fused_linear_relu(x, w, b)
        finally:
            _C.set_cpu_gemm("auto")
        assert torch.equal(out.nan_to_num(7.0), eager.nan_to_num(7.0)), setting
        assert torch.equal(inf.nan_to_num(7.0), eager.nan_to_num(7.0)), setting
        assert torch.equal(ops.relu_mask_unpack(mask, [2048, 1024]), ~(F.linear(x, w, b) <= 0)), setting


def dnnl_built():
    return "dnnl: oneDNN" in _C.cpu_gemm()


def test_dnnl_is_built_where_its_package_is_installed():
    """The build links oneDNN's library whenever the onednn-cpu-gomp package
    is installed (dev.sh installs it): never a silent build without it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("onednn-cpu-gomp")
    except PackageNotFoundError:
        pytest.skip("onednn-cpu-gomp is not installed: the dnnl backend is left out by design")
    assert "dnnl: oneDNN 3." in _C.cpu_gemm()  # the package's 2023.2.0 is oneDNN 3.2.0


DNNL_THREADS_CHILD = """
import sys, torch, torch_relu_ext
from torch_relu_ext import _C
ops = torch.ops.relu_ext
torch.set_num_threads(int(sys.argv[1]))
_C.set_cpu_gemm("dnnl")
res = []
for dtype in (torch.float32, torch.bfloat16):
    for m, k, n in ((2048, 13, 130), (300, 70, 130), (64, 1024, 1024), (4096, 64, 1024)):
        torch.manual_seed(m + k + n)
        x, w, b = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype), torch.randn(n).to(dtype)
        res += [*ops.fused_linear_relu_forward(x, w, b), ops.fused_linear_relu(x, w, b)]
torch.save(res, sys.argv[2])
"""


def test_dnnl_forward_does_not_depend_on_thread_count(tmp_path):
    """oneDNN's matmul, linked directly: the forward (float32 and bfloat16)
    was bitwise equal on 1, 2 and 7 threads on every shape tried (oneDNN
    documents no such guarantee; its grad_weight products, which split the
    reduction over rows between threads, do differ). Each thread count runs
    in its own process, so no primitive made for one count serves another."""
    if not dnnl_built():
        pytest.skip("built without oneDNN's library")
    results = []
    for n in (1, 2, 7):
        out = tmp_path / f"{n}.pt"
        proc = subprocess.run(
            [sys.executable, "-c", DNNL_THREADS_CHILD, str(n), str(out)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append(torch.load(out))
    for other in results[1:]:
        for a, e in zip(results[0], other):
            assert torch.equal(a, e)


DNNL_GRAD_CHILD = """
import sys, torch, torch_relu_ext
from torch_relu_ext import _C
ops = torch.ops.relu_ext
_C.set_cpu_gemm("dnnl")
torch.manual_seed(5)
x, w, b = torch.randn(2048, 13), torch.randn(130, 13), torch.randn(130)
g = torch.randn(2048, 130)
mask = ops.fused_linear_relu_forward(x, w, b)[1]
res = []
for n in map(int, sys.argv[2:]):
    torch.set_num_threads(n)
    res.append(ops.fused_linear_relu_backward(g, x, w, mask, [False, True, False])[1])
torch.save(res, sys.argv[1])
"""


def test_dnnl_primitive_follows_thread_count(tmp_path):
    """oneDNN fixes a primitive's thread count when it is made, so the count
    is part of our cache key: grad_weight on 2 threads after 1 thread must be
    what a process that only ever used 2 threads computes (with one primitive
    per layout it stayed single-threaded, and its result was the 1-thread one)."""
    if not dnnl_built():
        pytest.skip("built without oneDNN's library")
    out = {}
    for name, counts in (("switch", ["1", "2"]), ("fresh", ["2"])):
        path = tmp_path / f"{name}.pt"
        proc = subprocess.run(
            [sys.executable, "-c", DNNL_GRAD_CHILD, str(path), *counts],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[name] = torch.load(path)
    one, two = out["switch"]
    # oneDNN 3.2 splits this reduction by thread: 1 and 2 threads differ.
    assert not torch.equal(one, two)
    assert torch.equal(two, out["fresh"][0])


def test_dnnl_primitive_cache_and_threads():
    """Our cache of oneDNN primitives: more layouts than it holds (it starts
    again when full) and several threads calling at once, each result against
    the float64 reference."""
    import concurrent.futures

    import torch.nn.functional as F

    if not dnnl_built():
        pytest.skip("built without oneDNN's library")
    _C.set_cpu_gemm("dnnl")
    try:
        torch.manual_seed(4)
        w, b = torch.randn(24, 9), torch.randn(24)

        def check(rows):
            x = torch.randn(rows, 9)
            out, mask = ops.fused_linear_relu_forward(x, w, b)
            ref = F.relu(F.linear(x.double(), w.double(), b.double()))
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
            assert torch.equal(ops.relu_mask_unpack(mask, [rows, 24]), ref > 0)
            return rows

        assert list(map(check, range(1, 300))) == list(range(1, 300))
        # Each thread beyond its own 64 layouts while the shared cache (256)
        # starts again under the others.
        rows = [r % 97 + 1 + 100 * (r % 4) for r in range(400)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert sorted(pool.map(check, rows)) == sorted(rows)
    finally:
        _C.set_cpu_gemm("auto")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_inf_row_does_not_spread_to_finite_rows(backend, dtype):
    """oneDNN's AMX 16-bit kernels put NaN into finite rows that share a tile
    with a row holding Inf (36 of 135 such products on an Intel Xeon with
    AMX): those inputs take ATen's product, so a NaN in a finite row appears
    only where eager's F.linear gives it too."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    for m in (5, 16, 21, 33, 64):
        for k in (7, 13, 64):
            for n in (2, 17, 64):
                x = torch.randn(m, k).to(dtype)
                x[m // 2, 0] = float("inf")
                w = torch.randn(n, k).to(dtype)
                eager = F.relu(F.linear(x, w))
                # Inference and training forwards; the shapes cover both oneDNN
                # routes (input scans before the post-op, or a check of each
                # product block).
                for out in (torch.ops.relu_ext.fused_linear_relu(x, w), torch.ops.relu_ext.fused_linear_relu_forward(x, w)[0]):
                    assert not (out.isnan() & ~eager.isnan()).any(), (m, k, n)
    # Inf in a later row block: 8300x512 @ 512x256 checks each product block
    # (found after the first block's ReLU and mask were written); 600x100 @
    # 100x4096 scans the inputs first. Either way the whole product is redone
    # as eager's one product: ATen's product of the last rows alone put NaN
    # into finite row 528 here.
    for m, k, n, row in ((8300, 512, 256, 8250), (600, 100, 4096, 529)):
        x, w = torch.randn(m, k).to(dtype), (torch.randn(n, k) / k**0.5).to(dtype)
        x[row, 3] = float("inf")
        eager = F.relu(F.linear(x, w))
        assert not eager[:row].isnan().any()
        for out, mask in (
            (torch.ops.relu_ext.fused_linear_relu(x, w), None),
            torch.ops.relu_ext.fused_linear_relu_forward(x, w),
        ):
            assert torch.equal(out.isnan(), eager.isnan()), (m, k, n)
            torch.testing.assert_close(out[:row], eager[:row])
            if mask is not None:
                assert torch.equal(ops.relu_mask_unpack(mask, [m, n])[:row], eager[:row] > 0)
