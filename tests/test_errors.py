"""Every malformed call raises a clear error naming the operator and argument."""

import pytest
import torch

# Quantized tensors are deprecated in PyTorch but still exist: we reject them.
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")

from torch_relu_ext import functional as RF

ops = torch.ops.relu_ext
FLR = "relu_ext::fused_linear_relu"
DP = "relu_ext::dead_prelu"

x = torch.randn(4, 3)
w = torch.randn(5, 3)
b = torch.randn(5)
meta = torch.device("meta")

LINEAR_CASES = [
    # (call, words that must appear in the message)
    ("0-D input", lambda: RF.fused_linear_relu(torch.tensor(1.0), w, b), ["input", "0-D"]),
    ("1-D weight", lambda: RF.fused_linear_relu(x, torch.randn(3), b), ["weight", "1-D"]),
    ("3-D weight", lambda: RF.fused_linear_relu(x, torch.randn(5, 3, 1), b), ["weight", "3-D"]),
    ("in_features mismatch", lambda: RF.fused_linear_relu(torch.randn(4, 2), w, b), ["in_features", "weight.size(1) = 3"]),
    ("bias size", lambda: RF.fused_linear_relu(x, w, torch.randn(4)), ["bias", "(5,)"]),
    ("2-D bias", lambda: RF.fused_linear_relu(x, w, torch.randn(1, 5)), ["bias", "(5,)"]),
    ("int input", lambda: RF.fused_linear_relu(x.long(), w, b), ["input", "Long"]),
    ("bool weight", lambda: RF.fused_linear_relu(x, w.bool(), b), ["weight", "Bool"]),
    ("complex input", lambda: RF.fused_linear_relu(x.to(torch.complex64), w, b), ["input", "ComplexFloat"]),
    ("input/weight dtype mix", lambda: RF.fused_linear_relu(x.double(), w, b), ["weight", "same dtype", "Double"]),
    ("bias dtype mix", lambda: RF.fused_linear_relu(x, w, b.half()), ["bias", "same dtype"]),
    ("sparse input", lambda: RF.fused_linear_relu(x.to_sparse(), w, b), ["input", "strided"]),
    ("quantized input", lambda: RF.fused_linear_relu(torch.quantize_per_tensor(x, 0.1, 0, torch.qint8), w, b), ["input", "quantized"]),
    ("device mix", lambda: ops.fused_linear_relu_forward(x, w.to(meta), b), ["weight", "device"]),
    ("backward grad shape", lambda: ops.fused_linear_relu_backward(torch.randn(4, 4), x, w, torch.zeros(3, dtype=torch.uint8), [True] * 3), ["grad_output", "[4, 5]"]),
    ("backward mask dtype", lambda: ops.fused_linear_relu_backward(torch.randn(4, 5), x, w, torch.zeros(3), [True] * 3), ["mask", "uint8"]),
    ("backward mask size", lambda: ops.fused_linear_relu_backward(torch.randn(4, 5), x, w, torch.zeros(2, dtype=torch.uint8), [True] * 3), ["mask", "(3,)"]),
    ("unpack size", lambda: ops.relu_mask_unpack(torch.zeros(2, dtype=torch.uint8), [4, 5]), ["mask", "(3,)"]),
]

PRELU_CASES = [
    ("2-D weight", lambda: RF.dead_prelu(x, torch.rand(1, 3)), ["weight", "2-D"]),
    ("weight size", lambda: RF.dead_prelu(x, torch.rand(2)), ["weight", "1 element or one per channel", "got 2"]),
    ("1-D input, C weights", lambda: RF.dead_prelu(torch.randn(3), torch.rand(3)), ["weight", "got 3"]),
    ("int input", lambda: RF.dead_prelu(x.int(), torch.rand(3)), ["input", "Int"]),
    ("bool input", lambda: RF.dead_prelu(x > 0, torch.rand(3)), ["input", "Bool"]),
    ("complex input", lambda: RF.dead_prelu(x.to(torch.complex128), torch.rand(3)), ["input", "ComplexDouble"]),
    ("int weight", lambda: RF.dead_prelu(x, torch.ones(3, dtype=torch.long)), ["weight", "Long"]),
    ("dtype mix", lambda: RF.dead_prelu(x, torch.rand(3, dtype=torch.float64)), ["weight", "same dtype"]),
    ("sparse input", lambda: RF.dead_prelu(x.to_sparse(), torch.rand(3)), ["input", "strided"]),
    ("quantized input", lambda: RF.dead_prelu(torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), torch.rand(3)), ["input", "quantized"]),
    ("device mix", lambda: RF.dead_prelu(x, torch.rand(3, device=meta)), ["weight", "device"]),
    ("backward grad shape", lambda: ops.dead_prelu_backward(torch.randn(3, 4), x, torch.rand(3), [True, True]), ["grad_output", "[4, 3]"]),
    ("backward dtype mix", lambda: ops.dead_prelu_backward(torch.randn(4, 3).double(), x, torch.rand(3), [True, True]), ["grad_output", "same dtype"]),
]


@pytest.mark.parametrize("name,call,words", LINEAR_CASES, ids=[c[0] for c in LINEAR_CASES])
def test_linear_errors(name, call, words):
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    msg = str(info.value)
    assert "relu_ext::fused_linear_relu" in msg or "relu_ext::relu_mask_unpack" in msg, msg
    for word in words:
        assert word in msg, (word, msg)


@pytest.mark.parametrize("name,call,words", PRELU_CASES, ids=[c[0] for c in PRELU_CASES])
def test_prelu_errors(name, call, words):
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    msg = str(info.value)
    assert DP in msg, msg
    for word in words:
        assert word in msg, (word, msg)
