"""What a training step minimises: a criterion, and where the teacher's logits come from.

``run_training(cfg)`` trains on the labels (cross-entropy); ``run_training(cfg, distill=True)`` distils
from a frozen teacher, run live or read from ``kd.teacher_cache``. The loop sees one ``Objective``
either way:

    with autocast(...):
        logits = model(clips)
        teacher_logits = objective.teacher.logits(clips, epoch, batch)   # None without a teacher
    loss = objective.criterion(logits, teacher_logits, targets)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import DistillationLoss
from .builders import build_teacher
from .distributed import DistInfo
from .schema import RunConfig
from .teacher_cache import TeacherCache


class NoTeacher:
    """Training on the labels alone."""

    model = None

    def logits(self, clips: torch.Tensor, epoch: int, batch: int) -> None:
        return None


class LiveTeacher:
    """The frozen teacher run on each batch (no gradient)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def logits(self, clips: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        with torch.no_grad():
            return self.model(clips)


class CachedTeacher:
    """The teacher's logits of each batch read from its cache (``dvflnet cache-teacher``)."""

    model = None

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    def logits(self, clips: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        return self.cache.logits(epoch, batch)


class CrossEntropy:
    """Cross-entropy against the targets (labels, or mixup's soft targets); no teacher."""

    def __init__(self, label_smoothing: float):
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, teacher_logits: None, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def logged(self) -> dict[str, float]:
        return {}


class Distillation:
    """``DistillationLoss`` (KD + CE) against the teacher's logits; logs its two parts."""

    def __init__(self, loss: DistillationLoss):
        self.loss = loss

    def __call__(self, logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), teacher_logits.float(), targets)

    def logged(self) -> dict[str, float]:
        return {name: part.item() for name, part in self.loss.last_parts.items()}


@dataclass
class Objective:
    criterion: CrossEntropy | Distillation
    teacher: NoTeacher | LiveTeacher | CachedTeacher


def cached_teacher(cfg: RunConfig, distill: bool, info: DistInfo, clips: int) -> CachedTeacher | None:
    """The teacher cache a distillation run reads (``kd.teacher_cache``), or None. Built before the
    run writes anything: a cache made for another run is refused here."""
    if not distill or not cfg.kd.teacher_cache:
        return None
    return CachedTeacher(TeacherCache(cfg, info, clips))


def build_objective(cfg: RunConfig, distill: bool, device: torch.device, cached: CachedTeacher | None) -> Objective:
    """The run's objective; a live teacher is built (after the student: the same random streams as
    ever) where a distillation run has no cache."""
    label_smoothing = 0.0 if cfg.train.mixup else cfg.train.label_smoothing  # mixup's targets are soft already
    if not distill:
        return Objective(CrossEntropy(label_smoothing), NoTeacher())
    teacher = cached if cached is not None else LiveTeacher(build_teacher(cfg, device))
    return Objective(Distillation(DistillationLoss(cfg.kd.alpha, cfg.kd.temperature, label_smoothing)), teacher)
