"""Module parity with nn.Linear + nn.ReLU and nn.PReLU; state_dict round trips."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_relu_ext
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

STATS = ["active_ema", "abs_mean_ema", "num_batches_tracked"]


@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_relu_module_parity(bias):
    torch.manual_seed(7)
    ref = nn.Linear(12, 9, bias=bias)
    torch.manual_seed(7)
    ours = FusedLinearReLU(12, 9, bias=bias)
    # Same initialisation and parameter keys; the state_dict adds only the
    # dead-neuron statistics buffers.
    assert dict(ours.named_parameters()).keys() == dict(ref.named_parameters()).keys()
    assert set(ours.state_dict()) - set(ref.state_dict()) == set(STATS)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
    x = torch.randn(4, 5, 12)
    torch.testing.assert_close(ours(x), F.relu(ref(x)))
    assert "in_features=12, out_features=9" in repr(ours)


def test_checkpoint_round_trip_with_sequential():
    eager = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())
    ours = nn.Sequential(FusedLinearReLU(6, 8), FusedLinearReLU(8, 4))
    # Per layer, the checkpoints are interchangeable in both directions.
    ours[0].load_state_dict(eager[0].state_dict())
    ours[1].load_state_dict(eager[2].state_dict())
    x = torch.randn(10, 6)
    torch.testing.assert_close(ours(x), eager(x))
    # Back to nn.Linear: the statistics are the only keys it does not know.
    back = nn.Linear(8, 4)
    result = back.load_state_dict(ours[1].state_dict(), strict=False)
    assert sorted(result.unexpected_keys) == sorted(STATS) and not result.missing_keys
    assert torch.equal(back.weight, eager[2].weight)


def test_module_factory_kwargs():
    m = FusedLinearReLU(3, 2, dtype=torch.float64, device="cpu")
    assert m.weight.dtype == torch.float64 and m.bias.dtype == torch.float64
    p = DeadAwarePReLU(4, init=0.1, dtype=torch.bfloat16)
    assert p.weight.dtype == torch.bfloat16 and torch.all(p.weight == torch.tensor(0.1, dtype=torch.bfloat16))


@pytest.mark.parametrize("num_parameters", [1, 5])
def test_prelu_module_parity(num_parameters):
    ref = nn.PReLU(num_parameters, init=0.3)
    ours = DeadAwarePReLU(num_parameters, init=0.3)
    assert dict(ours.named_parameters()).keys() == dict(ref.named_parameters()).keys()
    assert set(ours.state_dict()) - set(ref.state_dict()) == set(STATS)
    assert torch.equal(ours.weight, ref.weight)
    x = torch.randn(3, 5, 4, 4)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    # Checkpoints move both ways.
    with torch.no_grad():
        ours.weight.uniform_()
    ref.load_state_dict(ours.state_dict(), strict=False)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    assert f"num_parameters={num_parameters}" in repr(ours)


def test_training_step_matches_eager():
    torch.manual_seed(3)
    eager = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.PReLU(16), nn.Linear(16, 3))
    ours = nn.Sequential(FusedLinearReLU(10, 16), nn.Linear(16, 16), DeadAwarePReLU(16), nn.Linear(16, 3))
    ours[0].load_state_dict(eager[0].state_dict())
    ours[1].load_state_dict(eager[2].state_dict())
    ours[2].load_state_dict(eager[3].state_dict())
    ours[3].load_state_dict(eager[4].state_dict())
    eager.double()
    ours.double()
    x = torch.randn(32, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    for model in (eager, ours):
        F.cross_entropy(model(x), y).backward()
    pairs = [(eager[0], ours[0]), (eager[2], ours[1]), (eager[3], ours[2]), (eager[4], ours[3])]
    for e, o in pairs:
        for pe, po in zip(e.parameters(), o.parameters()):
            torch.testing.assert_close(po.grad, pe.grad, rtol=1e-12, atol=1e-12)


def test_public_api():
    assert torch_relu_ext.__version__
    assert torch_relu_ext.fused_linear_relu is torch_relu_ext.functional.fused_linear_relu
    assert hasattr(torch.ops.relu_ext, "fused_linear_relu")
    assert hasattr(torch.ops.relu_ext, "dead_prelu")
