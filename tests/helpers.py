"""Shared test helpers: dtypes, devices, the GPU marker, tolerances."""

import os
import socket

import pytest
import torch

from torch_relu_ext._registry import mask_bytes, operators  # noqa: F401  (re-exported for the tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every dtype the operators accept.
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# Tests that need a visible CUDA GPU (they are collected everywhere and skip
# without one).
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cpu_and_cuda():
    """Devices to parametrise over: cpu, plus cuda (skipped without a GPU), as
    torchvision's tests do."""
    return ("cpu", pytest.param("cuda", marks=gpu))


def child_env(**extra):
    """Environment for a child Python process that imports this checkout's
    torch_relu_ext, plus `extra` variables."""
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


# Bound on |computed - exact| as a multiple of the magnitude bound
# sum_k |x_k w_k| (+|b|) of the exact value. float64/float32: a few units of
# roundoff times the reduction depth of a blocked BLAS product; bfloat16
# (8 significant bits, unit roundoff 2^-8 = 3.9e-3) and float16 (11 bits,
# 2^-11 = 4.9e-4): the forward rounds twice (the product, then bias + ReLU)
# and the inputs were rounded once, so 4 roundoffs plus accumulation slack.
MAG_TOL = {
    torch.float64: 1e-12,
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}

# Absolute floor: float16 results below 2^-14 are subnormal, spaced 2^-24
# apart whatever their magnitude; a few roundings there cost up to ~2^-23.
ABS_FLOOR = {
    torch.float64: 1e-300,
    torch.float32: 1e-37,
    torch.float16: 2.0**-22,
    torch.bfloat16: 1e-37,
}


def assert_within(actual, exact, magnitude, dtype, what=""):
    """|actual - exact| <= MAG_TOL[dtype] * magnitude elementwise, NaN where NaN."""
    actual = actual.double()
    exact = exact.double()
    assert actual.shape == exact.shape, (what, actual.shape, exact.shape)
    nan_a, nan_e = actual.isnan(), exact.isnan()
    assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
    fin = ~nan_e
    inf_e = exact.isinf() & fin
    assert torch.equal(actual[inf_e], exact[inf_e]), f"{what}: Inf differs"
    ok = fin & ~inf_e
    err = (actual[ok] - exact[ok]).abs()
    bound = MAG_TOL[dtype] * magnitude.double()[ok] + ABS_FLOOR[dtype]
    if err.numel():
        worst = (err / bound).max().item()
        assert worst <= 1.0, f"{what}: error {worst:.3g}x over the {dtype} bound"


def free_port():
    """A free TCP port on loopback for a torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
