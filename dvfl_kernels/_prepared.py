"""Weights prepared once for inference on CPU and reused while their parameters are unchanged.

What an op does to its weights on every call (cast to the compute dtype, concatenate, re-lay out the
temporal taps, pack for oneDNN) is done once per parameter state and kept: every in-place update
through the parameter (an optimizer step, ``load_state_dict``, ``copy_`` under no_grad) bumps its
version counter, a replaced tensor changes its storage, and a write through ``.data`` (which bypasses
the version counter) is caught by comparing ``FINGERPRINT`` sampled values. Entries go with their
parameters (weak references); ``clear_prepared_weights()`` drops them all. Only where no gradient is
needed (``inference_call``): with gradients the ops compute from the parameters themselves.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

# Sampled values per weight / bias compared on each call to catch writes through `.data`: 64 strided
# reads cost ~2 us per tensor, a full compare would read every weight (88 MB for the nano) per clip.
FINGERPRINT = 64


@dataclass
class Prepared:
    owners: tuple  # weak references to the parameters the tensors were made from
    stamp: tuple  # their version counters, storages and shapes when they were made
    samples: tuple  # FINGERPRINT values of each, at the same time
    tensors: tuple  # what `build` returned
    extra: dict = field(default_factory=dict)  # made later from `tensors` (oneDNN's packed layout)


_PREPARED: dict[tuple, Prepared] = {}


def clear_prepared_weights() -> None:
    """Drop every prepared (concatenated / cast / re-laid-out / packed) weight; the next call prepares afresh."""
    _PREPARED.clear()


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


def _sample(t: torch.Tensor) -> torch.Tensor:
    """A strided view of FINGERPRINT of t's values (compared in place; cloned only when stored)."""
    flat = t.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // FINGERPRINT)]


def prepare(kind: tuple, tensors: Sequence[torch.Tensor], build: Callable[[], tuple]) -> Prepared:
    """`build()`'s tensors for these parameters (`kind` names the preparation: op, dtype, layout),
    made again when any parameter changed."""
    owners = [_owner(t) for t in tensors]
    key = (kind, tuple(id(o) for o in owners))
    stamp = tuple((o._version, t.data_ptr(), tuple(t.shape), t.stride()) for o, t in zip(owners, tensors))
    found = _PREPARED.get(key)
    if (found is not None and all(r() is o for r, o in zip(found.owners, owners)) and found.stamp == stamp
            and all(torch.equal(_sample(t), s) for t, s in zip(tensors, found.samples))):
        return found
    with torch.no_grad():
        made = build()
        samples = tuple(_sample(t).clone() for t in tensors)
    drop = (lambda _ref, key=key: _PREPARED.pop(key, None))
    found = Prepared(tuple(weakref.ref(o, drop) for o in owners), stamp, samples, made)
    _PREPARED[key] = found
    return found
