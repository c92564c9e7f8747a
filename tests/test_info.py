"""python -m torch_relu_ext: info and self-check."""

import subprocess
import sys

import torch
from helpers import child_env, operators

import torch_relu_ext
from torch_relu_ext._registry import PUBLIC


def test_info_command_runs_and_self_checks():
    env = child_env()
    proc = subprocess.run([sys.executable, "-m", "torch_relu_ext"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "torch-relu-ext 0.1.0" in out
    assert "self-check cpu: OK" in out
    desc = torch_relu_ext._C.cpu_gemm()
    assert f"CPU matrix product: {desc.split(':')[0]} (TORCH_RELU_EXT_CPU_GEMM=" in out
    # Every choice the description names, on a line of its own.
    for choice in desc.split(": ", 1)[1].split("; ")[0].split(", "):
        assert f"\n    {choice}\n" in out
    assert "forward_masked bfloat16 8192x64x1024" in desc
    # One row per operator the dispatcher knows.
    rows = {line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in operators()}
    assert rows == set(operators())
    # Two groups: the public operators under "public:", the rest under "internal".
    lines = out.splitlines()
    start, split = lines.index("public:"), next(i for i, line in enumerate(lines) if line.startswith("internal"))
    public_rows = {line.split()[0] for line in lines[start + 1 : split]}
    assert public_rows == set(PUBLIC)
    row = next(line for line in out.splitlines() if line.startswith("fused_linear_relu ")).split()
    assert row[1] == "yes" and row[3] == "yes"  # CPU and Autograd kernels
    cuda_built = torch._C._dispatch_has_kernel_for_dispatch_key("relu_ext::fused_linear_relu", "CUDA")
    assert row[2] == ("yes" if cuda_built else "-")
