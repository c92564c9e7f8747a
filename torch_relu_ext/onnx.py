"""ONNX export of models that use torch-relu-ext, as standard ONNX operators
(MatMul/Gemm + Add + Relu, PRelu; no custom domain).

    torch_relu_ext.onnx.export(model, (x,), "model.onnx")               # dynamo exporter
    torch_relu_ext.onnx.export(model, (x,), "model.onnx", dynamo=False) # TorchScript exporter

The dynamo path exports with torch.export, replaces the relu_ext operators by
their aten definitions (decompositions(); PReLU is kept as one op so that it
becomes ONNX PRelu) and hands the program to torch.onnx.export. The
TorchScript path uses the symbolic functions registered by
register_onnx_symbolics(), after which plain torch.onnx.export(...,
dynamo=False) works too. The active counts of dead_prelu are training
statistics: an inference graph drops them.
"""

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["decompositions", "export", "register_onnx_symbolics"]

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
    on top of torch.export's defaults (minus the PReLU decomposition)."""
    table = torch.export.default_decompositions()
    for op in (torch.ops.aten.prelu.default, torch.ops.aten._prelu_kernel.default):
        table.pop(op, None)
    table[_ops.fused_linear_relu.default] = _fused_linear_relu
    table[_ops.dead_prelu.default] = _dead_prelu
    return table


def _symbolic_fused_linear_relu(g, input, weight, bias):
    from torch.onnx import symbolic_helper

    y = g.op("MatMul", input, g.op("Transpose", weight, perm_i=[1, 0]))
    if not symbolic_helper._is_none(bias):
        y = g.op("Add", y, bias)
    return g.op("Relu", y)


def _symbolic_dead_prelu(g, input, weight):
    from torch.onnx import symbolic_helper

    rank = symbolic_helper._get_tensor_rank(input)
    slope = weight
    if rank is not None and rank > 2:
        # [C] -> [C, 1, ..., 1]: ONNX PRelu broadcasts the slope from the right.
        axes = g.op("Constant", value_t=torch.tensor(list(range(1, rank - 1)), dtype=torch.int64))
        slope = g.op("Unsqueeze", weight, axes)
    out = g.op("PRelu", input, slope)
    positive = g.op("Cast", g.op("Greater", input, g.op("Constant", value_t=torch.tensor(0.0))), to_i=7)
    if rank is not None and rank >= 2:
        axes = g.op("Constant", value_t=torch.tensor([d for d in range(rank) if d != 1], dtype=torch.int64))
        count = g.op("ReduceSum", positive, axes, keepdims_i=0)
    else:
        count = g.op(
            "Reshape", g.op("ReduceSum", positive, keepdims_i=0), g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64))
        )
    return out, count


_registered = False


def register_onnx_symbolics(opset: int = 13) -> None:
    """Symbolic functions for the TorchScript-based exporter (opset >= 13)."""
    global _registered
    if _registered:
        return
    torch.onnx.register_custom_op_symbolic("relu_ext::fused_linear_relu", _symbolic_fused_linear_relu, opset)
    torch.onnx.register_custom_op_symbolic("relu_ext::dead_prelu", _symbolic_dead_prelu, opset)
    _registered = True


def export(model: torch.nn.Module, args: tuple, f: Optional[str] = None, *, dynamo: bool = True, dynamic_shapes=None, **kwargs):
    """torch.onnx.export for models that use the relu_ext operators. Returns
    what torch.onnx.export returns (an ONNXProgram with dynamo=True)."""
    if dynamo:
        ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
        ep = ep.run_decompositions(decompositions())
        return torch.onnx.export(ep, args, f, dynamo=True, **kwargs)
    register_onnx_symbolics()
    kwargs.setdefault("opset_version", 17)
    return torch.onnx.export(model, args, f, dynamo=False, **kwargs)
