"""Triton kernel of the fused KL + CE distillation loss: one program per row, one launch.

Per row the kernel streams the student and teacher logits once to build online (running-max)
softmax statistics of s, s/T and t/T, then once more to sum the KL and write d total / d s, so the
backward pass is a scale of the saved gradient. Element math is float32 (float64 for float64
logits); the sums are float64, and every loss is written as a sum of non-negative terms, so the results
keep float32 accuracy even for confident predictions and near-identical distributions.

Invalid rows (a label outside [0, K), soft targets with a negative entry or not summing to 1) get NaN losses and gradient,
and so does a teacher row with a NaN or +inf logit (NaN KD and total): that is how CUDA tensors are validated without
an extra launch or a host synchronisation.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .. import reference
from .._checks import SOFT_TARGET_TOL

# Logits per loop iteration. 2048 fp32 lanes keep the three operands of one iteration (student,
# teacher, soft target: 24 KiB) in registers/L1 with 8 warps; larger K loops.
MAX_BLOCK_K = 2048
# A finite stand-in for -inf as the initial running max, so that exp(m_old - m_new) is 0 or 1 and
# never NaN (-inf - -inf) when a whole block is masked or the teacher rules classes out with -inf.
NEG_BIG = -3.0e38
# |d| = |log q_T - log p_t| up to which e^d - 1 - d comes from its series (exact for close
# distributions); beyond it the direct differences lose nothing.
SERIES_RANGE = 0.5


@triton.jit
def _rescaled_sum(z, m_old, m_new, x, scale):
    """sum exp((x - max) * scale) carried from the running max m_old to m_new, plus the block x;
    accumulated in float64."""
    rescale = tl.exp((m_old - m_new) * scale).to(tl.float64)
    return z * rescale + tl.sum(tl.exp((x - m_new) * scale).to(tl.float64), 0)


@triton.jit
def _exp_minus_1_minus_x(d):
    """e^d - 1 - d for |d| <= SERIES_RANGE: d^2/2 * (1 + d/3 (1 + d/4 (...))) to degree 10, accurate
    to a few ulps however small d is (no cancellation)."""
    p = 1.0 + d / 10.0
    p = 1.0 + d / 9.0 * p
    p = 1.0 + d / 8.0 * p
    p = 1.0 + d / 7.0 * p
    p = 1.0 + d / 6.0 * p
    p = 1.0 + d / 5.0 * p
    p = 1.0 + d / 4.0 * p
    p = 1.0 + d / 3.0 * p
    return 0.5 * d * d * p


@triton.jit
def _expm1(x, SERIES_RANGE: tl.constexpr):
    near = tl.abs(x) <= SERIES_RANGE
    return tl.where(near, x + _exp_minus_1_minus_x(tl.where(near, x, 0.0)), tl.exp(x) - 1.0)


@triton.jit
def kd_ce_rows_kernel(
    student_ptr, teacher_ptr, target_ptr, losses_ptr, grad_ptr,
    stride_s, stride_t, stride_y, stride_g,
    num_rows, num_classes,
    alpha, alpha_lo, temperature, temperature_lo, label_smoothing, label_smoothing_lo,
    SOFT: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK_K: tl.constexpr, NEG: tl.constexpr, TOL: tl.constexpr,
    SERIES_RANGE: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = student_ptr + row * stride_s
    t_row = teacher_ptr + row * stride_t
    y_row = target_ptr + row * stride_y
    # Scalars arrive as float32 (Triton's type for Python floats, compiled or interpreted); each comes
    # with the float32 remainder of its float64 value, so the float64 path sees it to ~1e-14.
    alpha = tl.cast(alpha, ACC) + tl.cast(alpha_lo, ACC)
    temperature = tl.cast(temperature, ACC) + tl.cast(temperature_lo, ACC)
    eps = tl.cast(label_smoothing, ACC) + tl.cast(label_smoothing_lo, ACC)
    inv_temp = 1.0 / temperature

    # Pass 1: online softmax statistics around the raw maxima m_s, m_t (max(x/T) = max(x)/T).
    # Sums accumulate in float64 (exps stay float32).
    m_s = tl.full((), NEG, ACC)
    z_s = tl.zeros((), tl.float64)  # sum exp(s - m_s)
    z_st = tl.zeros((), tl.float64)  # sum exp((s - m_s) / T)
    m_t = tl.full((), NEG, ACC)
    z_tt = tl.zeros((), tl.float64)  # sum exp((t - m_t) / T)
    sum_s = tl.zeros((), tl.float64)
    sum_q = tl.zeros((), tl.float64)
    sum_qs = tl.zeros((), tl.float64)  # sum over q > 0 of q * s (exact float64 products)
    neg_q = tl.zeros((), ACC)  # number of negative soft-target entries
    bad_t = tl.zeros((), ACC)  # teacher logits that are NaN or +inf
    for k0 in range(0, num_classes, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        mask = offs < num_classes
        s = tl.load(s_row + offs, mask=mask, other=float("-inf")).to(ACC)
        t = tl.load(t_row + offs, mask=mask, other=float("-inf")).to(ACC)
        m_s_new = tl.maximum(m_s, tl.max(s, 0))
        z_s = _rescaled_sum(z_s, m_s, m_s_new, s, 1.0)
        z_st = _rescaled_sum(z_st, m_s, m_s_new, s, inv_temp)  # one max serves both student sums
        m_t_new = tl.maximum(m_t, tl.max(t, 0))
        z_tt = _rescaled_sum(z_tt, m_t, m_t_new, t, inv_temp)
        m_s, m_t = m_s_new, m_t_new
        bad_t += tl.sum(tl.where((t != t) | (t == float("inf")), 1.0, 0.0), 0)
        sum_s += tl.sum(tl.where(mask, s, 0.0).to(tl.float64), 0)
        if SOFT:
            q = tl.load(y_row + offs, mask=mask, other=0.0).to(ACC)
            sum_q += tl.sum(q.to(tl.float64), 0)
            sum_qs += tl.sum(tl.where(q > 0, q.to(tl.float64) * s.to(tl.float64), 0.0), 0)
            neg_q += tl.sum(tl.where(q < 0, 1.0, 0.0), 0)

    # A teacher row with no finite logit (all -inf) is no distribution: its KD term is defined as 0
    # (reference.kd_ce_loss); z_tt = 1 keeps its probabilities 0 instead of NaN.
    no_teacher = z_tt == 0
    z_tt = tl.where(no_teacher, 1.0, z_tt)
    kd_scale = tl.where(no_teacher, 0.0, alpha * temperature)
    log_z_s = tl.log(z_s)
    log_z_st = tl.log(z_st).to(ACC)
    log_z_tt = tl.log(z_tt).to(ACC)
    # CE as a sum of non-negative terms (no cancellation when a prediction is confident):
    # lse - s = log z_s + (m_s - s), and the smoothing term eps * (m_s - mean(s)).
    m_s64 = m_s.to(tl.float64)
    smooth_term = tl.where(eps > 0, eps * (m_s64 - sum_s / num_classes), 0.0)  # avoids 0 * -inf
    if SOFT:
        valid = (tl.abs(sum_q - 1.0) <= TOL) & (neg_q == 0)
        q_mass = ((1.0 - eps) * sum_q + eps).to(ACC)
        ce = q_mass * log_z_s + (1.0 - eps) * (m_s64 * sum_q - sum_qs) + smooth_term
        label = 0
        p_label_m1 = 0.0
    else:
        label = tl.load(y_row)
        valid = (label >= 0) & (label < num_classes)
        s_label = tl.load(s_row + tl.where(valid, label, 0)).to(ACC)
        ce = log_z_s + (1.0 - eps) * (m_s - s_label).to(tl.float64) + smooth_term
        q_mass = 1.0
        # p_label - 1 = expm1(log p_label), from the accurate log-probability
        p_label_m1 = _expm1(-(log_z_s + (m_s - s_label).to(tl.float64)).to(ACC), SERIES_RANGE)
    log_z_s = log_z_s.to(ACC)

    # Pass 2: KL = sum_k (q_T - p_t - p_t d) = sum p_t (e^d - 1 - d) where p_t > 0: non-negative
    # terms, exact for close distributions. The gradient's q_T - p_t = p_t expm1(d) there; for probabilities near 1
    # (few classes) it is expm1(log q_T) - expm1(log p_t), the difference of the small complements.
    # an invalid target, or a teacher row with a NaN or +inf logit (no distribution): NaN gradient
    bad_teacher = bad_t > 0
    poison = tl.where(valid & (bad_t == 0), 0.0, float("nan"))
    g_row = grad_ptr + row * stride_g
    kl = tl.zeros((), tl.float64)
    for k0 in range(0, num_classes, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        mask = offs < num_classes
        s = tl.load(s_row + offs, mask=mask, other=0.0).to(ACC)
        t = tl.load(t_row + offs, mask=mask, other=float("-inf")).to(ACC)
        log_q = (s - m_s) * inv_temp - log_z_st
        log_p = (t - m_t) * inv_temp - log_z_tt
        q_soft_t = tl.exp(log_q)
        p_teacher = tl.exp(log_p)
        d = log_q - log_p  # each subtracts its own max: accurate for small d, large or offset logits
        near = (p_teacher > 0) & (tl.abs(d) <= SERIES_RANGE)
        phi = _exp_minus_1_minus_x(tl.where(near, d, 0.0))
        likely = (q_soft_t > 0.5) | (p_teacher > 0.5)
        far_diff = tl.where(
            likely, _expm1(log_q, SERIES_RANGE) - _expm1(tl.where(likely, log_p, 0.0), SERIES_RANGE), q_soft_t - p_teacher
        )
        kd_diff = tl.where(near, p_teacher * (d + phi), far_diff)
        # far apart: q_T - p_t - p_t d (no overflow of e^d); classes the teacher rules out (p_t = 0)
        # add the student's mass q_T there (the terms sum to KL because both distributions sum to 1)
        kl_terms = tl.where(near, p_teacher * phi, tl.where(p_teacher > 0, far_diff - p_teacher * d, q_soft_t))
        kl_terms = tl.where(mask, kl_terms, 0.0)
        kl += tl.sum(kl_terms.to(tl.float64), 0)
        if COMPUTE_GRAD:
            p = tl.exp(s - m_s - log_z_s)
            if SOFT:
                q = tl.load(y_row + offs, mask=mask, other=0.0).to(ACC)
                ce_grad = q_mass * p - ((1.0 - eps) * q + eps / num_classes)
            else:
                ce_grad = tl.where(offs == label, p_label_m1 + eps, p) - eps / num_classes
            grad = kd_scale * kd_diff + (1.0 - alpha) * ce_grad
            tl.store(g_row + offs, grad + poison, mask=mask)

    kd = tl.where(bad_teacher, float("nan"), tl.where(no_teacher, 0.0, temperature * temperature * kl)).to(ACC)
    ce = tl.where(valid, ce.to(ACC), float("nan"))
    tl.store(losses_ptr + row, alpha * kd + (1.0 - alpha) * ce)
    tl.store(losses_ptr + num_rows + row, kd)
    tl.store(losses_ptr + 2 * num_rows + row, ce)


def _hi_lo(value: float) -> tuple[float, float]:
    """value as float32 + float32 remainder (both exactly representable as float32)."""
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


def kd_ce_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel: per-row losses (3, B) [total, kd, ce] and d total_b / d s (B, K), in float64
    for float64 logits and float32 otherwise (reference.compute_dtype).

    Rows may be strided; the class dimension must have stride 1 (the op wrapper ensures it).
    """
    rows, classes = student.shape
    dtype = reference.compute_dtype(student)
    losses = torch.empty((3, rows), dtype=dtype, device=student.device)
    grad = torch.empty((rows, classes) if compute_grad else (0, classes), dtype=dtype, device=student.device)
    soft = target.dim() == 2
    block = min(triton.next_power_of_2(classes), MAX_BLOCK_K)
    kd_ce_rows_kernel[(rows,)](
        student, teacher, target, losses, grad,
        student.stride(0), teacher.stride(0), target.stride(0), grad.stride(0) if compute_grad else 0,
        rows, classes,
        *_hi_lo(alpha), *_hi_lo(temperature), *_hi_lo(label_smoothing),
        SOFT=soft, COMPUTE_GRAD=compute_grad, BLOCK_K=block, NEG=NEG_BIG, TOL=SOFT_TARGET_TOL,
        SERIES_RANGE=SERIES_RANGE, ACC=tl.float64 if dtype == torch.float64 else tl.float32,
        num_warps=8 if block >= 1024 else 4,
    )
    return losses, grad
