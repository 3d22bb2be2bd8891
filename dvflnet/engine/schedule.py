"""Learning rate per iteration: linear warmup from warmup_lr, then cosine down to min_lr."""
from __future__ import annotations

import math


class WarmupCosine:
    """lr(step) for step in [0, total_steps): linear warmup_lr -> base_lr over warmup_steps, then
    cosine base_lr -> min_lr. `apply(optimizer, step)` sets every group's lr. Stateless: resuming at a
    step gives exactly the same rates."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0):
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"total_steps must be >= 1 and 0 <= warmup_steps <= total_steps, got {total_steps}, {warmup_steps}")
        self.base_lr, self.total_steps, self.warmup_steps = base_lr, total_steps, warmup_steps
        self.warmup_lr, self.min_lr = warmup_lr, min_lr

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(progress, 1.0)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def apply(self, optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
