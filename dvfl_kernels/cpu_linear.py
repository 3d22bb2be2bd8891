"""The model's linears on CPU at inference: each GEMM on the implementation this machine runs fastest.

``linear(x, weight, bias, activation=, residual=)`` is ``residual + act(F.linear(x, weight, bias))`` and
``linears(x, [(w1, b1), (w2, b2), ...])`` is ``[F.linear(x, w1, b1), F.linear(x, w2, b2), ...]``. Where
no gradient is needed, on CPU tensors, in float32 or bfloat16 (under CPU autocast, its dtype, as
F.linear would use), outside torch.compile / export / tracing (those record ATen's ops and do their own
packing), they run as ONE call on one of:
- ``aten``: ATen's ``F.linear`` (MKL on x86 builds), then GELU / the residual add as separate ops;
- ``onednn``: oneDNN through ATen's ``torch.ops.mkldnn._linear_pointwise``, the weight reordered once into
  oneDNN's blocked layout, with the bias, the exact GELU (fc1) or the residual add (proj, fc2) fused
  into the GEMM's epilogue.
``linears`` multiplies by the concatenated weights (f and f_temporal read x once) and returns views
of the one output. Which implementation runs is decided per GEMM shape (rows, K, N, dtype, epilogue,
threads) by timing both on this machine the first time the shape comes (``_probe.fastest``), never by
vendor string: MKL takes a generic path on AMD CPUs where oneDNN reaches up to 2.3x its GFLOP/s, while
on an Intel Xeon with AMX the two are within 10% except where the epilogue fuses
(bench/test_bench_gemm_cpu.py, docs/benchmarks.md). ``DVFL_CPU_GEMM=aten|onednn`` forces one.

Prepared weights (concatenated, cast to the compute dtype, packed) are kept per parameter and reused
while the parameter is unchanged: every in-place update through the parameter (an optimizer step,
``load_state_dict``, ``copy_`` under no_grad) bumps its version counter, a replaced tensor changes its
storage, and a write through ``.data`` (which bypasses the version counter) is caught by comparing
``FINGERPRINT`` sampled values; ``clear_prepared_weights()`` drops them all. Entries go with their
parameters. With gradients needed the calls are exactly the reference's ATen ops.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from . import _probe

ACTIVATIONS = ("none", "gelu")
IMPLEMENTATIONS = ("aten", "onednn")
# Sampled values per weight / bias compared on each call to catch writes through `.data`: 64 strided
# reads cost ~2 us per tensor, a full compare would read every weight (88 MB for the nano) per clip.
FINGERPRINT = 64
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

# ("linear", rows rounded up to a power of 2, K, Ns, dtype, epilogue, residual, threads) -> the choice
VERDICTS = _probe.VERDICTS


@dataclass
class _Prepared:
    owners: tuple  # weak references to the parameters the weight was made from
    stamp: tuple  # their version counters, storages and shapes when it was made
    samples: tuple  # FINGERPRINT values of each, at the same time
    weight: torch.Tensor  # (sum N, K) in the compute dtype
    bias: torch.Tensor | None
    packed: torch.Tensor | None = None  # oneDNN's layout of `weight`, made when first needed


_PREPARED: dict[tuple, _Prepared] = {}


def clear_prepared_weights() -> None:
    """Drop every prepared (concatenated / cast / packed) weight; the next call prepares afresh."""
    _PREPARED.clear()


def implementation_override() -> str | None:
    mode = os.environ.get("DVFL_CPU_GEMM", "measure")
    if mode == "measure":
        return None
    if mode not in IMPLEMENTATIONS or (mode == "onednn" and not _ONEDNN):
        raise ValueError(f"DVFL_CPU_GEMM: expected 'measure', 'aten' or 'onednn' (oneDNN "
                         f"{'available' if _ONEDNN else 'not built in this torch'}), got {mode!r}")
    return mode


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled("cpu") and x.dtype in (torch.float32, torch.bfloat16):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def _tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing() or torch.jit.is_scripting()


def _engine_applies(x: torch.Tensor, tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> bool:
    if _tracing() or type(x) is not torch.Tensor or x.device.type != "cpu" or x.numel() == 0:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *tensors)):
        return False
    if any(type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter) for t in tensors):
        return False  # tensor subclasses (FakeTensor, DTensor...) keep their own dispatch
    if any(t.device.type != "cpu" or t.is_inference() for t in tensors):
        return False  # inference tensors (weights made inside inference_mode) keep no version counter
    if torch.is_autocast_enabled("cpu"):  # autocast casts each operand to its dtype
        floats = (torch.float32, torch.bfloat16)
        return dtype == torch.bfloat16 and x.dtype in floats and all(t.dtype in floats for t in tensors)
    # outside autocast mixed dtypes are ATen's error, as in the reference
    return x.dtype in (torch.float32, torch.bfloat16) and all(t.dtype == x.dtype for t in tensors)


def _owner(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base  # h's (C, C, 1, 1) weight arrives as a flattened view


def _sample(t: torch.Tensor) -> torch.Tensor:
    """A strided view of FINGERPRINT of t's values (compared in place; cloned only when stored)."""
    flat = t.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // FINGERPRINT)]


