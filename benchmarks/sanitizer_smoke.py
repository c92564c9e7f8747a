"""Small calls of every CUDA kernel, for compute-sanitizer (memcheck): odd
sizes, both fused_linear_relu paths, every PReLU layout path, all dtypes."""

import os

import torch

import torch_relu_ext  # noqa: F401

ops = torch.ops.relu_ext


def run():
    for fallback in ("0", "1"):
        os.environ["TORCH_RELU_EXT_DISABLE_CUBLASLT"] = fallback
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            for rows, k, o in ((1, 1, 1), (7, 13, 33), (65, 40, 130), (3, 0, 5)):
                x = torch.randn(rows, k, dtype=dtype, device="cuda", requires_grad=True)
                w = torch.randn(o, k, dtype=dtype, device="cuda", requires_grad=True)
                b = torch.randn(o, dtype=dtype, device="cuda", requires_grad=True)
                y = ops.fused_linear_relu(x, w, b)
                y.sum().backward()
                with torch.no_grad():
                    ops.fused_linear_relu(x, w, None)
                _, mask = ops.fused_linear_relu_forward(x, w, b)
                ops.relu_mask_unpack(mask, [rows, o])
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for shape, mf in (
            ((5, 3), None),
            ((2, 3, 5, 7), None),
            ((2, 3, 5, 7), torch.channels_last),
            ((9,), None),
            ((4, 8, 16), None),
            ((2, 1, 3, 3), None),
        ):
            x = torch.randn(shape, dtype=dtype, device="cuda")
            if mf is not None:
                x = x.contiguous(memory_format=mf)
            x.requires_grad_()
            c = shape[1] if len(shape) >= 2 else 1
            for n in {1, c}:
                w = torch.rand(n, dtype=dtype, device="cuda", requires_grad=True)
                out, _count = ops.dead_prelu(x, w)
                out.sum().backward()
    torch.cuda.synchronize()
    print("sanitizer smoke: all calls done")


if __name__ == "__main__":
    run()
