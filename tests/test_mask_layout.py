"""The packed mask's size and the operator list are each written once per
language: the C++ formula (csrc/core/relu_mask.h), the Python one
(torch_relu_ext._registry: fake kernels, tests), the operator list read
from the dispatcher and its public/internal split (_registry.PUBLIC). These
tests check that every layer agrees."""

import math
import os
import re

import pytest
import torch
from helpers import ROOT, cpu_and_cuda, mask_bytes, operators
from torch._subclasses.fake_tensor import FakeTensorMode

import torch_relu_ext
from torch_relu_ext import _C, functional
from torch_relu_ext._registry import PUBLIC, internal_operators

ops = torch.ops.relu_ext
ROWS = [0, 1, 3, 7, 8, 9, 64, 1000]
FEATURES = [0, 1, 7, 8, 9, 127, 128, 129, 130, 256, 4100]


@pytest.mark.parametrize("padded", [False, True], ids=["cpu_layout", "cuda_layout"])
def test_python_formula_is_the_cpp_formula(padded):
    device = "cuda" if padded else "cpu"
    for rows in ROWS:
        for out_f in FEATURES:
            assert mask_bytes(rows, out_f, device) == _C.mask_bytes(rows, out_f, padded), (rows, out_f)


def test_cuda_rows_are_padded_to_128_bits():
    # 5 rows of 130 features: 256 bits per row on CUDA, 650 bits in all on CPU.
    assert mask_bytes(5, 130, "cuda") == 5 * 256 // 8
    assert mask_bytes(5, 130, "cpu") == math.ceil(5 * 130 / 8)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("lead,out_f", [((), 5), ((3,), 1), ((2, 5), 9), ((0,), 4), ((7,), 130), ((33,), 256)], ids=str)
def test_kernels_and_fake_kernels_agree(device, lead, out_f):
    x = torch.randn(*lead, 6, device=device)
    w = torch.randn(out_f, 6, device=device)
    rows = math.prod(lead)
    expected = mask_bytes(rows, out_f, device)
    out, mask = ops.fused_linear_relu_forward(x, w, None)
    assert mask.shape == (expected,)
    with FakeTensorMode() as mode:
        fx, fw = mode.from_tensor(x), mode.from_tensor(w)
        _, fake_mask = ops.fused_linear_relu_forward(fx, fw, None)
        assert fake_mask.shape == (expected,)
        fake_wrong = mode.from_tensor(torch.zeros(expected + 1, dtype=torch.uint8, device=device))
        with pytest.raises(RuntimeError, match=f"uint8 tensor of shape \\({expected},\\)"):
            ops.fused_linear_relu_backward(mode.from_tensor(out), fx, fw, fake_wrong, [True, True, True])
    # The C++ checks of the mask's consumers accept exactly this size.
    g = torch.ones_like(out)
    ops.fused_linear_relu_backward(g, x, w, mask, [True, True, True])
    assert ops.relu_mask_count(mask, out).shape == (out_f,)
    wrong = torch.zeros(expected + 1, dtype=torch.uint8, device=device)
    with pytest.raises(RuntimeError, match=f"uint8 tensor of shape \\({expected},\\)"):
        ops.fused_linear_relu_backward(g, x, w, wrong, [True, True, True])
    with pytest.raises(RuntimeError, match=f"uint8 tensor of shape \\({expected},\\)"):
        ops.relu_mask_count(wrong, out)


def test_operator_list_comes_from_the_dispatcher():
    names = operators()
    # The schemas of csrc/ops.cpp (public operators and internal ones).
    assert {"fused_linear_relu", "dead_prelu", "fused_linear_relu_forward", "dead_stats_update_"} <= set(names)
    for op in names:
        assert hasattr(ops, op), op
        qualified = f"relu_ext::{op}"
        # Every operator runs on the CPU and has a fake (Meta) kernel for
        # torch.compile / export: its own, or a composite one.
        assert torch._C._dispatch_has_computed_kernel_for_dispatch_key(qualified, "CPU"), op
        assert torch._C._dispatch_has_computed_kernel_for_dispatch_key(qualified, "Meta"), op


def header_functions():
    """Functions declared in include/torch_relu_ext/ops.h: (outside any
    `detail` namespace, inside one)."""
    with open(os.path.join(ROOT, "include", "torch_relu_ext", "ops.h")) as f:
        text = re.sub(r"//[^\n]*", "", f.read())
    public, detail, scopes = set(), set(), []
    for m in re.finditer(r"namespace\s+([\w:]+)\s*\{|\{|\}|\b(\w+)\s*\([^;{}]*\)\s*;", text):
        if m.group(1):
            scopes.append(m.group(1).split("::"))
        elif m.group(0) == "{":
            scopes.append([])
        elif m.group(0) == "}":
            scopes.pop()
        else:
            (detail if any("detail" in s for s in scopes) else public).add(m.group(2))
    return public, detail


def test_public_and_internal_operators_agree_everywhere():
    names = set(operators())
    internal = set(internal_operators())
    # Every registered operator is public or internal, never both, and the
    # public names are registered operators.
    assert set(PUBLIC) <= names and internal == names - set(PUBLIC)
    assert {"fused_linear_relu_backward", "dead_prelu_backward", "relu_mask_unpack", "dead_stats_update_"} <= internal
    # C++: the public section declares exactly the public operators; the
    # functions in torch_relu_ext::detail are internal operators.
    public_cpp, detail_cpp = header_functions()
    assert public_cpp == set(PUBLIC)
    assert detail_cpp and detail_cpp <= internal, detail_cpp - internal
    # Python: PUBLIC is functional.__all__; neither it nor the package
    # exports an internal operator.
    assert not [op for op in internal if hasattr(functional, op) or op in torch_relu_ext.__all__]


def test_design_doc_marks_each_operator_public_or_internal():
    # docs/design.md's operator table: one row per registered operator.
    with open(os.path.join(ROOT, "docs", "design.md")) as f:
        rows = dict(re.findall(r"^\| `(\w+)` \| (yes|internal) \|", f.read(), re.M))
    assert set(rows) == set(operators())
    assert {op for op, public in rows.items() if public == "yes"} == set(PUBLIC)
