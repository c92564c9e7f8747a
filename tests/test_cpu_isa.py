"""The CPU loops are compiled for several x86 instruction sets (csrc/cpu/loops.h)
and chosen at run time, following ATEN_CPU_CAPABILITY. Every build must give
bitwise the same results: each one this CPU can run computes the same cases in
its own process, and the outputs are compared bit for bit (BLAS's products excepted)."""

import os
import subprocess
import sys

import pytest
import torch

from torch_relu_ext import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
            cases[f"linear/{dtype}/{rows}x{k}x{o}"] = (x, w, b, gy)
        for shape, cl in (
            ((3, 5), False),
            ((64, 300), False),
            ((8, 19, 7, 5), False),
            ((8, 19, 7, 5), True),
            ((4, 64, 9, 9), True),
            ((2, 3, 1000), False),
        ):
            mf = torch.channels_last if cl else torch.contiguous_format
            x = special(torch.randn(shape, generator=g).to(dtype)).contiguous(memory_format=mf)
            gy = special(torch.randn(shape, generator=g).to(dtype))
            for wn in (1, shape[1]):
                w = torch.rand(wn, generator=g).to(dtype)
                cases[f"prelu/{dtype}/{shape}/{cl}/{wn}"] = (x, w, gy)
    return cases


# Run in a child process per instruction set (the choice is made once per
# process): inputs from argv[1], outputs to argv[2].
COMPUTE = r"""
import sys, torch, torch_relu_ext
from torch_relu_ext import _C
ops = torch.ops.relu_ext
out = {"isa": _C.cpu_isa()}
for key, args in torch.load(sys.argv[1]).items():
    if key.startswith("linear/"):
        x, w, b, gy = args
        y, m = ops.fused_linear_relu_forward(x, w, b)
        grads = ops.fused_linear_relu_backward(gy, x, w, m, [True, True, True])
        out[key] = (y, m, ops.fused_linear_relu(x, w, b), *grads, ops.relu_mask_count(m, y))
    else:
        x, w, gy = args
        out[key] = (*ops.dead_prelu(x, w), *ops.dead_prelu_backward(gy, x, w, [True, True]))
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


def test_cpu_isa_reports_a_known_build():
    assert _C.cpu_isa() in ISAS


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86-64 Linux only")
def test_every_isa_build_gives_bitwise_identical_results(tmp_path):
    flags = cpu_flags()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    inputs = tmp_path / "inputs.pt"
    torch.save(make_inputs(), inputs)
    results = {}
    for isa in ISAS:
        path = tmp_path / f"{isa}.pt"
        proc = subprocess.run(
            [sys.executable, "-c", COMPUTE, str(inputs), str(path)],
            env=dict(env, ATEN_CPU_CAPABILITY=isa),
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
        results[res["isa"]] = res
    assert "default" in results
    base = results["default"]
    for isa, res in results.items():
        assert res.keys() == base.keys()
        for key in base:
            if key == "isa":
                continue
            for i, (a, b) in enumerate(zip(base[key], res[key])):
                assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), (isa, key, i)
                if key.startswith("linear/") and i in (3, 4):
                    # grad_input and grad_weight are BLAS products of our
                    # masked gradient: equal up to the products' rounding.
                    torch.testing.assert_close(a, b, equal_nan=True, msg=f"{isa}: {key} output {i}")
                else:
                    assert same_bits(a, b), f"{isa} differs from default: {key} output {i}"
