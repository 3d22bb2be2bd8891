"""Losses used by the engine: thin nn.Module wrappers over dvfl_kernels."""
from __future__ import annotations

import torch
from torch import nn

import dvfl_kernels


class DistillationLoss(nn.Module):
    """alpha * T^2 KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) CE(student, target).

    forward(student_logits, teacher_logits, target) returns the total (mean over the batch); the
    detached parts of the last call are in ``last_parts`` ({"kd", "ce"}) for logging. target: int
    labels (B,) or soft targets (B, K) (mixup / cutmix). The teacher gets no gradient.
    """

    def __init__(self, alpha: float = 0.3, temperature: float = 10.0, label_smoothing: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.alpha, self.temperature, self.label_smoothing, self.backend = alpha, temperature, label_smoothing, backend
        self.last_parts: dict[str, torch.Tensor] = {}

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total, kd, ce = dvfl_kernels.kd_ce_loss(
            student_logits, teacher_logits, target, self.alpha, self.temperature, self.label_smoothing,
            reduction="mean", backend=self.backend,
        )
        self.last_parts = {"kd": kd, "ce": ce}
        return total

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}, label_smoothing={self.label_smoothing}"
