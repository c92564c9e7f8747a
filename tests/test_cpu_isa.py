"""The CPU loops are compiled for several x86 instruction sets (csrc/cpu/dispatch.h)
and chosen at run time, following ATEN_CPU_CAPABILITY. Every build must give
bitwise the same results: each one this CPU can run computes the same cases in
its own process, and the outputs are compared bit for bit (matrix products
excepted: ATen's BLAS and our own AVX-512 product round differently)."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import child_env

from torch_relu_ext import _C

ISAS = ["default", "avx2", "avx512"]


def make_inputs():
    """Inputs are made once, here: random generators themselves follow the
    capability (vectorized Box-Muller), the children only compute."""
    g = torch.Generator().manual_seed(0)

    def special(t):
        # NaN, +-Inf, +-0 sprinkled in.
        flat = t.view(-1)
        vals = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=t.dtype)
        idx = torch.randint(0, flat.numel(), (min(flat.numel(), 40),), generator=g)
        flat[idx] = vals[torch.arange(idx.numel()) % 5]
        return t

    cases = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for rows, k, o, bias in ((1, 3, 1, True), (37, 5, 129, True), (600, 7, 4100, False), (2000, 16, 33, True)):
            # Small integers: every product sum is exact, so the GEMM (BLAS's,
            # or ATen's own, which follows the capability too) gives the same
            # pre-activations everywhere and only our epilogue decides the bits.
            # NaN and Inf come in through the bias (a product of specials has a
            # NaN sign that differs between GEMM builds).
            x = torch.randint(-4, 5, (rows, k), generator=g).to(dtype)
            w = torch.randint(-4, 5, (o, k), generator=g).to(dtype)
            b = special(torch.randn(o, generator=g).to(dtype)) if bias else None
            gy = special(torch.randn(rows, o, generator=g).to(dtype))
            cases[f"fused_linear_relu/{dtype}/{rows}x{k}x{o}"] = (x, w, b, gy)
        for shape, cl in (
            ((3, 5), False),
            ((64, 300), False),
            ((8, 19, 7, 5), False),
            ((8, 19, 7, 5), True),
            ((4, 64, 9, 9), True),
            ((2, 3, 1000), False),
            ((40, 400), False),
            ((70, 256), False),
            ((2, 192, 5, 5), True),
        ):
            mf = torch.channels_last if cl else torch.contiguous_format
            x = special(torch.randn(shape, generator=g).to(dtype)).contiguous(memory_format=mf)
            gy = special(torch.randn(shape, generator=g).to(dtype))
            for wn in (1, shape[1]):
                w = torch.rand(wn, generator=g).to(dtype)
                cases[f"dead_prelu/{dtype}/{shape}/{cl}/{wn}"] = (x, w, gy)
    return cases


# Run in a child process per instruction set (the choice is made once per
# process): inputs from argv[1], outputs to argv[2].
COMPUTE = r"""
import sys, torch, torch_relu_ext
from torch_relu_ext import _C
ops = torch.ops.relu_ext
out = {"isa": _C.cpu_isa(), "gemm": _C.cpu_gemm_backend("grad_input", "float32", 64, 64, 64)}
for key, args in torch.load(sys.argv[1]).items():
    if key.startswith("fused_linear_relu/"):
        x, w, b, gy = args
        y, m = ops.fused_linear_relu_forward(x, w, b)
        grads = ops.fused_linear_relu_backward(gy, x, w, m, [True, True, True])
        out[key] = (y, m, ops.fused_linear_relu(x, w, b), *grads, ops.relu_mask_count(m, y))
    elif key.startswith("dead_prelu/"):
        x, w, gy = args
        out[key] = (*ops.dead_prelu(x, w), *ops.dead_prelu_backward(gy, x, w, [True, True]))
    else:
        raise KeyError(f"no COMPUTE branch for case {key!r}")
