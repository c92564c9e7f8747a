"""python -m torch_relu_ext: version, build, registered kernels, and a short
self-check against torch.nn.functional. Exit code 1 if the self-check fails."""

import sys
import time

import torch
import torch.nn.functional as F

import torch_relu_ext
from torch_relu_ext import _C
from torch_relu_ext._registry import PUBLIC, internal_operators

# Column title -> dispatch key.
KEYS = {
    "CPU": "CPU",
    "CUDA": "CUDA",
    "Autograd": "Autograd",
    "AutocastCPU": "AutocastCPU",
    "AutocastCUDA": "AutocastCUDA",
    "Meta": "Meta",
    "Composite": "CompositeExplicitAutograd",
}


def kernel_table():
    """Which dispatch keys have a kernel, per operator, read from the
    dispatcher: the public operators first, then the internal ones."""
    lines = [f"{'operator':<30}" + "".join(f"{k:>13}" for k in KEYS)]
    groups = (
        ("public:", PUBLIC),
        ("internal (torch.ops.relu_ext.*, C++ torch_relu_ext::detail; no stability promise):", internal_operators()),
    )
    for title, ops in groups:
        lines.append(title)
        for op in ops:
            row = [torch._C._dispatch_has_kernel_for_dispatch_key(f"relu_ext::{op}", k) for k in KEYS.values()]
            lines.append(f"{op:<30}" + "".join(f"{'yes' if r else '-':>13}" for r in row))
    return "\n".join(lines)


def _close(ours, ref, tol):
    """Within tol; bfloat16 within a few roundings of the largest magnitude."""
    scale = 1.0 + ref.detach().abs().max().item() if ref.dtype == torch.bfloat16 and ref.numel() else 1.0
    return torch.allclose(ours, ref, rtol=tol, atol=tol * scale)


def self_check(device, seconds=2.0):
    deadline = time.time() + seconds
    cases = 0
    g = torch.Generator().manual_seed(0)
    while time.time() < deadline or cases < 4:
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
            n, k, o = (int(v) for v in torch.randint(1, 40, (3,), generator=g))
            if dtype == torch.bfloat16:  # the bfloat16 products (oneDNN, ours on AMX)
                n, k, o = n * 8, k * 4, o * 4
            x = torch.randn(n, k, generator=g, dtype=dtype).to(device).requires_grad_()
            w = torch.randn(o, k, generator=g, dtype=dtype).to(device).requires_grad_()
            b = torch.randn(o, generator=g, dtype=dtype).to(device).requires_grad_()
            ours = torch_relu_ext.fused_linear_relu(x, w, b)
            ref = F.relu(F.linear(x, w, b))
            if not _close(ours, ref, tol):
                return False, f"fused_linear_relu forward differs ({device}, {dtype})"
            ga = torch.autograd.grad(ours.sum(), (x, w, b))
            gb = torch.autograd.grad(ref.sum(), (x, w, b))
            if not all(_close(a, e, tol) for a, e in zip(ga, gb)):
                return False, f"fused_linear_relu gradients differ ({device}, {dtype})"
            if dtype == torch.bfloat16:
                cases += 1
                continue
            xp = torch.randn(n, o, 3, generator=g, dtype=dtype).to(device)
            wp = torch.rand(o, generator=g, dtype=dtype).to(device)
            out, count = torch_relu_ext.dead_prelu(xp, wp)
            if not torch.equal(out, F.prelu(xp, wp)) or not torch.equal(count, (xp > 0).sum((0, 2))):
                return False, f"dead_prelu differs ({device}, {dtype})"
            cases += 1
    return True, f"{cases} random cases"


def cpu_gemm_lines(desc: str) -> str:
    """_C.cpu_gemm()'s one line ("setting: use dtype layer backend, ...; dnnl: ...;
    amx: ...") as a block: the setting, then one choice per line."""
    setting, _, rest = desc.partition(": ")
    choices, *libraries = rest.split("; ")
    lines = [f"CPU matrix product: {setting} (TORCH_RELU_EXT_CPU_GEMM=auto|own|onednn|dnnl|amx|aten)"]
    lines.append("  backend chosen per product (use dtype rows x in x out):")
    lines += [f"    {c}" for c in choices.split(", ")]
    lines += [f"  {lib}" for lib in libraries]
    return "\n".join(lines)


def main():
    print(f"torch-relu-ext {torch_relu_ext.__version__} ({_C.__file__})")
    print(
        f"torch {torch.__version__}, CUDA runtime {torch.version.cuda}, "
        f"GPU visible: {torch.cuda.is_available()}, threads: {torch.get_num_threads()}"
    )
    cuda_built = torch._C._dispatch_has_kernel_for_dispatch_key("relu_ext::fused_linear_relu", "CUDA")
    print(f"build: CUDA kernels {'compiled' if cuda_built else 'not compiled (CPU-only build)'}")
    print(f"CPU loops: {_C.cpu_isa()} (ATen CPU capability: {torch.backends.cpu.get_cpu_capability()})")
    try:
        print(cpu_gemm_lines(_C.cpu_gemm()))
    except RuntimeError as e:  # a bad TORCH_RELU_EXT_CPU_GEMM: say it in one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(kernel_table())
    print()
    ok = True
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cuda_built else [])
    for device in devices:
        passed, detail = self_check(device)
        ok &= passed
        print(f"self-check {device}: {'OK' if passed else 'FAILED'} ({detail})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
