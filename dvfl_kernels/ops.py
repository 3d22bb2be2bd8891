"""Public dvfl ops: argument checks, then dispatch to a backend.

Backends: "reference" (plain PyTorch, always there), "cpu" (C++ extension), "cuda" (CUDA C++
extension), "triton". ``backend="auto"`` picks the fast backend for the tensors' device and falls
back to the reference with a one-time warning naming why. Asking explicitly for a backend that is
not built for an op raises ``BackendUnavailableError`` naming what is missing.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

from . import _checks, reference

BACKENDS = ("reference", "cpu", "cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend is not built or cannot run these tensors."""


# op name -> backend name -> implementation. Fast backends register themselves here when built.
_IMPLEMENTATIONS: dict[str, dict[str, Callable]] = {
    "spatial_context": {"reference": reference.spatial_context},
    "temporal_context": {"reference": reference.temporal_context},
    "modulate": {"reference": reference.modulate},
    "kd_ce_loss": {"reference": reference.kd_ce_loss},
}
_WARNED: set[tuple[str, str]] = set()


def register_backend(op: str, backend: str, impl: Callable) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    _IMPLEMENTATIONS[op][backend] = impl


def available_backends(op: str) -> tuple[str, ...]:
    """Backends built for `op` in this installation."""
    return tuple(_IMPLEMENTATIONS[op])


def _auto_choice(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "cpu"


def _why_missing(backend: str, device: torch.device) -> str:
    if backend == "triton" and device.type != "cuda":
        return "Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"
    if backend == "cuda" and device.type != "cuda":
        return "the CUDA kernels need CUDA tensors"
    return "no kernel for this op is built in this installation"


def select_backend(op: str, backend: str, device: torch.device) -> Callable:
    """The implementation of `op` to run on `device` for the requested `backend`."""
    impls = _IMPLEMENTATIONS[op]
    if backend == "auto":
        choice = _auto_choice(device)
        if choice in impls:
            return impls[choice]
        key = (op, choice)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(
                f"dvfl_kernels.{op}: backend 'auto' wanted '{choice}' for {device.type} tensors but "
                f"{_why_missing(choice, device)}; using the plain-PyTorch reference",
                stacklevel=3,
            )
        return impls["reference"]
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in impls:
        raise BackendUnavailableError(
            f"dvfl_kernels.{op}: backend {backend!r} is not available: {_why_missing(backend, device)} "
            f"(available: {available_backends(op)})"
        )
    return impls[backend]


def spatial_context(
    z: torch.Tensor,
    g: torch.Tensor,
    weights: Sequence[torch.Tensor],
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Spatial focal context A_s (N, H, W, C) from z (N, H, W, C), gates g (N, H, W, L+1) and L
    depthwise kernels (C, 1, k, k). See ``reference.spatial_context`` for the maths."""
    _checks.check_spatial_context(z, g, weights)
    return select_backend("spatial_context", backend, z.device)(z, g, list(weights), bool(normalize))


def temporal_context(
    z_t: torch.Tensor,
    g_t: torch.Tensor,
    weights: Sequence[torch.Tensor],
    num_frames: int,
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Temporal focal context A_t (N, H, W, C) from z_t (N, H, W, C) with N = B * num_frames, gates
    g_t (N, H, W, L+1) and L dense kernels (C, C, k). See ``reference.temporal_context``."""
    _checks.check_temporal_context(z_t, g_t, weights, num_frames)
    impl = select_backend("temporal_context", backend, z_t.device)
    return impl(z_t, g_t, list(weights), num_frames, bool(normalize))


def modulate(q: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """q * m_s * m_t for three (N, H, W, C) tensors."""
    _checks.check_modulate(q, m_s, m_t)
    return select_backend("modulate", backend, q.device)(q, m_s, m_t)


def kd_ce_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    backend: str = "auto",
):
    """Distillation loss (total, kd, ce): alpha * T^2 KL(teacher_T || student_T) + (1 - alpha) CE.

    target: int labels (B,) or soft targets (B, K). Half-precision logits are computed in float32
    and the losses returned in float32. See ``reference.kd_ce_loss``."""
    _checks.check_kd_ce_loss(student_logits, teacher_logits, target, alpha, temperature, label_smoothing, reduction)
    impl = select_backend("kd_ce_loss", backend, student_logits.device)
    return impl(student_logits, teacher_logits, target, float(alpha), float(temperature), float(label_smoothing), reduction)
