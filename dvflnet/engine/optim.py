"""The recipe's optimiser: SGD, momentum 0.9, Nesterov; which parameters decay is a setting.

The recipe as written decays every weight with >= 2 dims (1e-4). The public training code meant to
do the same, but its optimizer builder exempts a parameter when any of the model's
``no_weight_decay_keywords()`` is a substring of its name, and the model returns {''}, a substring of
every name: no parameter decays. The paper's numbers come from that code, so ``decay_on="nothing"``
(the default of ``train.weight_decay_on``) reproduces them; ``"weights"`` is the recipe as written.
"""
from __future__ import annotations

import torch
from torch import nn

DECAY_ON = ("nothing", "weights")


def scaled_lr(base: float, global_batch: int, reference_batch: int = 512) -> float:
    """Linear scaling: base x (global batch / 512) (applies to the LR, the warmup LR and the minimum)."""
    return base * global_batch / reference_batch


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 1e-4, momentum: float = 0.9, kind: str = "sgd",
    decay_on: str = "nothing",
) -> torch.optim.Optimizer:
    """Two groups: decayed and not decayed. decay_on "weights": parameters with >= 2 dims decay
    (biases, norms, layerscale gammas do not); "nothing": no parameter decays (the public code's
    effective behaviour, see the module docstring).

    kind "sgd" is the recipe (Nesterov momentum); "adamw" (betas 0.9, 0.999) converges far faster
    from a random start, which short runs without ImageNet initialisation (the demo) need."""
    if decay_on not in DECAY_ON:
        raise ValueError(f"decay_on: expected one of {DECAY_ON}, got {decay_on!r}")
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if decay_on == "weights" and param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # torch's fused step (one kernel over all parameters) where it has one for them: on the demo's
    # models it cut a CPU training step by 10-17% (bench/test_bench_model_cpu.py::test_demo_training_step)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in decay + no_decay) or None
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, fused=fused)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    raise ValueError(f"optimizer: expected 'sgd' or 'adamw', got {kind!r}")
