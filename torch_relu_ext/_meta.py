"""Fake (meta) kernels of every relu_ext operator, for torch.compile,
torch.export, FakeTensor and the meta device. This is the only place they are
defined. They compute output shapes, dtypes and strides exactly as the real
kernels do, with symbolic sizes, and check the arguments the shapes depend on.
"""

import torch

from ._registry import mask_bytes

_lib = torch.library


def _check_same_device(op, ref_name, ref, **tensors):
    for name, t in tensors.items():
        torch._check(
            t.device == ref.device,
            lambda name=name, t=t: (
                f"{op}: expected argument '{name}' to be on the same device as '{ref_name}' "
                f"({ref.device}), but it is on {t.device}"
            ),
        )
        torch._check(
            t.dtype == ref.dtype,
            lambda name=name, t=t: (
                f"{op}: expected argument '{name}' to have the same dtype as '{ref_name}' ({ref.dtype}), but got {t.dtype}"
            ),
        )


def _check_linear(op, input, weight, bias):
    torch._check(
        input.dim() >= 1, lambda: f"{op}: expected argument 'input' to have shape (*, in_features), but got a 0-D tensor"
    )
    torch._check(
        weight.dim() == 2,
        lambda: f"{op}: expected argument 'weight' to have shape (out_features, in_features), but got a {weight.dim()}-D tensor",
    )
    torch._check(
        input.dtype.is_floating_point,
        lambda: f"{op}: expected argument 'input' to have a floating-point dtype, but got {input.dtype}",
    )
    _check_same_device(op, "input", input, weight=weight)
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: (
            f"{op}: expected the last dimension of 'input' (in_features) to equal weight.size(1) = {weight.shape[1]}, "
            f"but got input of shape {tuple(input.shape)}"
        ),
    )
    if bias is not None:
        _check_same_device(op, "input", input, bias=bias)
        torch._check(
            bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            lambda: (
                f"{op}: expected argument 'bias' to have shape (out_features,) = ({weight.shape[0]},), "
                f"but got shape {tuple(bias.shape)}"
            ),
        )


def _rows(input):
    rows = 1
    for s in input.shape[:-1]:
        rows = rows * s
    return rows


@_lib.register_fake("relu_ext::fused_linear_relu")
def _fused_linear_relu_fake(input, weight, bias=None):
    _check_linear("relu_ext::fused_linear_relu", input, weight, bias)
    return input.new_empty(tuple(input.shape[:-1]) + (weight.shape[0],))


@_lib.register_fake("relu_ext::fused_linear_relu_forward")
def _fused_linear_relu_forward_fake(input, weight, bias=None):
    _check_linear("relu_ext::fused_linear_relu_forward", input, weight, bias)
    out = input.new_empty(tuple(input.shape[:-1]) + (weight.shape[0],))
    mask = input.new_empty((mask_bytes(_rows(input), weight.shape[0], input.device),), dtype=torch.uint8)
    return out, mask


@_lib.register_fake("relu_ext::fused_linear_relu_backward")
def _fused_linear_relu_backward_fake(grad_output, input, weight, mask, output_mask):
    op = "relu_ext::fused_linear_relu_backward"
    _check_linear(op, input, weight, None)
    _check_same_device(op, "input", input, grad_output=grad_output)
    expected = mask_bytes(_rows(input), weight.shape[0], input.device)
    torch._check(
        mask.dtype == torch.uint8 and mask.dim() == 1 and mask.shape[0] == expected,
        lambda: f"{op}: expected argument 'mask' to be a uint8 tensor of shape ({expected},)",
    )
    gi = input.new_empty(input.shape) if output_mask[0] else None
    gw = weight.new_empty(weight.shape) if output_mask[1] else None
    gb = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return gi, gw, gb


@_lib.register_fake("relu_ext::relu_mask_unpack")
def _relu_mask_unpack_fake(mask, size):
    return mask.new_empty(size, dtype=torch.bool)


@_lib.register_fake("relu_ext::relu_pack")
def _relu_pack_fake(self):
    # The number of non-zero elements is data-dependent.
    nonzero = torch.library.get_ctx().new_dynamic_size()
    return self.new_empty(((self.numel() + 7) // 8,), dtype=torch.uint8), self.new_empty((nonzero,))


@_lib.register_fake("relu_ext::relu_unpack")
def _relu_unpack_fake(bits, values, size):
    return values.new_empty(size)


@_lib.register_fake("relu_ext::relu_mask_count")
def _relu_mask_count_fake(mask, output):
    out_features = output.shape[-1] if output.dim() > 0 else 1
    rows = _rows(output) if output.dim() > 0 else 1
    expected = mask_bytes(rows, out_features, mask.device)
    torch._check(
        mask.dtype == torch.uint8 and mask.dim() == 1 and mask.shape[0] == expected,
        lambda: f"relu_ext::relu_mask_count: expected argument 'mask' to be a uint8 tensor of shape ({expected},)",
    )
    return mask.new_empty((out_features,), dtype=torch.int64)


def _check_prelu(op, input, weight):
    torch._check(
        input.dtype.is_floating_point,
        lambda: f"{op}: expected argument 'input' to have a floating-point dtype, but got {input.dtype}",
    )
    _check_same_device(op, "input", input, weight=weight)
    torch._check(
        weight.dim() <= 1,
        lambda: f"{op}: expected argument 'weight' to be a scalar or 1-D tensor, but got a {weight.dim()}-D tensor",
    )
    channels = input.shape[1] if input.dim() >= 2 else 1
    torch._check(
        weight.numel() == 1 or weight.numel() == channels,
        lambda: (
            f"{op}: expected argument 'weight' to have 1 element or one per channel ({channels}), "
            f"but got {weight.numel()} elements"
        ),
    )
    return channels


def _like_input(input):
    # The kernels write outputs in the input's layout (empty_like's choice).
    return torch.empty_like(input)


@_lib.register_fake("relu_ext::dead_prelu")
def _dead_prelu_fake(input, weight):
    channels = _check_prelu("relu_ext::dead_prelu", input, weight)
    return _like_input(input), input.new_empty((channels,), dtype=torch.int64)


@_lib.register_fake("relu_ext::dead_prelu_backward")
def _dead_prelu_backward_fake(grad_output, input, weight, output_mask):
    op = "relu_ext::dead_prelu_backward"
    _check_prelu(op, input, weight)
    _check_same_device(op, "input", input, grad_output=grad_output)
    gi = _like_input(input) if output_mask[0] else None
    gw = weight.new_empty(weight.shape) if output_mask[1] else None
    return gi, gw
