"""Facts about the relu_ext operators that the Python side needs, each written
once: the operator list (read from the dispatcher, so it cannot fall behind
the schemas in csrc/ops.cpp), which of them are public, the packed mask's
size (the formula of csrc/core/relu_mask.h; tests/test_mask_layout.py checks
that they agree) and the statistics' moving-average step (the CPU kernel of
dead_stats_update_ reproduces it bitwise, the composite kernel is the same
ATen ops in C++; tests/test_dead_stats.py checks them)."""

import torch

from . import functional

NAMESPACE = "relu_ext"

# The stable surface: the operators with a wrapper in functional (its
# __all__) and a declaration in the public section of
# include/torch_relu_ext/ops.h (tests/test_mask_layout.py checks that both
# agree). Every other operator is internal (autograd, autocast and the modules
# use them): callable as torch.ops.relu_ext.<name>, in C++ as
# torch_relu_ext::detail::<name>, with no stability promise.
PUBLIC = tuple(functional.__all__)


def operators():
    """Names (without the namespace) of every relu_ext operator registered
    with the dispatcher, sorted."""
    prefix = NAMESPACE + "::"
    return sorted(n[len(prefix) :] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix))


def internal_operators():
    """Every registered operator that is not public, sorted."""
    return [op for op in operators() if op not in PUBLIC]


def ema_update_(ema: torch.Tensor, value: torch.Tensor, num_batches_tracked: torch.Tensor, momentum: float) -> None:
    """The statistics' moving-average step, in place: ``ema = value`` on the
    first tracked batch, else ``ema * (1 - momentum) + value * momentum``; each
    op rounds to ``ema``'s dtype. relu_ext::dead_stats_update_ is this step with
    ``value = counts.to(ema.dtype) / elements``."""
    value = value.to(ema.dtype)
    ema.copy_(torch.where(num_batches_tracked == 0, value, ema * (1.0 - momentum) + value * momentum))


def mask_padded(device):
    """Whether masks on this device pad each row to 128 bits (cuBLASLt's rule
    on CUDA); detail::mask_padded in csrc/checks.h."""
    return torch.device(device).type == "cuda"


def mask_ld(out_features, device):
    """Bits per row of the packed mask: out_features, rounded up to a multiple
    of 128 where the device pads."""
    return (out_features + 127) // 128 * 128 if mask_padded(device) else out_features


def mask_bytes(rows, out_features, device):
    """Bytes of the packed ReLU mask of a (rows, out_features) output:
    ceil(rows * ld / 8). Works on symbolic sizes (the fake kernels use it)."""
    return (rows * mask_ld(out_features, device) + 7) // 8