torch.save(out, sys.argv[2])
"""


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def supported(isa, flags):
    if isa == "default":
        return True
    need = {"avx2", "fma", "bmi2", "f16c"}
    if isa == "avx512":
        need |= {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
    return need <= flags


def same_bits(a, b):
    """Bitwise equal (signed zeros and infinities included), NaN where the
    other has NaN. A NaN's sign and payload follow which operand the compiled
    code happens to read first, in ATen as here: not compared."""
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int)[~nan], b.contiguous().view(as_int)[~nan])


def assert_products_close(a, b, key, i, args, mask, msg):
    """Two float products of the same masked gradient (i = 3: grad_input =
    G @ W, i = 4: grad_weight = G.T @ X, G = mask ? grad : 0) differ by at
    most 2 n eps sum|terms| (the rounding bound of an n-term sum in any
    order); non-finite results must match exactly."""
    x, w, _, gy = args
    keep = torch.ops.relu_ext.relu_mask_unpack(mask, gy.shape)
    g_abs = torch.where(keep, gy.double().abs(), torch.zeros((), dtype=torch.float64))
    if i == 3:
        bound, n = g_abs @ w.double().abs(), gy.shape[1]
    else:
        bound, n = g_abs.t() @ x.double().abs(), gy.shape[0]
    eps = torch.finfo(a.dtype).eps
    finite = a.isfinite() & b.isfinite()
    assert same_bits(a[~finite], b[~finite]), msg
    diff = (a.double() - b.double()).abs()[finite]
    assert (diff <= 2 * n * eps * bound[finite] + torch.finfo(a.dtype).tiny).all(), msg


def test_every_operator_with_cpu_loops_has_a_case():
    """An operator with per-instruction-set loops (csrc/cpu/<op>_kernel.h)
    has inputs here under "<op>/", so the comparison below covers it."""
    cpu_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "cpu")
    with_loops = {f[: -len("_kernel.h")] for f in os.listdir(cpu_dir) if f.endswith("_kernel.h")}
    covered = {key.split("/")[0] for key in make_inputs()}
    assert {"fused_linear_relu", "dead_prelu"} <= with_loops
    assert with_loops <= covered, with_loops - covered


def test_cpu_isa_reports_a_known_build():
    assert _C.cpu_isa() in ISAS
    assert _C.cpu_gemm().split(":")[0] in ("auto", "own", "onednn", "dnnl", "amx", "aten")


def test_cpu_gemm_setting_is_checked():
    env = child_env(TORCH_RELU_EXT_CPU_GEMM="mkl")
    code = "import torch, torch_relu_ext; torch_relu_ext.fused_linear_relu(torch.ones(2, 3), torch.ones(4, 3))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "TORCH_RELU_EXT_CPU_GEMM must be 'auto', 'own', 'onednn', 'dnnl', 'amx' or 'aten'" in proc.stderr
    assert "got 'mkl'" in proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86-64 Linux only")
def test_every_isa_build_gives_bitwise_identical_results(tmp_path):
    flags = cpu_flags()
    inputs = tmp_path / "inputs.pt"
    inputs_by_key = make_inputs()
    torch.save(inputs_by_key, inputs)
    results = {}
    # Each build with its default float32 product, and the AVX-512 build with
    # both products (ours and ATen's) where this CPU runs it.
    for isa, gemm in [(isa, "auto") for isa in ISAS] + [("avx512", "own"), ("avx512", "aten")]:
        path = tmp_path / f"{isa}-{gemm}.pt"
        proc = subprocess.run(
            [sys.executable, "-c", COMPUTE, str(inputs), str(path)],
            env=child_env(ATEN_CPU_CAPABILITY=isa, TORCH_RELU_EXT_CPU_GEMM=gemm),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = torch.load(path)
        if supported(isa, flags):
            assert res["isa"] == isa, f"asked for {isa}, this CPU supports it, loops ran {res['isa']}"
        else:
            assert ISAS.index(res["isa"]) < ISAS.index(isa)
        # Our product needs the AVX-512 loops; "aten" always turns it off.
        if gemm == "aten" or (gemm == "own" and res["isa"] != "avx512"):
            assert res["gemm"] == "aten", (isa, gemm, res["gemm"])
        elif gemm == "own":
            assert res["gemm"] == "own", (isa, gemm, res["gemm"])
        results[f"{res['isa']}/{res['gemm']}"] = res
    assert "default/aten" in results
    base = results["default/aten"]
    for isa, res in results.items():
        assert res.keys() == base.keys()
        for key in base:
            if key in ("isa", "gemm"):
                continue
            for i, (a, b) in enumerate(zip(base[key], res[key])):
                assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), (isa, key, i)
                if key.startswith("fused_linear_relu/") and i in (3, 4):
                    # grad_input and grad_weight are matrix products of our
                    # masked gradient (ATen's BLAS in some builds, our own
                    # AVX-512 product in others): equal up to their rounding.
                    assert_products_close(a, b, key, i, inputs_by_key[key], base[key][1], f"{isa}: {key} output {i}")
                else:
                    assert same_bits(a, b), f"{isa} differs from default: {key} output {i}"
