"""Which path and which kernels fused_linear_relu uses on this GPU, per dtype,
and how the cuBLASLt epilogue treats NaN and -0.0. Prints one line per case."""

import os
import warnings

import torch

import torch_relu_ext  # noqa: F401

ops = torch.ops.relu_ext
os.environ["TORCH_RELU_EXT_VERBOSE"] = "1"


def kernels(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.name[:90] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})


for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
    for bias in (True, False):
        for with_mask in (True, False):
            x = torch.randn(512, 256, dtype=dtype, device="cuda")
            w = torch.randn(384, 256, dtype=dtype, device="cuda")
            b = torch.randn(384, dtype=dtype, device="cuda") if bias else None
            fn = (lambda: ops.fused_linear_relu_forward(x, w, b)) if with_mask else (lambda: ops.fused_linear_relu(x, w, b))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                names = kernels(fn)
            why = "; ".join(str(c.message)[:160] for c in caught) or "cuBLASLt used"
            print(f"{dtype!s:15} bias={bias!s:5} mask={with_mask!s:5} | {why} | kernels: {names}")

# NaN / -0.0 through the epilogue (cuBLASLt path unless it declined above).
x = torch.zeros(4, 8, device="cuda")
x[1, 0] = float("nan")
w = torch.ones(256, 8, device="cuda")
b = torch.zeros(256, device="cuda")
b[0] = -0.0
b[1] = float("nan")
out, mask = ops.fused_linear_relu_forward(x, w, b)
act = ops.relu_mask_unpack(mask, [4, 256])
print("NaN row output:", out[1, :3].tolist(), "mask:", act[1, :3].tolist())
print("NaN bias column output:", out[0, 1].item(), "mask:", act[0, 1].item())
print("-0.0 output signbit:", torch.signbit(out[0, 0]).item(), "(eager relu(-0.0) keeps the sign: True)")

# Exact zeros and tiny values: which pre-activations set the mask bit.
x = torch.zeros(1, 8, device="cuda")
w = torch.ones(256, 8, device="cuda")
b = torch.zeros(256, device="cuda")
b[1], b[2], b[3] = -0.0, 1e-30, -1e-30
out, mask = ops.fused_linear_relu_forward(x, w, b)
act = ops.relu_mask_unpack(mask, [1, 256])
print(
    "pre-activation +0, -0, 1e-30, -1e-30 -> mask",
    act[0, :4].tolist(),
    "out",
    out[0, :4].tolist(),
    "(eager passes the gradient only for 1e-30)",
)
