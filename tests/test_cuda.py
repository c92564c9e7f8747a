"""CUDA: the same comparisons as on the CPU, plus what only CUDA has (the
cuBLASLt and fallback paths, the padded mask layout, streams, devices).

The build check runs everywhere nvcc is present (CI has nvcc and no GPU);
everything else needs a visible GPU and is skipped without one.
"""

import os

import pytest
import test_dead_prelu as tdp
import test_fused_linear_relu as tfl
import torch
import torch.nn.functional as F
from helpers import mask_bytes
from torch.utils.cpp_extension import CUDA_HOME

from torch_relu_ext import functional as RF

ops = torch.ops.relu_ext
OPS = [
    "fused_linear_relu",
    "fused_linear_relu_forward",
    "fused_linear_relu_backward",
    "relu_mask_unpack",
    "dead_prelu",
    "dead_prelu_backward",
]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU_ONLY = os.environ.get("TORCH_RELU_EXT_CPU_ONLY", "0") not in ("", "0")


@pytest.mark.skipif(CUDA_HOME is None or CPU_ONLY, reason="no nvcc on this machine (or a CPU-only build was asked for)")
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_registered(op):
    # nvcc is here, so the build must have compiled and registered the CUDA
    # kernels: a silently CPU-only build fails this, GPU or not.
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"relu_ext::{op}", "CUDA")


@pytest.fixture(params=["cublaslt", "fallback"])
def path(request, monkeypatch):
    monkeypatch.setenv("TORCH_RELU_EXT_DISABLE_CUBLASLT", "1" if request.param == "fallback" else "0")
    return request.param


def kernel_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


SHAPES = [
    ((), 7, 5),
    ((3,), 13, 11),
    ((0,), 4, 3),
    ((4,), 0, 3),
    ((2, 3), 17, 9),
    ((37,), 130, 257),
    ((256,), 64, 128),
    ((1000,), 96, 200),
    ((2, 3, 4), 6, 33),
]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,in_f,out_f", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fused_linear_relu_cuda(path, dtype, lead, in_f, out_f, bias):
    x = tfl.make_input(lead, in_f, dtype, device="cuda")
    w = (torch.randn(out_f, in_f, dtype=dtype) / max(1, in_f) ** 0.5).cuda()
    b = torch.randn(out_f, dtype=dtype).cuda() if bias else None
    tfl.check_forward_and_grads(x, w, b)


@gpu
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded"])
def test_fused_linear_relu_cuda_strided(path, layout):
    x = tfl.make_input((6, 5), 19, torch.float32, layout, device="cuda")
    tfl.check_forward_and_grads(x, torch.randn(23, 19).cuda(), torch.randn(23).cuda())
    tfl.check_forward_and_grads(x, torch.randn(19, 23).cuda().T, torch.randn(46).cuda()[::2])


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
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_nan_inf(path, dtype):
    tfl.nan_inf_case(dtype, device="cuda", cublaslt=path == "cublaslt")


@gpu
def test_cuda_negative_zero(path):
    tfl.test_relu_of_negative_zero_matches_torch(device="cuda")


@gpu
def test_cuda_gradcheck(path):
    x = torch.randn(6, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(RF.fused_linear_relu, (x, w, b))
    assert torch.autograd.gradgradcheck(RF.fused_linear_relu, (x, w, b))
    xp = torch.randn(3, 4, 5, dtype=torch.float64, device="cuda")
    xp = torch.where(xp.abs() < 0.1, xp + 0.2, xp).requires_grad_()
    wp = torch.rand(4, dtype=torch.float64, device="cuda", requires_grad=True)
    fn = lambda a, c: RF.dead_prelu(a, c)[0]
    assert torch.autograd.gradcheck(fn, (xp, wp))
    assert torch.autograd.gradgradcheck(fn, (xp, wp))


PRELU_CASES = tdp.WEIGHT_CASES


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,layout,per_channel", PRELU_CASES, ids=str)
def test_dead_prelu_cuda(dtype, shape, layout, per_channel):
    x = tdp.make(shape, dtype, layout, device="cuda")
    n = tdp.channels(x) if per_channel else 1
    w = (torch.rand(n) * 0.5 - 0.1).to(dtype).cuda()
    tdp.check(x, w)


@gpu
def test_dead_prelu_cuda_large_and_vectorized():
    for shape, mf in [
        ((8, 64, 56, 56), torch.contiguous_format),
        ((8, 64, 56, 56), torch.channels_last),
        ((4096, 1000), torch.contiguous_format),
        ((3, 5, 7, 9), torch.contiguous_format),
    ]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, dtype=dtype, device="cuda").contiguous(memory_format=mf)
            tdp.check(x, torch.rand(shape[1], dtype=dtype, device="cuda"))


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


@gpu
def test_cuda_deterministic():
    x = torch.randn(4096, 256, device="cuda", requires_grad=True)
    w = torch.randn(512, 256, device="cuda", requires_grad=True)
    b = torch.randn(512, device="cuda", requires_grad=True)
    xp = torch.randn(32, 64, 28, 28, device="cuda", requires_grad=True)
    wp = torch.rand(64, device="cuda", requires_grad=True)
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
def test_cuda_mask_count(path):
    for rows, out_f in ((1, 1), (33, 130), (1000, 256)):
        x = torch.randn(rows, 16, device="cuda")
        w = torch.randn(out_f, 16, device="cuda")
        out, mask = ops.fused_linear_relu_forward(x, w, None)
        pre = x.double() @ w.double().T
        clear = (pre.abs() > 1e-4).all(0)
        counts = ops.relu_mask_count(mask, out)
        assert torch.equal(counts[clear], (pre > 0).sum(0)[clear])


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
