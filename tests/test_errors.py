"""Every malformed call raises a clear error naming the operator and argument."""

from typing import Optional

import pytest
import torch

from torch_relu_ext import functional as RF

# Quantized tensors are deprecated in PyTorch but still exist: we reject them.
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")

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
    ("1-D weight, bias of 5", lambda: RF.fused_linear_relu(x, torch.randn(3), b), ["weight", "1-D", "bias", "one element"]),
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
    (
        "quantized input",
        lambda: RF.fused_linear_relu(torch.quantize_per_tensor(x, 0.1, 0, torch.qint8), w, b),
        ["input", "quantized"],
    ),
    ("device mix", lambda: ops.fused_linear_relu_forward(x, w.to(meta), b), ["weight", "device"]),
    (
        "backward grad shape",
        lambda: ops.fused_linear_relu_backward(torch.randn(4, 4), x, w, torch.zeros(3, dtype=torch.uint8), [True] * 3),
        ["grad_output", "[4, 5]"],
    ),
    (
        "backward mask dtype",
        lambda: ops.fused_linear_relu_backward(torch.randn(4, 5), x, w, torch.zeros(3), [True] * 3),
        ["mask", "uint8"],
    ),
    (
        "backward mask size",
        lambda: ops.fused_linear_relu_backward(torch.randn(4, 5), x, w, torch.zeros(2, dtype=torch.uint8), [True] * 3),
        ["mask", "(3,)"],
    ),
    ("unpack size", lambda: ops.relu_mask_unpack(torch.zeros(2, dtype=torch.uint8), [4, 5]), ["mask", "(3,)"]),
    ("0-D weight", lambda: RF.fused_linear_relu(x, torch.tensor(1.0), b), ["weight", "0-D"]),
    ("1-D input, wrong features", lambda: RF.fused_linear_relu(torch.randn(4), w, b), ["in_features", "[4]"]),
    ("int weight", lambda: RF.fused_linear_relu(x, w.long(), b), ["weight", "Long"]),
    ("int bias", lambda: RF.fused_linear_relu(x, w, b.int()), ["bias", "Int"]),
    ("complex weight", lambda: RF.fused_linear_relu(x, w.to(torch.complex64), b), ["weight", "ComplexFloat"]),
    ("float8 input", lambda: RF.fused_linear_relu(x.to(torch.float8_e4m3fn), w, b), ["input", "Float8"]),
    ("bias on another device", lambda: RF.fused_linear_relu(x, w, b.to(meta)), ["bias", "device"]),
    ("sparse weight", lambda: RF.fused_linear_relu(x, w.to_sparse(), b), ["weight", "strided"]),
    (
        "backward weight mismatch",
        lambda: ops.fused_linear_relu_backward(
            torch.randn(4, 5), x, torch.randn(5, 2), torch.zeros(3, dtype=torch.uint8), [True] * 3
        ),
        ["in_features"],
    ),
    ("mask count size", lambda: ops.relu_mask_count(torch.zeros(1, dtype=torch.uint8), torch.randn(4, 5)), ["mask", "(3,)"]),
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
    (
        "quantized input",
        lambda: RF.dead_prelu(torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), torch.rand(3)),
        ["input", "quantized"],
    ),
    ("device mix", lambda: RF.dead_prelu(x, torch.rand(3, device=meta)), ["weight", "device"]),
    (
        "backward grad shape",
        lambda: ops.dead_prelu_backward(torch.randn(3, 4), x, torch.rand(3), [True, True]),
        ["grad_output", "[4, 3]"],
    ),
    (
        "backward dtype mix",
        lambda: ops.dead_prelu_backward(torch.randn(4, 3).double(), x, torch.rand(3), [True, True]),
        ["grad_output", "same dtype"],
    ),
    ("2-D weight of one element", lambda: RF.dead_prelu(x, torch.rand(1, 1)), ["weight", "2-D"]),
    ("empty weight", lambda: RF.dead_prelu(x, torch.rand(0)), ["weight", "got 0"]),
    ("0-D input, C weights", lambda: RF.dead_prelu(torch.tensor(1.0), torch.rand(3)), ["weight", "got 3"]),
    ("4-D input, weight size", lambda: RF.dead_prelu(torch.randn(2, 3, 4, 4), torch.rand(4)), ["weight", "got 4"]),
    ("float8 input", lambda: RF.dead_prelu(x.to(torch.float8_e5m2), torch.rand(3)), ["input", "Float8"]),
    ("bool weight", lambda: RF.dead_prelu(x, torch.ones(3, dtype=torch.bool)), ["weight", "Bool"]),
    ("complex weight", lambda: RF.dead_prelu(x, torch.rand(3).to(torch.complex64)), ["weight", "ComplexFloat"]),
    ("sparse weight", lambda: RF.dead_prelu(x, torch.rand(3).to_sparse()), ["weight", "strided"]),
    ("quantized weight", lambda: RF.dead_prelu(x, torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8)), ["weight"]),
    (
        "backward weight size",
        lambda: ops.dead_prelu_backward(torch.randn(4, 3), x, torch.rand(2), [True, True]),
        ["weight", "got 2"],
    ),
    (
        "backward int grad",
        lambda: ops.dead_prelu_backward(torch.ones(4, 3, dtype=torch.long), x, torch.rand(3), [True, True]),
        ["grad_output", "Long"],
    ),
    (
        "backward grad on another device",
        lambda: ops.dead_prelu_backward(torch.randn(4, 3, device=meta), x, torch.rand(3), [True, True]),
        ["device"],
    ),
    ("input on another device", lambda: RF.dead_prelu(torch.randn(4, 3, device=meta), torch.rand(3)), ["weight", "device"]),
]


