"""ONNX export: plain torch.onnx.export (dynamo and TorchScript exporters) of
models and functions that use torch-relu-ext, checked in ONNX Runtime."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import child_env
from torch import nn

import torch_relu_ext
import torch_relu_ext.onnx as relu_onnx
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Exporting a model while it is in training mode:UserWarning"),
]

onnx = pytest.importorskip("onnx", reason="onnx is in requirements-dev.txt")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements-dev.txt")
pytest.importorskip("onnxscript", reason="onnxscript is in requirements-dev.txt")

EXPORTERS = pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(FusedLinearReLU(6, 8), nn.Linear(8, 8), DeadAwarePReLU(8, track_dormant=True))
        self.conv = nn.Conv2d(2, 3, 1)
        self.act2 = DeadAwarePReLU(3)
        self.head = nn.Linear(8 + 3, 2)

    def forward(self, x, img):
        h = self.body(x)
        c = self.act2(self.conv(img)).mean((2, 3))
        return self.head(torch.cat([h, c], 1))


def _standard_ops_only(path):
    graph = onnx.load(path).graph
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), {n.domain for n in graph.node}
    return {n.op_type for n in graph.node}


def _run(path, *inputs, names=None):
    """Runs the model on `inputs`, given in order or (with `names`) by name:
    an exporter drops inputs that the graph does not use."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    if names is None:
        return sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})
    feeds = dict(zip(names, inputs))
    return sess.run(None, {i.name: feeds[i.name].numpy() for i in sess.get_inputs()})


def _stats(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@EXPORTERS
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_plain_export_runs_in_onnxruntime(tmp_path, dynamo, train):
    model = Net().train(train)
    x, img = torch.randn(4, 6), torch.randn(4, 2, 5, 5)
    model(x, img)  # some statistics to keep unchanged
    before = _stats(model)
    path = str(tmp_path / "net.onnx")
    if dynamo:
        batch = torch.export.Dim("batch", min=2)
        torch.onnx.export(model, (x, img), path, dynamic_shapes={"x": {0: batch}, "img": {0: batch}})
    else:
        torch.onnx.export(
            model, (x, img), path, dynamo=False, input_names=["x", "img"], dynamic_axes={"x": {0: "batch"}, "img": {0: "batch"}}
        )
    # The export leaves the model as it was: mode, parameters and statistics.
    assert model.training == train
    after = _stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    types = _standard_ops_only(path)
    assert "Relu" in types and "PRelu" in types and ({"Gemm", "MatMul"} & types)
    for batch in (4, 9):
        xb, ib = torch.randn(batch, 6), torch.randn(batch, 2, 5, 5)
        with torch.no_grad():
            want = model.eval()(xb, ib).numpy()
        (got,) = _run(path, xb, ib)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class Functions(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.bias = bias

    def forward(self, x, w, b, a, y):
        h = torch_relu_ext.fused_linear_relu(x, w, b if self.bias else None)
        out, count = torch_relu_ext.dead_prelu(y, a)
        return h, out, count


@EXPORTERS
@pytest.mark.parametrize(
    "x_shape, y_shape, slopes",
    [((5, 6), (7, 3), 3), ((2, 3, 6), (2, 3, 4, 5), 1), ((6,), (9,), 1), ((0, 6), (2, 3, 4, 5), 3)],
    ids=["2d", "nd-shared-slope", "1d", "empty"],
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_functions_export(tmp_path, dynamo, x_shape, y_shape, slopes, bias):
    x, w, b = torch.randn(x_shape), torch.randn(4, 6), torch.randn(4)
    a, y = torch.rand(slopes), torch.randn(y_shape)
    y.view(-1)[::3] = 0.0  # zeros are not active
    model = Functions(bias)
    path = str(tmp_path / "f.onnx")
    names = ["x", "w", "b", "a", "y"]
    torch.onnx.export(model, (x, w, b, a, y), path, dynamo=dynamo, input_names=names)
    _standard_ops_only(path)
    got = _run(path, x, w, b, a, y, names=names)
    ref_h = torch.relu(torch.nn.functional.linear(x.double(), w.double(), b.double() if bias else None))
    np.testing.assert_allclose(got[0], ref_h.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], torch.nn.functional.prelu(y, a).numpy(), rtol=1e-6, atol=0)
    dims = [d for d in range(y.dim()) if d != 1] if y.dim() >= 2 else list(range(y.dim()))
    want_count = (y > 0).sum(dims).reshape(-1) if y.dim() >= 2 else (y > 0).sum().reshape(1)
    assert got[2].dtype == np.int64
    np.testing.assert_array_equal(got[2], want_count.numpy())


class MaskOps(nn.Module):
    """The operators a FusedLinearReLU records in training mode, with the
    packed mask and the counts as outputs (exported graphs of the modules drop
    them as unused)."""

    def forward(self, x, w, b):
        out, mask = torch.ops.relu_ext.fused_linear_relu_forward(x, w, b)
        return out, mask, torch.ops.relu_ext.relu_mask_count(mask, out)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 7)], ids=["2d", "3d"])
def test_mask_translations_match_kernels(tmp_path, shape):
    # rows * out_features not a multiple of 8: the last mask byte is partial.
    x, w, b = torch.randn(*shape[:-1], 6), torch.randn(shape[-1], 6), torch.randn(shape[-1])
    x[0, ..., 0] = float("nan")  # NaN pre-activations set their mask bit
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(MaskOps(), (x, w, b), path)
    _standard_ops_only(path)
    got = _run(path, x, w, b)
    want = MaskOps()(x, w, b)
    np.testing.assert_allclose(got[0], want[0].detach().numpy(), rtol=1e-5, atol=1e-5)
    assert got[1].dtype == np.uint8
    np.testing.assert_array_equal(got[1], want[1].numpy())
    np.testing.assert_array_equal(got[2], want[2].numpy())


def test_torchscript_opset_too_low(tmp_path):
    model = nn.Sequential(FusedLinearReLU(3, 4)).eval()
    with pytest.raises(torch.onnx.errors.OnnxExporterError, match=r"relu_ext::fused_linear_relu needs opset_version >= 13.*=11"):
        torch.onnx.export(model, (torch.randn(2, 3),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=11)


@EXPORTERS
def test_project_export_alias(tmp_path, dynamo):
    model = nn.Sequential(FusedLinearReLU(3, 4), DeadAwarePReLU(4)).eval()
    x = torch.randn(5, 3)
    path = str(tmp_path / "m.onnx")
    result = relu_onnx.export(model, (x,), path, dynamo=dynamo)
    if dynamo:
        assert isinstance(result, torch.onnx.ONNXProgram)
    (got,) = _run(path, x)
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_import_does_not_import_onnxscript():
    # The dynamo translations are registered when torch.onnx first imports
    # onnxscript's registry, not at import (onnxscript takes ~1 s to import).
    code = (
        "import sys, torch_relu_ext\n"
        "assert 'onnxscript' not in sys.modules, 'onnxscript imported'\n"
        "from onnxscript.function_libs.torch_lib import registration\n"
        "assert 'relu_ext::fused_linear_relu' in registration.default_registry\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), timeout=120)
    # onnxscript's registry imported first: registered at import instead.
    code = (
        "from onnxscript.function_libs.torch_lib import registration\n"
        "import torch_relu_ext\n"
        "assert 'relu_ext::dead_prelu' in registration.default_registry\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), timeout=120)