def _prepare(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], dtype) -> _Prepared:
    """The concatenated weight / bias in `dtype` for these parameters, remade when any changed."""
    tensors = [t for t in (*weights, *biases) if t is not None]
    owners = [_owner(t) for t in tensors]
    key = (tuple(id(o) for o in owners), tuple(b is None for b in biases), dtype)
    stamp = tuple((o._version, t.data_ptr(), tuple(t.shape), t.stride()) for o, t in zip(owners, tensors))
    found = _PREPARED.get(key)
    if (found is not None and all(r() is o for r, o in zip(found.owners, owners)) and found.stamp == stamp
            and all(torch.equal(_sample(t), s) for t, s in zip(tensors, found.samples))):
        return found
    with torch.no_grad():
        weight = torch.cat([w.detach().reshape(w.shape[0], -1) for w in weights]).to(dtype).contiguous()
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else weight.new_zeros(w.shape[0])
                              for w, b in zip(weights, biases)]).to(dtype)
        samples = tuple(_sample(t).clone() for t in tensors)
    drop = (lambda _ref, key=key: _PREPARED.pop(key, None))
    found = _Prepared(tuple(weakref.ref(o, drop) for o in owners), stamp, samples, weight, bias)
    _PREPARED[key] = found
    return found


def _choose(key: tuple, run: dict) -> str:
    forced = implementation_override()
    if forced is not None:
        return forced
    return _probe.fastest(key, run) if _ONEDNN else "aten"


def _gemm(x: torch.Tensor, weights, biases, activation: str, residual: torch.Tensor | None) -> torch.Tensor | None:
    """The engine's call, or None where it does not apply (the caller then runs the reference ops)."""
    tensors = [t for t in (*weights, *biases) if t is not None]
    dtype = _compute_dtype(x)
    if not _engine_applies(x, tensors, dtype):
        return None
    if residual is not None and (residual.dtype != dtype or residual.shape != (*x.shape[:-1], sum(w.shape[0] for w in weights))):
        return None  # autocast: the reference adds a bf16 GEMM output to a float32 stream
    k = x.shape[-1]
    if any(w.dim() < 2 or w.numel() != w.shape[0] * k or (b is not None and b.shape != w.shape[:1])
           for w, b in zip(weights, biases)):
        return None  # F.linear raises its own shape error, per layer
    prepared = _prepare(weights, biases, dtype)
    n = prepared.weight.shape[0]
    rows = x.numel() // k
    x2 = x.reshape(rows, k).to(dtype).contiguous()
    res2 = None if residual is None else residual.reshape(rows, n).contiguous()

    def aten():
        out = F.linear(x2, prepared.weight, prepared.bias)
        if activation == "gelu":
            out = F.gelu(out)
        return out if res2 is None else out.add_(res2)

    def onednn():
        if prepared.packed is None:
            prepared.packed = torch.ops.mkldnn._reorder_linear_weight(prepared.weight, rows)
        if res2 is not None and activation == "none":
            return torch.ops.mkldnn._linear_pointwise.binary(x2, res2, prepared.packed, prepared.bias, "add")
        out = torch.ops.mkldnn._linear_pointwise(x2, prepared.packed, prepared.bias, activation, [],
                                                 "none" if activation == "gelu" else "")
        return out if res2 is None else out.add_(res2)  # GELU, then the residual

    key = ("linear", 1 << max(rows - 1, 0).bit_length(), k, tuple(w.shape[0] for w in weights), dtype,
           activation, residual is not None, torch.get_num_threads())
    impl = _choose(key, {"aten": aten, "onednn": onednn})
    return (onednn if impl == "onednn" else aten)().reshape(*x.shape[:-1], n)


def _check_backend(backend: str) -> None:
    if backend not in ("auto", "reference", "cpu", "cuda", "triton"):
        raise ValueError(f"backend: expected 'auto', 'reference', 'cpu', 'cuda' or 'triton', got {backend!r}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, activation: str = "none",
           residual: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """``residual + act(F.linear(x, weight, bias))`` (act: "none" or exact "gelu"; residual optional).
    `weight` may carry trailing 1-sized dims (a 1x1 convolution's weight). backend "reference" runs
    those ATen ops as written; any other runs the engine where it applies (module docstring)."""
    _check_backend(backend)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if backend != "reference":
        out = _gemm(x, [weight], [bias], activation, residual)
        if out is not None:
            return out
    out = F.linear(x, weight.reshape(weight.shape[0], -1) if weight.dim() > 2 else weight, bias)
    if activation == "gelu":
        out = F.gelu(out)
    return out if residual is None else residual + out


def linears(x: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
            backend: str = "auto") -> list[torch.Tensor]:
    """``[F.linear(x, w, b) for w, b in layers]``, as one GEMM over the concatenated weights where the
    engine applies (the outputs are then column slices of one tensor)."""
    _check_backend(backend)
    weights, biases = [w for w, _ in layers], [b for _, b in layers]
    out = None if backend == "reference" else _gemm(x, weights, biases, "none", None)
    if out is None:
        return [F.linear(x, w, b) for w, b in layers]
    return list(out.split([w.shape[0] for w in weights], dim=-1))
