"""Determinism, concurrency, leaks and 64-bit indexing."""

import gc
import os
import threading

import pytest
import torch
from helpers import cpu_and_cuda

from torch_relu_ext import functional as RF

ops = torch.ops.relu_ext


def run_once(x, w, b, xp, wp):
    xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
    y = RF.fused_linear_relu(xr, wr, br)
    g1 = torch.autograd.grad(y.square().sum(), (xr, wr, br))
    xq, wq = xp.detach().requires_grad_(), wp.detach().requires_grad_()
    out, count = RF.dead_prelu(xq, wq)
    g2 = torch.autograd.grad(out.square().sum(), (xq, wq))
    return [y.detach(), *g1, out.detach(), count, *g2]


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(3000, 70, generator=g),
        torch.randn(90, 70, generator=g),
        torch.randn(90, generator=g),
        torch.randn(16, 24, 30, 30, generator=g),
        torch.rand(24, generator=g),
    )


@pytest.mark.parametrize("deterministic", [False, True])
def test_bitwise_deterministic(deterministic):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        args = inputs()
        first = run_once(*args)
        for _ in range(3):
            for a, b in zip(first, run_once(*args)):
                assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_bitwise_deterministic_many_chunks(device):
    """Reductions over many chunks (bias, PReLU weight, counts) come out
    bitwise the same on every run: fixed chunks summed in order, no atomics."""
    x = torch.randn(4096, 256, device=device, requires_grad=True)
    w = torch.randn(512, 256, device=device, requires_grad=True)
    b = torch.randn(512, device=device, requires_grad=True)
    xp = torch.randn(32, 64, 28, 28, device=device, requires_grad=True)
    wp = torch.rand(64, device=device, requires_grad=True)
    runs = []
    for _ in range(3):
        y = RF.fused_linear_relu(x, w, b)
        g1 = torch.autograd.grad(y.square().sum(), (b,))
        out, count = RF.dead_prelu(xp, wp)
        g2 = torch.autograd.grad(out.square().sum(), (xp, wp))
        runs.append([y, *g1, out, count, *g2])
    for other in runs[1:]:
        for a, e in zip(runs[0], other):
            assert torch.equal(a, e)


def test_eight_python_threads():
    args = [inputs(seed) for seed in range(8)]
    expected = [run_once(*a) for a in args]
    errors = []

    def worker(i):
        try:
            for _ in range(5):
                for a, b in zip(expected[i], run_once(*args[i])):
                    if not torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-6, equal_nan=True):
                        errors.append(f"thread {i}: mismatch")
                        return
        except Exception as e:
            errors.append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_leak_over_thousands_of_calls():
    x = torch.randn(64, 32)
    w = torch.randn(48, 32, requires_grad=True)
    b = torch.randn(48, requires_grad=True)
    xp = torch.randn(8, 16, 6, 6, requires_grad=True)
    wp = torch.rand(16, requires_grad=True)

    def step():
        RF.fused_linear_relu(x, w, b).sum().backward()
        RF.dead_prelu(xp, wp)[0].sum().backward()

    for _ in range(500):  # warm-up: allocator caches, autograd pools
        step()
    gc.collect()
    start = rss_bytes()
    for _ in range(4000):
        step()
    gc.collect()
    growth = rss_bytes() - start
    assert growth < 8 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 4000 steps"


@pytest.mark.slow
def test_more_than_2_31_elements():
    # 2^31 + 1024 bf16 elements (about 11 GB of peak memory): 64-bit indexing
    # in both operators' kernels. Run with: pytest -m slow tests/test_reliability.py
    n = 2**31 + 1024
    x = torch.empty(n // 1024, 2, 512, dtype=torch.bfloat16)
    x.view(-1)[::4096] = 1.0
    x.view(-1)[1::4096] = -1.0
    x.view(-1)[-1] = 2.0
    out, count = RF.dead_prelu(x, torch.tensor([0.5, 0.25], dtype=torch.bfloat16))
    assert out.view(-1)[-1] == 2.0 and out.view(-1)[1] == -0.5
    # Positive: every 4096th element from 0 (ceil(n / 4096) of them) and the
    # last one. (Counting with (x > 0).sum() would itself need > 20 GB here.)
    assert int(count.sum()) == (n + 4095) // 4096 + 1
    del out, x
    # fused_linear_relu with more than 2^31 output elements (and mask bits).
    rows = 2**29 + 8
    x2 = torch.zeros(rows, 1, dtype=torch.bfloat16)
    x2[-1] = 1.0
    x2[0] = -1.0
    y, mask = ops.fused_linear_relu_forward(x2, torch.ones(4, 1, dtype=torch.bfloat16), None)
    assert y.numel() > 2**31 and mask.numel() == (y.numel() + 7) // 8
    assert bool((y[-1] == 1.0).all()) and bool((y[0] == 0).all())
    assert ops.relu_mask_count(mask, y).tolist() == [1, 1, 1, 1]
    del y, mask, x2
    # float32 with more than 2^31 output elements: our own product where it
    # runs (at least 16 rows and 8 outputs), ATen's elsewhere (about 9 GB).
    rows = 2**26 + 8
    x3 = torch.zeros(rows, 1)
    x3[-1] = 1.0
    x3[0] = -1.0
    y, mask = ops.fused_linear_relu_forward(x3, torch.ones(32, 1), None)
    assert y.numel() > 2**31 and mask.numel() == (y.numel() + 7) // 8
    assert bool((y[-1] == 1.0).all()) and bool((y[0] == 0).all()) and float(y[1:-1].max()) == 0.0  # ReLU outputs: >= 0
    assert ops.relu_mask_count(mask, y).tolist() == [1] * 32
