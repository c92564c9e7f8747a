"""A small model that uses both modules and both functional forms."""

import torch
from torch import nn

import torch_relu_ext
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU


class Net(nn.Module):
    def __init__(self, features: int = 7, hidden: int = 16):
        super().__init__()
        self.l1 = FusedLinearReLU(features, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.act = DeadAwarePReLU(hidden)
        self.l3 = nn.Linear(hidden, hidden)
        self.slope = nn.Parameter(torch.full((1,), 0.2))
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.l2(self.l1(x)))
        h = torch_relu_ext.functional.fused_linear_relu(h, self.l3.weight, self.l3.bias)
        h, _ = torch_relu_ext.functional.dead_prelu(h, self.slope)
        return self.head(h)


def grads_of(model, x):
    """Output and all gradients of sum(out^2): the values tests compare."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.pow(2).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in model.parameters()]
