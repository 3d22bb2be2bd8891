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

Inside an int8 model's forward (``cpu_int8``), a GEMM its plan holds may run in int8 instead, where
that is measured faster for the shape.

Prepared weights (concatenated, cast to the compute dtype, packed) are made once per parameter state
and reused (``_prepared``: version counters, storages and a digest of every byte; ``clear_prepared_weights()``
drops them). With gradients needed the calls are exactly the reference's ATen ops.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

from . import _prepared, _probe, cpu_int8
from .ops import BACKENDS

ACTIVATIONS = ("none", "gelu")
IMPLEMENTATIONS = ("aten", "onednn")
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# oneDNN's bf16 linear needs AVX512-BF16, AVX512BW/VL/DQ or AVX-NE-CONVERT; on an AVX2-only CPU (AMD
# EPYC Zen 3) its weight reorder raises, so it is no candidate there, however the probe file reads
_ONEDNN_BF16 = _ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear runs in `dtype` on this CPU (float32 wherever oneDNN is built in)."""
    return _ONEDNN_BF16 if dtype == torch.bfloat16 else _ONEDNN


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


def _engine_applies(x: torch.Tensor, tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> bool:
    if not _prepared.inference_call(x, tensors):
        return False
    if torch.is_autocast_enabled("cpu"):  # autocast casts each operand to its dtype
        floats = (torch.float32, torch.bfloat16)
        return dtype == torch.bfloat16 and x.dtype in floats and all(t.dtype in floats for t in tensors)
    # outside autocast mixed dtypes are ATen's error, as in the reference
    return x.dtype in (torch.float32, torch.bfloat16) and all(t.dtype == x.dtype for t in tensors)


def _prepare(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], dtype) -> _prepared.Prepared:
    """(the concatenated weight, bias) in `dtype` for these parameters."""
    def build():
        weight = torch.cat([w.detach().reshape(w.shape[0], -1) for w in weights]).to(dtype).contiguous()
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else weight.new_zeros(w.shape[0])
                              for w, b in zip(weights, biases)]).to(dtype)
        return weight, bias

    kind = ("linear", tuple(b is None for b in biases), dtype)
    return _prepared.prepare(kind, [t for t in (*weights, *biases) if t is not None], build)


def _choose(key: tuple, run: dict, dtype: torch.dtype) -> str:
    forced = implementation_override()
    if forced == "onednn" and not onednn_runs(dtype):
        raise ValueError(f"DVFL_CPU_GEMM=onednn: oneDNN's {dtype} linear does not run on this CPU "
                         f"(bf16 needs AVX512-BF16, AVX512BW/VL/DQ or AVX-NE-CONVERT); use 'measure' or 'aten'")
    if forced is not None:
        return forced
    return _probe.fastest(key, run) if onednn_runs(dtype) else "aten"


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
    n = sum(w.shape[0] for w in weights)
    rows = x.numel() // k
    x2 = x.reshape(rows, k).to(dtype).contiguous()
    res2 = None if residual is None else residual.reshape(rows, n).contiguous()
    prepared = None

    def float_weights() -> _prepared.Prepared:  # made only where a float implementation runs
        nonlocal prepared
        if prepared is None:
            prepared = _prepare(weights, biases, dtype)
        return prepared

    def aten():
        weight, bias = float_weights().tensors
        out = F.linear(x2, weight, bias)
        if activation == "gelu":
            out = F.gelu(out)
        return out if res2 is None else out.add_(res2)

    def onednn():
        entry = float_weights()
        weight, bias = entry.tensors
        packed = entry.extra.get("packed")
        if packed is None:
            packed = entry.extra["packed"] = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        if res2 is not None and activation == "none":
            return torch.ops.mkldnn._linear_pointwise.binary(x2, res2, packed, bias, "add")
        out = torch.ops.mkldnn._linear_pointwise(x2, packed, bias, activation, [],
                                                 "none" if activation == "gelu" else "")
        return out if res2 is None else out.add_(res2)  # GELU, then the residual

    key = ("linear", 1 << max(rows - 1, 0).bit_length(), k, tuple(w.shape[0] for w in weights), dtype,
           activation, residual is not None, torch.get_num_threads())

    def float_gemm():
        return (onednn if _choose(key, {"aten": aten, "onednn": onednn}, dtype) == "onednn" else aten)()

    # an int8 model's forward offers its int8 GEMM (its calibration records x2 and offers none)
    handler = cpu_int8.active()
    int8 = None if handler is None else handler.gemm(weights, x2, activation, res2, dtype)
    if int8 is not None and cpu_int8.int8_pays(key[:-1], int8, float_gemm, handler.measured):
        return int8().reshape(*x.shape[:-1], n)
    return float_gemm().reshape(*x.shape[:-1], n)


def _check_backend(backend: str) -> None:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, activation: str = "none",
           residual: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """``residual + act(F.linear(x, weight, bias))``, on the implementation this machine runs fastest.

    Args:
        x: (..., K) float32 / bfloat16 (CPU autocast's dtype rules apply) or any dtype F.linear takes.
        weight: (N, K), or (N, K, 1, ...) (a 1x1 convolution's weight).
        bias: (N,) or None.
        activation: "none" or "gelu" (exact), applied before the residual.
        residual: (..., N) added last, or None; never written to.
        backend: "reference" runs the ATen ops as written; any other runs the engine where it
            applies (module docstring): CPU, no gradient needed, not traced.
    Returns:
        (..., N). With a gradient needed it is exactly ATen's ops (autograd saves what they save).
    """
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


def mlp(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor | None, fc2_weight: torch.Tensor,
        fc2_bias: torch.Tensor | None, residual: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """``residual + fc2(GELU(fc1(x)))`` (exact GELU).

    Args:
        x: (..., C).
        fc1_weight, fc1_bias: (H, C), (H,) or None.
        fc2_weight, fc2_bias: (C, H), (C,) or None.
        residual: (..., C) added last, or None; never written to.
        backend: as for ``linear``.
    Returns:
        (..., C): the two ``linear`` calls (GELU fused into fc1, the residual into fc2), or, inside an
        int8 model's forward whose plan holds both GEMMs, one int8 pair in which fc1 writes uint8 on
        fc2's input grid (no float hidden tensor, no second quantization pass), where that pair is
        measured faster than the float MLP for the shape (a unit: the pair or the float MLP).
    """
    _check_backend(backend)

    def separate() -> torch.Tensor:
        hidden = linear(x, fc1_weight, fc1_bias, activation="gelu", backend=backend)
        return linear(hidden, fc2_weight, fc2_bias, residual=residual, backend=backend)

    int8 = None if backend == "reference" else _int8_mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, residual)
    if int8 is None:
        return separate()
    run, shape_key, measured = int8
    with cpu_int8.running(None):  # the float candidate and fallback run without the plan
        if not cpu_int8.int8_pays(shape_key, run, separate, measured):
            return separate()
    return run().reshape(*x.shape[:-1], fc2_weight.shape[0])


def _int8_mlp(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, residual):
    """(the int8 pair's call, its shape key, whether measured) where an int8 plan holds both GEMMs
    and the engine applies, else None."""
    tensors = [t for t in (fc1_weight, fc1_bias, fc2_weight, fc2_bias) if t is not None]
    dtype = _compute_dtype(x)
    if not _engine_applies(x, tensors, dtype) or fc1_weight.dim() != 2 or fc2_weight.dim() != 2:
        return None  # (first: under torch.compile the handler, a context variable, must not be read)
    handler = cpu_int8.active()
    if handler is None:
        return None
    (hidden, k), n = fc1_weight.shape, fc2_weight.shape[0]
    if x.shape[-1] != k or fc2_weight.shape[1] != hidden:
        return None  # F.linear raises its own shape error
    if residual is not None and (residual.dtype != dtype or residual.shape != (*x.shape[:-1], n)):
        return None
    rows = x.numel() // k
    x2 = x.reshape(rows, k).to(dtype).contiguous()
    res2 = None if residual is None else residual.reshape(rows, n).contiguous()
    run = handler.mlp(fc1_weight, fc2_weight, x2, res2, dtype)
    if run is None:
        return None
    shape_key = ("mlp", 1 << max(rows - 1, 0).bit_length(), k, hidden, n, dtype, residual is not None)
    return run, shape_key, handler.measured


def linears(x: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
            backend: str = "auto") -> list[torch.Tensor]:
    """``[F.linear(x, w, b) for w, b in layers]``, reading x once.

    Args:
        x: (..., K).
        layers: [(weight (N_i, K), bias (N_i,) or None), ...].
        backend: as for ``linear``.
    Returns:
        [(..., N_i), ...]: where the engine applies, column slices of one (..., sum N_i) output of one
        GEMM over the concatenated weights (prepared once per weight state); otherwise separate
        tensors from F.linear.
    """
    _check_backend(backend)
    weights, biases = [w for w, _ in layers], [b for _, b in layers]
    out = None if backend == "reference" else _gemm(x, weights, biases, "none", None)
    if out is None:
        return [F.linear(x, w, b) for w, b in layers]
    return list(out.split([w.shape[0] for w in weights], dim=-1))
