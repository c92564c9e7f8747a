"""What only CUDA has: the build's CUDA kernels, the choice between the
cuBLASLt and fallback paths, the padded mask layout, streams, several devices,
and CPU/CUDA agreement. The operators' own tests run on cuda too
(test_fused_linear_relu.py, test_dead_prelu.py: parametrised over devices).

The build check runs everywhere nvcc is present (CI has nvcc and no GPU);
everything else needs a visible GPU and is skipped without one.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import gpu, mask_bytes, operators
from torch.utils.cpp_extension import CUDA_HOME

from torch_relu_ext import functional as RF

ops = torch.ops.relu_ext
CPU_ONLY = os.environ.get("TORCH_RELU_EXT_CPU_ONLY", "0") not in ("", "0")


@pytest.mark.skipif(CUDA_HOME is None or CPU_ONLY, reason="no nvcc on this machine (or a CPU-only build was asked for)")
@pytest.mark.parametrize("op", operators())
def test_cuda_kernels_registered(op):
    # nvcc is here, so the build must have compiled and registered a CUDA
    # kernel for every operator (its own, or a composite one): a silently
    # CPU-only build fails this, GPU or not.
    assert torch._C._dispatch_has_computed_kernel_for_dispatch_key(f"relu_ext::{op}", "CUDA")


@pytest.fixture(params=["cublaslt", "fallback"])
def path(request, monkeypatch):
    monkeypatch.setenv("TORCH_RELU_EXT_DISABLE_CUBLASLT", "1" if request.param == "fallback" else "0")
    return request.param


def kernel_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_cuda_path_is_the_one_asked_for(path, dtype):
    x = torch.randn(512, 256, dtype=dtype, device="cuda")
    w = torch.randn(384, 256, dtype=dtype, device="cuda")
    b = torch.randn(384, dtype=dtype, device="cuda")
    names = kernel_names(lambda: ops.fused_linear_relu_forward(x, w, b))
    used_fallback = any("bias_relu_mask_kernel" in n for n in names)
    assert used_fallback == (path == "fallback"), names


@gpu
def test_cuda_mask_layout_padded():
    rows, out_f = 5, 130
    x = torch.randn(rows, 8, device="cuda")
    w = torch.randn(out_f, 8, device="cuda")
    out, mask = ops.fused_linear_relu_forward(x, w, None)
    assert mask.shape == (mask_bytes(rows, out_f, "cuda"),) == (rows * 256 // 8,)
    bits = ((mask.cpu()[:, None].int() >> torch.arange(8)) & 1).reshape(rows, 256).bool()
    pre = (x.double() @ w.double().T).cpu()
    assert torch.equal(bits[:, :out_f], pre > 0)
    assert not bits[:, out_f:].any()  # padding bits are zero


@gpu
def test_cuda_non_default_stream():
    s = torch.cuda.Stream()
    x = torch.randn(300, 70, device="cuda")
    w = torch.randn(90, 70, device="cuda", requires_grad=True)
    b = torch.randn(90, device="cuda", requires_grad=True)
    xp = torch.randn(16, 32, 20, 20, device="cuda")
    wp = torch.rand(32, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        y = RF.fused_linear_relu(x, w, b)
        gw, gb = torch.autograd.grad(y.sum(), (w, b))
        out, count = RF.dead_prelu(xp, wp)
        (gwp,) = torch.autograd.grad(out.sum(), wp)
    s.synchronize()
    ref = F.relu(F.linear(x, w, b))
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(gb, (ref > 0).float().sum(0))
    assert torch.equal(count, (xp > 0).sum((0, 2, 3)))
    torch.testing.assert_close(gwp, torch.where(xp > 0, 0.0, xp).sum((0, 2, 3)), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_second_device():
    dev = torch.device("cuda:1")
    x = torch.randn(40, 30, device=dev)
    w = torch.randn(20, 30, device=dev)
    torch.testing.assert_close(RF.fused_linear_relu(x, w), F.relu(F.linear(x, w)))
    out, count = RF.dead_prelu(x, torch.rand(30, device=dev))
    assert out.device == dev and torch.equal(count, (x > 0).sum(0))


@gpu
def test_cuda_device_mix_error():
    with pytest.raises(RuntimeError, match="relu_ext::fused_linear_relu.*weight.*device"):
        RF.fused_linear_relu(torch.randn(3, 4, device="cuda"), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="relu_ext::dead_prelu.*weight.*device"):
        RF.dead_prelu(torch.randn(3, 4, device="cuda"), torch.rand(4))


@gpu
def test_cuda_module_statistics_match_cpu():
    from torch import nn

    from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

    torch.manual_seed(0)
    cpu = nn.Sequential(FusedLinearReLU(12, 130), DeadAwarePReLU(130))
    with torch.no_grad():
        cpu[0].bias[:5] = -100.0
    gpu_model = nn.Sequential(FusedLinearReLU(12, 130), DeadAwarePReLU(130)).cuda()
    gpu_model.load_state_dict(cpu.state_dict())
    for batch in (64, 33):
        x = torch.randn(batch, 12)
        cpu(x)
        gpu_model(x.cuda())
    for a, b in zip(cpu, gpu_model):
        torch.testing.assert_close(b.active_ema.cpu(), a.active_ema, rtol=1e-5, atol=1e-5)
        assert int(b.num_batches_tracked) == 2
    assert gpu_model[0].dead_mask()[:5].all()
