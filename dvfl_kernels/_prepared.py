"""Weights prepared once for inference on CPU and reused while their parameters are unchanged.

What an op does to its weights on every call (cast to the compute dtype, concatenate, re-lay out the
temporal taps, pack for oneDNN) is done once per parameter state and kept. A prepared entry is used
again only if every parameter it came from is the same tensor (storage, shape, strides), at the same
version, and holds the same bytes: a digest of every byte (``content_digest``, csrc/weights/) is
compared on each call. The digest is what sees writes that skip the version counter: ``p.data[i] +=
...``, ``p.data.copy_(...)``, writes through ``p.detach().numpy()`` or any other alias, pruning masks
applied in place, EMA updates through ``.data``. It costs one read of the weights per call, against
the cast and re-layout it saves (docs/kernels.md, "Prepared weights", has the timing). Entries go with their parameters (weak references); ``clear_prepared_weights()``
drops them all. Only where no gradient is needed (``inference_call``): with gradients the ops compute
from the parameters themselves.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .runtime import RUNTIME


@dataclass
class Prepared:
    owners: tuple  # weak references to the parameters the tensors were made from
    stamp: tuple  # their version counters, storages and shapes when they were made
    digests: tuple  # each parameter's content digest then (or a copy, without the C++ extension)
    tensors: tuple  # what `build` returned
    extra: dict = field(default_factory=dict)  # made later from `tensors` (oneDNN's packed layout)


def clear_prepared_weights() -> None:
    """Drop every prepared (concatenated / cast / re-laid-out / packed) weight; the next call prepares afresh."""
    RUNTIME.prepared.clear()


def tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing() or torch.jit.is_scripting()


def inference_call(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> bool:
    """Whether a call on activations `x` may use prepared `weights`: eager, CPU, no gradient needed,
    plain tensors (subclasses keep their own dispatch), weights with a version counter (not inference
    tensors, made inside inference_mode)."""
    if tracing() or type(x) is not torch.Tensor or x.device.type != "cpu" or x.numel() == 0:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *weights)):
        return False
    if any(type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter) for t in weights):
        return False
    return not any(t.device.type != "cpu" or t.is_inference() for t in weights)


def _owner(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base  # h's (C, C, 1, 1) weight arrives as a flattened view


def _digest(t: torch.Tensor):
    """Every byte of t in one number (dvfl_kernels._C.content_digest); without the extension, a copy."""
    try:
        from ._C import content_digest
    except ImportError:
        return t.detach().clone()
    return content_digest(t.detach())


def _unchanged(t: torch.Tensor, digest) -> bool:
    return torch.equal(t.detach(), digest) if isinstance(digest, torch.Tensor) else _digest(t) == digest


def prepare(kind: tuple, tensors: Sequence[torch.Tensor], build: Callable[[], tuple]) -> Prepared:
    """`build()`'s tensors for these parameters (`kind` names the preparation: op, dtype, layout),
    made again when any parameter changed."""
    owners = [_owner(t) for t in tensors]
    key = (kind, tuple(id(o) for o in owners))
    stamp = tuple((o._version, t.data_ptr(), tuple(t.shape), t.stride()) for o, t in zip(owners, tensors))
    store = RUNTIME.prepared  # (key -> Prepared) the entry's weak references drop it from
    found = store.get(key)
    if (found is not None and all(r() is o for r, o in zip(found.owners, owners)) and found.stamp == stamp
            and all(_unchanged(t, d) for t, d in zip(tensors, found.digests))):
        return found
    with torch.no_grad():
        made = build()
        digests = tuple(_digest(t) for t in tensors)
    drop = (lambda _ref, key=key: store.pop(key, None))
    found = Prepared(tuple(weakref.ref(o, drop) for o in owners), stamp, digests, made)
    store[key] = found
    return found