@pytest.mark.parametrize("name,call,words", LINEAR_CASES, ids=[c[0] for c in LINEAR_CASES])
def test_linear_errors(name, call, words):
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    msg = str(info.value)
    assert any(op in msg for op in ("relu_ext::fused_linear_relu", "relu_ext::relu_mask_unpack", "relu_ext::relu_mask_count")), (
        msg
    )
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


def test_at_least_25_cases_per_operator():
    assert len(LINEAR_CASES) >= 25 and len(PRELU_CASES) >= 25


@torch.jit.script
def _ts_linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ops.relu_ext.fused_linear_relu(x, w, b)


@torch.jit.script
def _ts_prelu(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.relu_ext.dead_prelu(x, w)[0]


TS_CASES = [
    ("in_features mismatch", lambda: _ts_linear(torch.randn(4, 2), w, b), "relu_ext::fused_linear_relu", "in_features"),
    ("bias size", lambda: _ts_linear(x, w, torch.randn(4)), "relu_ext::fused_linear_relu", "bias"),
    ("dtype mix", lambda: _ts_linear(x.double(), w, b), "relu_ext::fused_linear_relu", "weight"),
    ("int input", lambda: _ts_linear(x.long(), w, b), "relu_ext::fused_linear_relu", "input"),
    ("prelu weight size", lambda: _ts_prelu(x, torch.rand(2)), "relu_ext::dead_prelu", "weight"),
    ("prelu int input", lambda: _ts_prelu(x.int(), torch.rand(3)), "relu_ext::dead_prelu", "input"),
]


@pytest.mark.parametrize("name,call,op,word", TS_CASES, ids=[c[0] for c in TS_CASES])
def test_torchscript_errors(name, call, op, word):
    with pytest.raises(RuntimeError) as info:
        call()
    assert op in str(info.value) and word in str(info.value)


ODD_BUT_VALID = [
    ("expanded input (stride 0)", lambda: (torch.randn(1, 3).expand(6, 3), w, b)),
    ("expanded weight rows", lambda: (x, torch.randn(1, 3).expand(5, 3), b)),
    ("expanded bias", lambda: (x, w, torch.randn(1).expand(5))),
    ("transposed weight", lambda: (x, torch.randn(3, 5).T, b)),
    ("offset views", lambda: (torch.randn(10, 3)[3:7], torch.randn(7, 3)[1:6], torch.randn(8)[2:7])),
    ("empty batch", lambda: (torch.randn(0, 3), w, b)),
    ("zero in_features", lambda: (torch.randn(4, 0), torch.randn(5, 0), b)),
]


@pytest.mark.parametrize("name,make", ODD_BUT_VALID, ids=[c[0] for c in ODD_BUT_VALID])
def test_odd_but_valid_layouts_work(name, make):
    xi, wi, bi = make()
    before = [t.clone() for t in (xi, wi, bi)]
    torch.testing.assert_close(RF.fused_linear_relu(xi, wi, bi), torch.relu(torch.nn.functional.linear(xi, wi, bi)))
    slope = torch.rand(1)
    out, count = RF.dead_prelu(xi, slope)
    torch.testing.assert_close(out, torch.nn.functional.prelu(xi, slope), rtol=0, atol=0)
    assert int(count.sum()) == int((xi > 0).sum())
    for t, c in zip((xi, wi, bi), before):
        assert torch.equal(t, c)  # inputs never modified


def test_training_mode_module_errors_name_the_public_operator():
    """In training mode the module calls the forward-with-mask variant; its
    errors name the operator users know."""
    from torch_relu_ext.nn import FusedLinearReLU

    layer = FusedLinearReLU(4, 8).train()
    with pytest.raises(RuntimeError, match=r"^relu_ext::fused_linear_relu: expected the last dimension of 'input'"):
        layer(torch.randn(3, 5))
    with pytest.raises(RuntimeError, match=r"^relu_ext::fused_linear_relu: expected argument 'weight' to have the same dtype"):
        torch.ops.relu_ext.fused_linear_relu_forward(torch.randn(3, 4), torch.randn(8, 4).double())
