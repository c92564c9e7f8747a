"""Activation memory kept for backward, measured with saved_tensors_hooks."""

import pytest
import torch
import torch.nn.functional as F

from torch_relu_ext import functional as RF
from torch_relu_ext.utils import saved_tensor_bytes


def saved_activation_bytes(fn, params):
    saved_fn_result = []
    total = saved_tensor_bytes(lambda: saved_fn_result.append(fn()), params)
    return saved_fn_result[0], total


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows,in_f,out_f", [(256, 64, 512), (100, 30, 7), (3, 1, 1)])
def test_saved_bytes_bound(dtype, rows, in_f, out_f):
    x = torch.randn(rows, in_f, dtype=dtype, requires_grad=True)
    w = torch.randn(out_f, in_f, dtype=dtype, requires_grad=True)
    b = torch.randn(out_f, dtype=dtype, requires_grad=True)
    _, ours = saved_activation_bytes(lambda: RF.fused_linear_relu(x, w, b), [w, b])
    bound = x.numel() * x.element_size() + (rows * out_f + 7) // 8
    assert ours <= bound + 64, (ours, bound)
    # Eager keeps the whole output on top of the input.
    _, eager = saved_activation_bytes(lambda: F.relu(F.linear(x, w, b)), [w, b])
    out_bytes = rows * out_f * x.element_size()
    assert eager >= x.numel() * x.element_size() + out_bytes
    # The ReLU part alone: 1 bit instead of 8 * element_size bits.
    if rows * out_f % 8 == 0:
        assert (eager - x.numel() * x.element_size()) == (ours - x.numel() * x.element_size()) * 8 * x.element_size()


def test_mlp_activation_memory():
    # Three stacked layers: each keeps only its input and a 1-bit mask.
    torch.manual_seed(0)
    x = torch.randn(512, 256, requires_grad=True)
    ws = [torch.randn(256, 256, requires_grad=True) for _ in range(3)]

    def ours():
        h = x
        for w in ws:
            h = RF.fused_linear_relu(h, w)
        return h

    def eager():
        h = x
        for w in ws:
            h = F.relu(F.linear(h, w))
        return h

    _, a = saved_activation_bytes(ours, ws)
    _, e = saved_activation_bytes(eager, ws)
    assert a <= 3 * 512 * 256 * 4 + 3 * 512 * 256 // 8 + 256
    assert e >= 4 * 512 * 256 * 4 - 256  # inputs of all layers + the last output
