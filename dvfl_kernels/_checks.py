"""Argument validation shared by every backend: each failure names the argument and what was expected.

Checks that need tensor *values* (label range, soft targets being distributions) read the values
of CPU tensors. For CUDA tensors no check ever synchronises with the host: the fused kernels mark
invalid rows with NaN losses and gradients (no extra launch), and the reference backend queues
device-side asserts (``torch._assert_async``, a few tiny kernels).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")
SOFT_TARGET_TOL = 1e-4  # |sum_k q_k - 1| allowed for soft targets; the fused kernels use the same
# The largest distillation temperature accepted. T^2 KL(p_T || q_T) shrinks the KL like 1/T^2 and
# scales it back up: in float32 the plain (reference) formula is off by 5e-4 relative at T = 100 and
# by 4% at T = 1000, so the backends could no longer agree on one answer. The paper uses T <= 15.
MAX_KD_TEMPERATURE = 100.0


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name: str, t, ndim: int | None = None, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got {_describe(t)}")
    if floating and t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float16/bfloat16/float32/float64 tensor, got {_describe(t)}")


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, dtype: bool = True) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; expected one device")
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; expected one dtype")


def _check_gates(g: torch.Tensor, g_name: str, z: torch.Tensor, z_name: str, num_levels: int) -> None:
    check_tensor(g_name, g, ndim=4)
    check_same(g_name, g, z_name, z)
    expected = tuple(z.shape[:3]) + (num_levels + 1,)
    if tuple(g.shape) != expected:
        raise ValueError(f"{g_name}: expected shape {expected} (N, H, W, levels+1), got {tuple(g.shape)}")


def _check_weights(weights, name: str, z: torch.Tensor, expected_prefix, ndim: int) -> None:
    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise ValueError(f"{name}: expected a non-empty list of kernels (one per focal level)")
    for level, w in enumerate(weights):
        wname = f"{name}[{level}]"
        check_tensor(wname, w, ndim=ndim)
        # float32 weights with half-precision activations: what autocast hands the op
        mixed = w.dtype == torch.float32 and z.dtype in (torch.float16, torch.bfloat16)
        check_same(wname, w, "the activations", z, dtype=not mixed)
        k = w.shape[-1]
        if tuple(w.shape[: len(expected_prefix)]) != tuple(expected_prefix) or k % 2 == 0:
            raise ValueError(f"{wname}: expected shape {tuple(expected_prefix)} + odd kernel size, got {tuple(w.shape)}")


def check_spatial_context(z, g, weights) -> None:
    check_tensor("z", z, ndim=4)
    channels = z.shape[-1]
    _check_weights(weights, "weights", z, (channels, 1), ndim=4)
    for level, w in enumerate(weights):
        if w.shape[-2] != w.shape[-1]:
            raise ValueError(f"weights[{level}]: expected a square k x k kernel, got {tuple(w.shape)}")
    _check_gates(g, "g", z, "z", len(weights))


def check_temporal_context(z_t, g_t, weights, num_frames) -> None:
    check_tensor("z_t", z_t, ndim=4)
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"num_frames: expected a positive int, got {num_frames!r}")
    if z_t.shape[0] % num_frames != 0:
        raise ValueError(
            f"z_t: the batch dimension N={z_t.shape[0]} must be clips x num_frames, "
            f"but num_frames={num_frames} does not divide it"
        )
    channels = z_t.shape[-1]
    _check_weights(weights, "weights", z_t, (channels, channels), ndim=3)
    _check_gates(g_t, "g_t", z_t, "z_t", len(weights))


def check_modulate(q, m_s, m_t) -> None:
    check_tensor("q", q, ndim=4)
    for name, t in (("m_s", m_s), ("m_t", m_t)):
        check_tensor(name, t, ndim=4)
        check_same(name, t, "q", q)
        if t.shape != q.shape:
            raise ValueError(f"{name}: expected shape {tuple(q.shape)} (that of q), got {tuple(t.shape)}")


def check_upstream(grad, like: torch.Tensor, like_name: str) -> None:
    """A backward op's upstream gradient: floating, on `like`'s device and of its shape (any float dtype: cast)."""
    check_tensor("grad", grad)
    check_same("grad", grad, like_name, like, dtype=False)
    if grad.shape != like.shape:
        raise ValueError(f"grad: expected shape {tuple(like.shape)} (that of {like_name}), got {tuple(grad.shape)}")


def check_saved(pre, mean, z: torch.Tensor, levels: int, mean_shape: tuple) -> None:
    """What a context op's forward saved for its backward (with save=True): pre-activations (levels, *z's
    shape) and means `mean_shape`, both in the accumulation dtype (float64 for float64, else float32)."""
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    for name, t, shape in (("pre", pre, (levels, *z.shape)), ("mean", mean, tuple(mean_shape))):
        check_tensor(name, t)
        check_same(name, t, "the activations", z, dtype=False)
        if tuple(t.shape) != shape or t.dtype != acc:
            raise ValueError(f"{name}: expected the forward's saved {acc} tensor of shape {shape} (a forward with "
                             f"save=True), got {_describe(t)}")


def _check_scalar(name: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a Python number, got {type(value).__name__}")
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name}: expected a finite value in {interval}, got {value!r}")


def _require(cond, message: str, target: torch.Tensor, kernel_checks_values: bool) -> None:
    """Fail when `cond()` (a bool scalar tensor) is false. Eager CPU tensors: raise now. GPU tensors
    and compiled graphs: a device-side assert (no host sync), unless the backend's kernel marks bad
    rows with NaN itself."""
    if kernel_checks_values and (target.device.type != "cpu" or torch.compiler.is_compiling()):
        return
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(cond()):
            raise ValueError(message)
    else:  # traced graphs cannot branch on values; a device-side assert works in both
        torch._assert_async(cond(), message)


def _labels_in_range(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    low, high = torch.aminmax(target)  # one pass over the labels
    return (low >= 0) & (high < num_classes)


def check_kd_ce_loss(
    student_logits, teacher_logits, target, alpha, temperature, label_smoothing, reduction, kernel_checks_values=False
) -> None:
    """kernel_checks_values: the backend's kernel marks invalid rows (bad label, soft target not a
    distribution) with NaN itself, so no device-side assert is queued for GPU tensors."""
    check_tensor("student_logits", student_logits, ndim=2)
    check_tensor("teacher_logits", teacher_logits, ndim=2)
    batch, num_classes = student_logits.shape
    if batch == 0 or num_classes == 0:
        raise ValueError(f"student_logits: expected shape (B, K) with B >= 1 and K >= 1, got {tuple(student_logits.shape)}")
    check_same("teacher_logits", teacher_logits, "student_logits", student_logits)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits: expected shape {tuple(student_logits.shape)} (that of student_logits), "
            f"got {tuple(teacher_logits.shape)}"
        )
    _check_scalar("alpha", alpha, 0.0, 1.0)
    _check_scalar("temperature", temperature, 0.0, MAX_KD_TEMPERATURE, lo_open=True)
    _check_scalar("label_smoothing", label_smoothing, 0.0, 1.0, hi_open=True)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    check_same("target", target, "student_logits", student_logits, dtype=False)
    if target.is_floating_point():
        if tuple(target.shape) != (batch, num_classes):
            raise ValueError(
                f"target: soft targets must have shape {(batch, num_classes)} (B, K), got {tuple(target.shape)}"
            )
        if target.dtype not in (torch.float32, torch.float64):
            # half precision cannot hold a K-class distribution summing to 1 within the tolerance
            raise TypeError(f"target: soft targets must be float32 or float64, got {target.dtype}")
        _require(
            lambda: (target >= 0).all() & ((target.sum(-1) - 1).abs() <= SOFT_TARGET_TOL).all(),
            f"target: soft targets must be distributions (entries >= 0, rows summing to 1 within {SOFT_TARGET_TOL})",
            target,
            kernel_checks_values,
        )
    elif target.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        if tuple(target.shape) != (batch,):
            raise ValueError(f"target: class labels must have shape ({batch},) (B,), got {tuple(target.shape)}")
        _require(
            lambda: _labels_in_range(target, num_classes),
            f"target: class labels must lie in [0, {num_classes}) (K = {num_classes} classes)",
            target,
            kernel_checks_values,
        )
    else:
        raise TypeError(f"target: expected integer class labels or float soft targets, got dtype {target.dtype}")
