"""Plain-PyTorch definition of every dvfl op: the ground truth all fast backends are tested against.

Everything here is written for readability, not speed, and differentiates through ordinary
PyTorch autograd. All activations are channels-last: ``(N, H, W, C)`` with ``N = B * T`` (the
frames of one clip adjacent). Inputs may be strided views (e.g. slices of a projection output);
no function here writes into its inputs. Inputs are assumed validated (see ``_checks``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class _GradInWeightLayout(torch.autograd.Function):
    """Identity on a weight whose backward hands the gradient back in the weight's own strides.

    Depthwise conv backward on channels-last activations returns the (C, 1, k, k) weight gradient
    channels-last too: strides that differ from the parameter's in the size-1 dimension, which
    autograd keeps and DistributedDataParallel's buckets reject ("Grad strides do not match bucket
    view strides")."""

    @staticmethod
    def forward(weight: torch.Tensor) -> torch.Tensor:
        return weight.view_as(weight)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.stride = inputs[0].stride()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if grad.stride() == ctx.stride:
            return grad
        return torch.empty_strided(grad.shape, ctx.stride, dtype=grad.dtype, device=grad.device).copy_(grad)


def spatial_context(
    z: torch.Tensor, g: torch.Tensor, weights: Sequence[torch.Tensor], normalize: bool = False
) -> torch.Tensor:
    """Gated hierarchy of depthwise convolutions over H, W (the spatial focal context A_s).

    z: (N, H, W, C); g: (N, H, W, L+1); weights[l]: (C, 1, k_l, k_l), odd k_l.
    z_l = GELU(dwconv_l(z_{l-1})), A_s = sum_l g[l] z_l + g[L] GELU(mean_HW z_L).
    """
    num_levels = len(weights)
    channels = z.shape[-1]
    # (N, C, H, W) views with channels-last strides: convolution reads them without a copy.
    ctx = z.permute(0, 3, 1, 2)
    gates = g.permute(0, 3, 1, 2)
    acc = torch.zeros_like(ctx)
    for level, weight in enumerate(weights):
        if weight.requires_grad and torch.is_grad_enabled():
            weight = _GradInWeightLayout.apply(weight)
        ctx = F.gelu(F.conv2d(ctx, weight.to(ctx.dtype), padding=weight.shape[-1] // 2, groups=channels))
        acc = acc + ctx * gates[:, level : level + 1]
    acc = acc + F.gelu(ctx.mean((2, 3), keepdim=True)) * gates[:, num_levels : num_levels + 1]
    if normalize:
        acc = acc / (num_levels + 1)
    return acc.permute(0, 2, 3, 1).contiguous()


def dense_temporal_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Dense C_in -> C_out convolution along dim 1 (time) of a channels-last (B, T, ..., C) tensor.

    Zero padding k // 2, no bias: out[:, t] = sum_j x[:, t + j - k//2] @ weight[:, :, j].T.
    One linear computes every tap's product, y[..., j, :] = x @ weight[:, :, j].T (the multiply-adds
    of nn.Conv1d); the output then sums each tap's product shifted by j - k//2 frames. x may be a
    channel slice of a wider tensor: the linear reads it as a 2-D view, with no copy, in any dtype.
    """
    frames, taps = x.shape[1], weight.shape[-1]
    pad = taps // 2
    stacked = weight.permute(2, 0, 1).flatten(0, 1).to(x.dtype)  # (k*C_out, C_in), row j*C_out + o
    y = F.linear(x, stacked).unflatten(-1, (taps, -1))  # (B, T, ..., k, C_out)
    out = torch.zeros_like(y[..., 0, :])
    for tap in range(taps):
        shift = tap - pad  # output frame t reads input frame t + shift
        first, last = max(0, -shift), min(frames, frames - shift)
        if first < last:
            out[:, first:last] += y[:, first + shift : last + shift, ..., tap, :]
    return out


def temporal_context(
    z_t: torch.Tensor,
    g_t: torch.Tensor,
    weights: Sequence[torch.Tensor],
    num_frames: int,
    normalize: bool = False,
) -> torch.Tensor:
    """Gated hierarchy of dense temporal convolutions over the T frames of each clip (A_t).

    z_t: (N, H, W, C) with N = B * num_frames; g_t: (N, H, W, L+1); weights[l]: (C, C, k_l).
    z_l = GELU(conv1d_l(z_{l-1})) along T at every (h, w), A_t = sum_l g[l] z_l + g[L] GELU(mean_T z_L).
    """
    num_levels = len(weights)
    ctx = z_t.unflatten(0, (-1, num_frames))  # (B, T, H, W, C), a view for any strides
    gates = g_t.unflatten(0, (-1, num_frames))
    acc = torch.zeros_like(ctx)
    for level, weight in enumerate(weights):
        ctx = F.gelu(dense_temporal_conv(ctx, weight))
        acc = acc + ctx * gates[..., level : level + 1]
    acc = acc + F.gelu(ctx.mean(1, keepdim=True)) * gates[..., num_levels : num_levels + 1]
    if normalize:
        acc = acc / (num_levels + 1)
    return acc.flatten(0, 1).contiguous()


def modulate(q: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
    """The modulator product q * h(A_s) * h_t(A_t) (all (N, H, W, C))."""
    return q * m_s * m_t


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision logits are computed (and the losses returned) in float32.
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def kd_ce_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
):
    """Forward-KL distillation + cross-entropy (DVFL-Net, paper eqs. 2-6). Returns (total, kd, ce).

    kd_b = T^2 * KL(softmax(t_b / T) || softmax(s_b / T)); ce_b = CE(s_b, target_b) where target is
    int labels (B,) with optional label smoothing (PyTorch's definition: eps/K on every class) or a
    soft distribution (B, K) (mixup / cutmix), smoothed the same way. total = alpha kd + (1-alpha) ce.
    The teacher is treated as a constant: no gradient flows to it. A teacher row of all -inf
    logits has kd_b = 0. A teacher row holding NaN or +inf is no distribution either, and is not
    silently scored: its kd_b and total_b are NaN and its student gradient row is NaN (ce_b stays),
    so a training step sees a non-finite loss (every backend gives this). temperature is in
    (0, _checks.MAX_KD_TEMPERATURE].
    """
    dtype = compute_dtype(student_logits)
    s = student_logits.to(dtype)
    t = teacher_logits.detach().to(dtype)
    num_classes = s.shape[-1]
    # A teacher row with no finite logit (all -inf) is no distribution: its KD term is defined as 0
    # (and passes no gradient). Any finite stand-in row keeps the masked-out arithmetic free of NaN.
    bad_teacher = (torch.isnan(t) | torch.isposinf(t)).any(-1)
    no_teacher = torch.isneginf(t).all(-1) | bad_teacher
    t = torch.where(no_teacher[:, None], 0.0, t)

    log_p_teacher = F.log_softmax(t / temperature, dim=-1)
    p_teacher = log_p_teacher.exp()
    # a bad teacher row's student logits become NaN for the KD term only: NaN kd and NaN gradient
    s_kd = s + torch.where(bad_teacher, float("nan"), 0.0).to(dtype)[:, None]  # (an add: other rows' gradient stays)
    log_p_student_soft = F.log_softmax(s_kd / temperature, dim=-1)
    # 0 * log 0 = 0: classes the teacher rules out (logit -inf) contribute nothing.
    kl_terms = torch.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student_soft), 0.0)
    kd = torch.where(no_teacher & ~bad_teacher, 0.0, temperature * temperature * kl_terms.sum(-1))

    log_p_student = F.log_softmax(s, dim=-1)
    if target.is_floating_point():
        q = target.detach().to(dtype)
        if label_smoothing > 0:
            q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
        ce = -torch.where(q > 0, q * log_p_student, 0.0).sum(-1)
    else:
        ce = -log_p_student.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
        if label_smoothing > 0:
            ce = (1.0 - label_smoothing) * ce - label_smoothing * log_p_student.mean(-1)

    return reduce_losses(alpha * kd + (1.0 - alpha) * ce, kd, ce, reduction)


def reduce_losses(total: torch.Tensor, kd: torch.Tensor, ce: torch.Tensor, reduction: str):
    """Per-sample losses (B,) reduced by "mean" (over the batch), "sum" or "none"."""
    if reduction == "mean":
        return total.mean(), kd.mean(), ce.mean()
    if reduction == "sum":
        return total.sum(), kd.sum(), ce.sum()
    return total, kd, ce
