"""Small tools around the operators."""

from typing import Callable, Iterable

import torch

__all__ = ["saved_tensor_bytes"]


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while running
    ``fn()`` (measured with saved_tensors_hooks), leaving out the storages of
    ``exclude`` (typically the parameters: they exist anyway). Inside
    ``compress_relu_activations()`` it sees only what that context passes on,
    not the packed tensors: use the context's ``stats`` there.

    Example::

        >>> layer = torch_relu_ext.FusedLinearReLU(64, 256)
        >>> saved_tensor_bytes(lambda: layer(torch.randn(32, 64)), layer.parameters())
        9216
    """
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    seen, total = set(), 0
    for t in saved:
        ptr = t.untyped_storage().data_ptr()
        if ptr in skip or ptr in seen:
            continue
        seen.add(ptr)
        total += t.untyped_storage().nbytes()
    return total
