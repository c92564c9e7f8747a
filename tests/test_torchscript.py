"""TorchScript: script and trace, save, load in a fresh process."""

import os
import subprocess
import sys

import torch
from helpers import ROOT, child_env
from models import Net, grads_of

from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU


def assert_same(a_list, b_list, tol=1e-6):
    assert len(a_list) == len(b_list)
    for a, b in zip(a_list, b_list):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_modules_are_scriptable():
    lin = torch.jit.script(FusedLinearReLU(5, 3))
    act = torch.jit.script(DeadAwarePReLU(3))
    x = torch.randn(4, 5)
    torch.testing.assert_close(
        act(lin(x)), torch.nn.functional.prelu(torch.relu(torch.nn.functional.linear(x, lin.weight, lin.bias)), act.weight)
    )


def test_script_and_trace_match_eager():
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(10, 7)
    eager = grads_of(model, x)
    scripted = torch.jit.script(model)
    graph = str(scripted.inlined_graph)
    assert "relu_ext::fused_linear_relu" in graph and "relu_ext::dead_prelu" in graph
    assert_same(grads_of(scripted, x), eager)
    traced = torch.jit.trace(model, (x,))
    assert "relu_ext::dead_prelu" in str(traced.inlined_graph)
    assert_same(grads_of(traced, x), eager)
    # A traced model also runs other batch sizes (no shape-specialised op).
    x2 = torch.randn(3, 7)
    assert_same(grads_of(traced, x2), grads_of(model, x2))


def test_save_and_load_in_fresh_process(tmp_path):
    torch.manual_seed(1)
    model = Net()
    x = torch.randn(6, 7)
    expected = grads_of(model, x)
    for kind in ("script", "trace"):
        path = tmp_path / f"{kind}.pt"
        out = tmp_path / f"{kind}_out.pt"
        m = torch.jit.script(model) if kind == "script" else torch.jit.trace(model, (x,))
        m.save(str(path))
        torch.save(x, tmp_path / "x.pt")
        code = (
            "import sys, torch, torch_relu_ext\n"
            "sys.path.insert(0, sys.argv[4])\n"
            "from models import grads_of\n"
            "m = torch.jit.load(sys.argv[1])\n"
            "torch.save(grads_of(m, torch.load(sys.argv[2])), sys.argv[3])\n"
        )
        env = child_env()
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path), str(tmp_path / "x.pt"), str(out), os.path.join(ROOT, "tests")],
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert_same(torch.load(out), expected)
