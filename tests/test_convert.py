"""convert()/revert(): drop-in conversion of existing models."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_relu_ext import convert, revert
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU


def same_outputs(a, b, x, tol=1e-6):
    torch.testing.assert_close(a(x), b(x), rtol=tol, atol=tol)


def test_nested_sequential_with_inplace_relu_and_prelu():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True)),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.PReLU(8),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(5, 6)
    converted, report = convert(model, report=True)
    assert isinstance(converted[0][0], FusedLinearReLU) and isinstance(converted[1], FusedLinearReLU)
    assert isinstance(converted[4], DeadAwarePReLU) and type(converted[5]) is nn.Linear
    assert sorted(report.fused) == ["0.0", "1"] and report.prelu == ["4"]
    assert report.skipped == {"3": "not followed by a ReLU", "5": "not followed by a ReLU"}
    assert not converted.training
    same_outputs(model, converted, x)
    # Parameter keys unchanged; the original model is untouched.
    assert dict(converted.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert type(model[1]) is nn.Linear
    back = revert(converted)
    assert type(back[1]) is nn.Linear and type(back[2]) is nn.ReLU and type(back[4]) is nn.PReLU
    assert type(back[0][1]) is nn.ReLU and back[0][1].inplace
    same_outputs(model, back, x)


def test_dtype_device_and_training_state_kept():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).double().train()
    converted = convert(model)
    assert converted[0].weight.dtype == torch.float64 and converted[0].training
    x = torch.randn(3, 4, dtype=torch.float64)
    same_outputs(model, converted, x)


def test_torchvision_mlp():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is in requirements-dev.txt")
    torch.manual_seed(1)
    model = torchvision.ops.MLP(10, [32, 32, 5], activation_layer=nn.ReLU, dropout=0.1).eval()
    converted, report = convert(model, report=True)
    assert sum(isinstance(m, FusedLinearReLU) for m in converted.modules()) == 2
    assert len(report.fused) == 2
    same_outputs(model, converted, torch.randn(7, 10))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 8)
        self.shared = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = torch.relu(self.fc2(h))
        h = self.act(self.fc3(h)).relu()
        s = self.shared(h)
        h = F.relu(s) + s  # the Linear output is used twice: not fusable
        return self.head(h)


def test_fx_functional_model():
    torch.manual_seed(2)
    model = Functional().eval()
    converted, report = convert(model, report=True)
    assert isinstance(converted, torch.fx.GraphModule)
    assert sorted(report.fused) == ["fc1", "fc2", "fc3"]
    assert report.skipped["shared"] == "its output is also used other than by a ReLU"
    assert sum(isinstance(m, FusedLinearReLU) for m in converted.modules()) == 3
    x = torch.randn(4, 6)
    same_outputs(model, converted, x)
    # Gradients reach the converted copy's parameters (the original's are
    # untouched unless convert(..., inplace=True)).
    converted(x).sum().backward()
    assert converted.fc1.weight.grad is not None and model.fc1.weight.grad is None
    back = revert(converted)
    assert not any(isinstance(m, FusedLinearReLU) for m in back.modules())
    same_outputs(model, back, x)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return F.relu(self.fc(self.body(x)))
        return self.body(x)


def test_untraceable_model_is_partly_converted_and_reported():
    model = Untraceable().eval()
    converted, report = convert(model, report=True)
    assert isinstance(converted.body[0], FusedLinearReLU) and type(converted.fc) is nn.Linear
    assert any("not traceable" in s for s in report.notes) and report.skipped == {"fc": "not followed by a ReLU"}
    x = torch.rand(3, 4)
    same_outputs(model, converted, x)
    assert "fused Linear+ReLU: 1" in str(report)
