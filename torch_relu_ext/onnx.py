"""ONNX export of models that use torch-relu-ext, as standard ONNX operators
(Gemm/MatMul + Add + Relu, PRelu; no custom domain).

After ``import torch_relu_ext`` plain ``torch.onnx.export`` works with both
exporters, for the modules in training and evaluation mode and for the
functions (fused_linear_relu, dead_prelu):

    torch.onnx.export(model, (x,), "model.onnx")                # dynamo exporter (default)
    torch.onnx.export(model, (x,), "model.onnx", dynamo=False)  # TorchScript exporter

How: the TorchScript exporter gets symbolic functions
(torch.onnx.register_custom_op_symbolic, at import). The dynamo exporter gets
ONNX translations of every relu_ext operator that a forward pass can record,
registered in onnxscript's torchlib registry, which torch.onnx reads at each
export. onnxscript costs about a second to import, so they are registered when
the exporter first imports that registry, not when torch_relu_ext is imported.
The statistics the modules update in training mode are buffer mutations, which
ONNX graphs do not keep: an exported model computes the layers' outputs only.
"""

import importlib.abc
import importlib.util
import sys
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["MIN_OPSET", "decompositions", "export", "register_onnx_symbolics", "register_onnx_translations"]

# The symbolic functions use ReduceSum/Unsqueeze with axes as an input (opset 13).
MIN_OPSET = 13
# "x > 0" is written Greater(x, Neg(x)) (and "x <= 0" LessOrEqual(x, Neg(x))):
# exact for every float including -0, +-inf and NaN, with no zero constant of
# the input's dtype and no CastLike (opset 15).

_ops = torch.ops.relu_ext


def _fused_linear_relu(input, weight, bias=None):
    return torch.relu(F.linear(input, weight, bias))


def _dead_prelu(input, weight):
    if input.dim() >= 2:
        dims = [d for d in range(input.dim()) if d != 1]
        count = (input > 0).sum(dims).reshape(-1)
    else:
        count = (input > 0).sum().reshape(1)
    return F.prelu(input, weight), count


def decompositions() -> dict:
    """torch.export decomposition table: the relu_ext operators in aten terms,
    on top of torch.export's defaults (minus the PReLU decomposition). For
    programs that must contain aten operators only; ONNX export does not need it."""
    table = torch.export.default_decompositions()
    for op in (torch.ops.aten.prelu.default, torch.ops.aten._prelu_kernel.default):
        table.pop(op, None)
    table[_ops.fused_linear_relu.default] = _fused_linear_relu
    table[_ops.dead_prelu.default] = _dead_prelu
    return table


# ---- TorchScript exporter (dynamo=False) ---------------------------------


def _check_opset(g, op: str) -> None:
    opset = g.opset
    if opset < MIN_OPSET:
        raise torch.onnx.errors.OnnxExporterError(
            f"torch_relu_ext: ONNX export of {op} needs opset_version >= {MIN_OPSET}, but got opset_version={opset}"
        )


def _symbolic_fused_linear_relu(g, input, weight, bias):
    from torch.onnx import symbolic_helper

    _check_opset(g, "relu_ext::fused_linear_relu")
    if symbolic_helper._get_tensor_rank(weight) == 1:
        y = g.op("MatMul", input, weight)  # F.linear with a 1-D weight: output (*)
    else:
        y = g.op("MatMul", input, g.op("Transpose", weight, perm_i=[1, 0]))
    if not symbolic_helper._is_none(bias):
        y = g.op("Add", y, bias)
    return g.op("Relu", y)


def _symbolic_dead_prelu(g, input, weight):
    from torch.onnx import symbolic_helper

    _check_opset(g, "relu_ext::dead_prelu")
    rank = symbolic_helper._get_tensor_rank(input)
    if rank is None:
        raise torch.onnx.errors.SymbolicValueError("torch_relu_ext: relu_ext::dead_prelu needs an input of known rank", input)
    slope = weight
    if rank > 2:
        # [C] -> [C, 1, ..., 1]: ONNX PRelu broadcasts the slope from the right.
        slope = g.op("Unsqueeze", weight, g.op("Constant", value_t=torch.tensor(list(range(1, rank - 1)))))
    elif rank == 0:
        slope = g.op("Reshape", weight, g.op("Constant", value_t=torch.tensor([], dtype=torch.int64)))
    out = g.op("PRelu", input, slope)
    positive = g.op("Cast", g.op("Greater", input, g.op("Neg", input)), to_i=7)  # x > 0, as int64
    if rank >= 2:
        axes = g.op("Constant", value_t=torch.tensor([d for d in range(rank) if d != 1]))
        count = g.op("ReduceSum", positive, axes, keepdims_i=0)
    else:
        one = g.op("Constant", value_t=torch.tensor([1]))
        count = g.op("Reshape", g.op("ReduceSum", positive, keepdims_i=0), one)
    return out, count


_symbolics_registered = False


def register_onnx_symbolics() -> None:
    """Symbolic functions for the TorchScript exporter (done at import; opset >= MIN_OPSET,
    lower opsets get a clear error)."""
    global _symbolics_registered
    if _symbolics_registered:
        return
    # Registered from the lowest opset the exporter knows (7), so that an
    # opset below MIN_OPSET reaches _check_opset's message.
    torch.onnx.register_custom_op_symbolic("relu_ext::fused_linear_relu", _symbolic_fused_linear_relu, 7)
    torch.onnx.register_custom_op_symbolic("relu_ext::dead_prelu", _symbolic_dead_prelu, 7)
    _symbolics_registered = True


