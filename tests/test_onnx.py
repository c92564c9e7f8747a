"""ONNX export (dynamo and TorchScript exporters) checked in ONNX Runtime."""

import numpy as np
import pytest
import torch
from torch import nn

import torch_relu_ext.onnx as relu_onnx
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]

onnx = pytest.importorskip("onnx", reason="onnx is in requirements-dev.txt")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements-dev.txt")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(FusedLinearReLU(6, 8), nn.Linear(8, 8), DeadAwarePReLU(8))
        self.conv = nn.Conv2d(2, 3, 1)
        self.act2 = DeadAwarePReLU(3)
        self.head = nn.Linear(8 + 3, 2)

    def forward(self, x, img):
        h = self.body(x)
        c = self.act2(self.conv(img)).mean((2, 3))
        return self.head(torch.cat([h, c], 1))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_export_runs_in_onnxruntime(tmp_path, dynamo):
    torch.manual_seed(0)
    model = Net().eval()
    x, img = torch.randn(4, 6), torch.randn(4, 2, 5, 5)
    path = str(tmp_path / "net.onnx")
    if dynamo:
        batch = torch.export.Dim("batch", min=2)
        relu_onnx.export(model, (x, img), dynamic_shapes={"x": {0: batch}, "img": {0: batch}}).save(path)
    else:
        relu_onnx.export(
            model, (x, img), path, dynamo=False, input_names=["x", "img"], dynamic_axes={"x": {0: "batch"}, "img": {0: "batch"}}
        )
    graph = onnx.load(path).graph
    types = {n.op_type for n in graph.node}
    assert "Relu" in types and "PRelu" in types and ({"Gemm", "MatMul"} & types)
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), {n.domain for n in graph.node}
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for batch in (4, 9):
        xb, ib = torch.randn(batch, 6), torch.randn(batch, 2, 5, 5)
        (got,) = sess.run(None, dict(zip(names, (xb.numpy(), ib.numpy()))))
        np.testing.assert_allclose(got, model(xb, ib).detach().numpy(), rtol=1e-5, atol=1e-5)
