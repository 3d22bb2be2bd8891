"""The recipe's optimiser: SGD, momentum 0.9, Nesterov, weight decay on weights with >= 2 dims only."""
from __future__ import annotations

import torch
from torch import nn


def scaled_lr(base: float, global_batch: int, reference_batch: int = 512) -> float:
    """Linear scaling: base x (global batch / 512) (applies to the LR, the warmup LR and the minimum)."""
    return base * global_batch / reference_batch


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 1e-4, momentum: float = 0.9, kind: str = "sgd"
) -> torch.optim.Optimizer:
    """Two groups: decayed (parameters with >= 2 dims, minus the model's no_weight_decay names) and
    not decayed (biases, norms, layerscale gammas).

    kind "sgd" is the recipe (Nesterov momentum); "adamw" (betas 0.9, 0.999) converges far faster
    from a random start, which short runs without ImageNet initialisation (the demo) need."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer: expected 'sgd' or 'adamw', got {kind!r}")
