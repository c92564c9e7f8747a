"""Lossless compressed storage of ReLU outputs that a later layer keeps for
backward (see docs/compress.md)."""

import weakref
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["compress_relu_activations"]

# Autograd nodes whose outputs are ReLU outputs (mostly exact zeros).
# DeadAwarePReLU/dead_prelu is not here: a PReLU output is rarely zero.
_RELU_NODES = frozenset({"FusedLinearReluBackward"})
_PACKABLE = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})


class _Packed:
    """A ReLU output as (bits, non-zero values), plus a weak handle on the
    dense tensor to detect in-place changes made after it was saved."""

    __slots__ = ("__weakref__", "bits", "shape", "source", "values", "version")

    def __init__(self, bits: Tensor, values: Tensor, source: Tensor) -> None:
        self.bits, self.values, self.shape = bits, values, source.shape
        self.source = weakref.ref(source)
        self.version = source._version

    def nbytes(self) -> int:
        return self.bits.nbytes + self.values.nbytes


class _ViewOf:
    """A saved full-size contiguous view (e.g. nn.Linear's flattening
    reshape of a (*, features) input) of a packed ReLU output."""

    __slots__ = ("packed", "shape")

    def __init__(self, packed: _Packed, shape: torch.Size) -> None:
        self.packed, self.shape = packed, shape


class _Outer:
    """What an enclosing saved_tensors_hooks pair packed, with its unpack."""

    __slots__ = ("obj", "unpack")

    def __init__(self, obj: Any, unpack: Any) -> None:
        self.obj, self.unpack = obj, unpack


def _is_relu_output(t: Tensor) -> bool:
    # Only a tensor exactly as our operator returned it: never modified in
    # place (version 0, and a modification under grad would also have replaced
    # grad_fn), not a view, contiguous, a plain CPU tensor of a float dtype.
    # Anything else (casts, CUDA, subclasses, functorch wrappers, views other
    # than whole reshapes: see _whole_view_base) is saved as usual.
    fn = t.grad_fn
    return (
        fn is not None
        and fn.name() in _RELU_NODES
        and t._version == 0
        and type(t) is Tensor
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and t.dtype in _PACKABLE
        and not t._is_view()
        and t.is_contiguous()
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
    )


def _whole_view_base(t: Tensor) -> Optional[Tensor]:
    """The base of t if t is a view of all of it, element for element (same
    storage offset, dtype and size, both contiguous): a reshape, not a slice,
    a transpose or a reinterpretation."""
    base = t._base
    if (
        base is None
        or type(t) is not Tensor
        or t.dtype != base.dtype
        or t.numel() != base.numel()
        or t.storage_offset() != base.storage_offset()
        or not t.is_contiguous()
    ):
        return None
    return base


class compress_relu_activations(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: ReLU outputs of ``fused_linear_relu`` /
    :class:`~torch_relu_ext.FusedLinearReLU` that a later operation saves for
    backward are kept as a 1-bit-per-element mask plus their non-zero
    elements, and rebuilt (bitwise equal) only when backward needs them.
    Everything else is saved as usual (or by the enclosing saved-tensor hooks,
    e.g. ``save_on_cpu``). CPU only: CUDA tensors are saved uncompressed.

    ``stats`` counts the tensors compressed, their dense and packed bytes and
    the dense tensors rebuilt in backward.

    Gradients are bitwise those of the same code without the context. If a
    compressed tensor is modified in place after it was saved, backward
    raises the same kind of error autograd raises without the context, as
    long as the tensor still exists (docs/compress.md: after it is deleted,
    backward uses the values saved at pack time).

    Example::

        >>> model = torch.nn.Sequential(FusedLinearReLU(64, 256), torch.nn.Linear(256, 10))
        >>> with torch_relu_ext.compress_relu_activations():
        ...     loss = model(torch.randn(32, 64)).sum()
        >>> loss.backward()
    """

    def __init__(self) -> None:
        super().__init__(self._pack, self._unpack)
        self._outer: Optional[tuple] = None
        # id(dense) -> (weakref(dense), weakref(_Packed)): one copy per tensor
        # when several operations save the same output.
        self._cache: dict = {}
        # Counters (not reset on re-entry): tensors compressed, their dense and
        # packed bytes, and how many unpacks rebuilt a dense tensor.
        self.stats = {"compressed": 0, "dense_bytes": 0, "packed_bytes": 0, "rebuilt": 0}

    def __enter__(self) -> "compress_relu_activations":
        self._outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
        super().__enter__()
        return self

    def __exit__(self, *args: object) -> None:
        super().__exit__(*args)
        self._outer = None
        self._cache.clear()

    def _pack(self, t: Tensor) -> Any:
        if t._is_view():
            base = _whole_view_base(t)
            if base is not None and _is_relu_output(base):
                packed = self._pack_output(base)
                if isinstance(packed, _Packed):
                    return _ViewOf(packed, t.shape)
        elif _is_relu_output(t):
            packed = self._pack_output(t)
            if packed is not None:
                return packed
        if self._outer is not None:
            return _Outer(self._outer[0](t), self._outer[1])
        return t

    def _pack_output(self, t: Tensor) -> Optional[_Packed]:
        """t packed (one copy per tensor), or None where packing does not pay."""
        hit = self._cache.get(id(t))
        if hit is not None and hit[0]() is t:
            packed = hit[1]()
            if packed is not None and packed.version == t._version:
                return packed
        bits, values = torch.ops.relu_ext.relu_pack(t.detach())
        if bits.nbytes + values.nbytes < t.nbytes:
            packed = _Packed(bits, values, t)
            self.stats["compressed"] += 1
            self.stats["dense_bytes"] += t.nbytes
            self.stats["packed_bytes"] += packed.nbytes()
            key = id(t)
            forget = lambda _, key=key, cache=self._cache: cache.pop(key, None)  # noqa: E731
            self._cache[key] = (weakref.ref(t, forget), weakref.ref(packed))
            return packed
        return None

    def _unpack(self, obj: Any) -> Tensor:
        if isinstance(obj, _ViewOf):
            return self._unpack(obj.packed).view(obj.shape)
        if isinstance(obj, _Packed):
            dense = obj.source()
            if dense is not None:
                if dense._version != obj.version:
                    raise RuntimeError(
                        "compress_relu_activations: one of the variables needed for gradient "
                        f"computation has been modified by an inplace operation: [{dense.dtype} "
                        f"{list(dense.shape)}], an output of fused_linear_relu, is at version "
                        f"{dense._version}; expected version {obj.version} instead."
                    )
                return dense  # still alive and unchanged: nothing to rebuild
            self.stats["rebuilt"] += 1
            return torch.ops.relu_ext.relu_unpack(obj.bits, obj.values, list(obj.shape))
        if isinstance(obj, _Outer):
            return obj.unpack(obj.obj)
        return obj
