"""Mixup / CutMix on clip batches, with label smoothing: the recipe's soft targets.

Per batch: CutMix with probability 0.5 (lambda ~ Beta(1, 1), one box pasted on every frame, lambda
corrected to the box's true area), else Mixup (lambda ~ Beta(0.8, 0.8)); the batch is mixed with its
reverse. Targets are smoothed one-hots (1 - eps + eps/K on the class, eps/K elsewhere) mixed with
the same lambda, so each row is a distribution. Pass them to the loss with label_smoothing=0.
"""
from __future__ import annotations

import math

import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    target = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return target.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)


def mixup_cutmix(
    clips: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    generator: torch.Generator,
    smoothing: float = 0.1,
    cutmix_prob: float = 0.5,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """clips (B, T, C, H, W), int labels (B,) -> mixed clips (new tensor) and soft targets (B, K)."""
    if clips.dim() != 5:
        raise ValueError(f"clips: expected (B, T, C, H, W), got {tuple(clips.shape)}")
    if labels.shape != (clips.shape[0],):
        raise ValueError(f"labels: expected shape ({clips.shape[0]},), got {tuple(labels.shape)}")
    targets = smooth_one_hot(labels, num_classes, smoothing)
    use_cutmix = torch.rand((), generator=generator).item() < cutmix_prob
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))
    # torch.distributions samples from the global RNG: fork it, seeded from `generator`, so the
    # result depends on `generator` alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
        lam = float(beta.sample())
    flipped = clips.flip(0)
    if use_cutmix:
        h, w = clips.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy = int(torch.randint(0, h, (), generator=generator))
        cx = int(torch.randint(0, w, (), generator=generator))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        mixed = clips.clone()
        mixed[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]  # the same box on every frame
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        mixed = clips * lam + flipped * (1.0 - lam)
    return mixed, targets * lam + targets.flip(0) * (1.0 - lam)
