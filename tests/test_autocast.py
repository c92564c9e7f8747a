"""Autocast: the operators cast like F.linear and F.prelu do."""

import pytest
import torch
import torch.nn.functional as F
from helpers import gpu
from torch import nn

from torch_relu_ext import functional as RF
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

CASES = [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=gpu), pytest.param("cuda", torch.bfloat16, marks=gpu)]


@pytest.mark.parametrize("device,dtype", CASES)
def test_functional_under_autocast_matches_eager(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(32, 24, device=device, requires_grad=True)
    w = torch.randn(16, 24, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True)
    slope = torch.rand(16, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        ours, count = RF.dead_prelu(RF.fused_linear_relu(x, w, b), slope)
        eager = F.prelu(F.relu(F.linear(x, w, b)), slope)
    assert ours.dtype == eager.dtype == dtype
    torch.testing.assert_close(ours, eager, rtol=2e-2, atol=2e-2)
    assert count.dtype == torch.int64
    g_ours = torch.autograd.grad(ours.float().sum(), (x, w, b, slope))
    g_eager = torch.autograd.grad(eager.float().sum(), (x, w, b, slope))
    for a, e in zip(g_ours, g_eager):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("device,dtype", CASES)
def test_modules_train_under_autocast(device, dtype):
    torch.manual_seed(1)
    model = nn.Sequential(FusedLinearReLU(8, 16), nn.Linear(16, 16), DeadAwarePReLU(16), nn.Linear(16, 2)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, enabled=device == "cuda" and dtype == torch.float16)
    x, y = torch.randn(64, 8, device=device), torch.randint(0, 2, (64,), device=device)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        with torch.autocast(device, dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert int(model[0].num_batches_tracked) == 20