# ---- dynamo exporter (default) -------------------------------------------

_TORCHLIB_REGISTRY = "onnxscript.function_libs.torch_lib.registration"
_translations_registered = False


def register_onnx_translations() -> None:
    """Register the ONNX translations of the relu_ext operators in onnxscript's
    torchlib registry (done automatically; imports onnxscript)."""
    global _translations_registered
    if _translations_registered:
        return
    from onnxscript import ir
    from onnxscript.function_libs.torch_lib.registration import torch_op
    from onnxscript.onnx_opset import opset18 as op

    int32, int64 = ir.DataType.INT32, ir.DataType.INT64

    def linear_relu(input, weight, bias):
        if len(weight.shape) == 1:
            y = op.MatMul(input, weight)  # F.linear with a 1-D weight: output (*)
        elif len(input.shape) == 2:
            return op.Relu(op.Gemm(input, weight, transB=1) if bias is None else op.Gemm(input, weight, bias, transB=1))
        else:
            y = op.MatMul(input, op.Transpose(weight, perm=[1, 0]))
        return op.Relu(y if bias is None else op.Add(y, bias))

    def bit_weights():
        return op.Constant(value=ir.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=int32))

    @torch_op("relu_ext::fused_linear_relu", trace_only=True)
    def fused_linear_relu(input, weight, bias=None):
        return linear_relu(input, weight, bias)

    @torch_op("relu_ext::fused_linear_relu_forward", trace_only=True)
    def fused_linear_relu_forward(input, weight, bias=None):
        # The packed mask of csrc/core/relu_mask.h (CPU layout): one bit per
        # output element in row-major order, LSB first; set where the
        # pre-activation is > 0 or NaN, i.e. where relu's output is not <= 0.
        out = linear_relu(input, weight, bias)
        bits = op.Reshape(op.Cast(op.Not(op.LessOrEqual(out, op.Neg(out))), to=int32), [-1])
        pad = op.Mod(op.Sub(8, op.Mod(op.Size(bits), 8)), 8)
        bits = op.Pad(bits, op.Concat(op.Constant(value_ints=[0]), op.Reshape(pad, [1]), axis=0))
        packed = op.ReduceSum(op.Mul(op.Reshape(bits, [-1, 8]), bit_weights()), [1], keepdims=0)
        return out, op.Cast(packed, to=ir.DataType.UINT8)

    @torch_op("relu_ext::relu_mask_count", trace_only=True)
    def relu_mask_count(mask, output):
        # Set bits per output feature (last dim of `output`), as int64.
        bytes_ = op.Unsqueeze(op.Cast(mask, to=int32), [1])
        bits = op.Reshape(op.Mod(op.Div(bytes_, bit_weights()), op.Constant(value=ir.tensor(2, dtype=int32))), [-1])
        bits = op.Slice(bits, op.Constant(value_ints=[0]), op.Reshape(op.Size(output), [1]))
        out_features = op.Shape(output, start=-1)
        rows = op.Reshape(bits, op.Concat(op.Constant(value_ints=[-1]), out_features, axis=0))
        return op.ReduceSum(op.Cast(rows, to=int64), [0], keepdims=0)

    @torch_op("relu_ext::dead_prelu", trace_only=True)
    def dead_prelu(input, weight):
        rank = len(input.shape)
        slope = weight
        if rank == 0:
            slope = op.Reshape(weight, op.Constant(value=ir.tensor([], dtype=int64)))
        elif rank > 2:
            slope = op.Reshape(weight, [-1] + [1] * (rank - 2))  # [C] -> [C, 1, ..., 1]
        out = op.PRelu(input, slope)
        positive = op.Cast(op.Greater(input, op.Neg(input)), to=int64)
        if rank >= 2:
            count = op.ReduceSum(positive, [d for d in range(rank) if d != 1], keepdims=0)
        else:
            count = op.Reshape(op.ReduceSum(positive, keepdims=0), [1])
        return out, count

    _translations_registered = True


class _RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs register_onnx_translations() right after onnxscript's torchlib
    registry module is imported (which torch.onnx does at its first dynamo
    export), so that importing torch_relu_ext does not import onnxscript."""

    def __init__(self) -> None:
        self._loader = None

    def find_spec(self, fullname, path, target=None):
        if fullname != _TORCHLIB_REGISTRY:
            return None
        sys.meta_path.remove(self)  # one shot; find_spec below must not find us again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            register_onnx_translations()
        except Exception as e:  # never break onnxscript's import
            warnings.warn(f"torch_relu_ext: could not register the ONNX translations of relu_ext operators: {e!r}", stacklevel=2)


def _install() -> None:
    """Called by torch_relu_ext's __init__."""
    if hasattr(torch.onnx, "register_custom_op_symbolic"):  # the TorchScript exporter is deprecated upstream
        register_onnx_symbolics()
    if _TORCHLIB_REGISTRY in sys.modules:
        register_onnx_translations()
    elif importlib.util.find_spec("onnxscript") is not None:
        sys.meta_path.insert(0, _RegisterAfterImport())


def export(model: torch.nn.Module, args: tuple, f: Optional[str] = None, *, dynamo: bool = True, **kwargs):
    """torch.onnx.export (kept for code written before plain torch.onnx.export
    worked). Returns what torch.onnx.export returns (an ONNXProgram with dynamo=True)."""
    if dynamo:
        register_onnx_translations()
    return torch.onnx.export(model, args, f, dynamo=dynamo, **kwargs)
