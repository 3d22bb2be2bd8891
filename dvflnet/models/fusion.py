"""The block's fused forward, decided per call: the same sums with fewer passes over memory.

A ``VideoFocalNetBlock`` computes ``x + proj(modulation(LN1(x)))``, then ``x + fc2(GELU(fc1(LN2(x))))``,
as the public model writes it (video_focalnet.py). Where those sums are all there is, the same values
come from dvfl_kernels' fused calls, whose engine (CPU: dvfl_kernels/cpu_linear.py) picks the fastest
implementation per shape:

- ``f`` and ``f_temporal`` as one GEMM reading ``x`` once (``dvfl_kernels.linears``);
- ``proj`` adding the residual in its epilogue (``dvfl_kernels.linear(..., residual=x)``);
- the MLP as one call, fc1 with its GELU and fc2 with the residual (``dvfl_kernels.mlp``), one int8
  pair under an int8 plan.

Nothing fuses on the reference backend, and nothing that a caller could observe changes: a layer
with a forward hook (thop's FLOP counter, a feature extractor) is called as a module, and layer
scale, stochastic depth, dropout or another activation keep the written-out sums.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as torch_module

import dvfl_kernels


def hooked(*modules: nn.Module) -> bool:
    """Whether calling any of `modules` would run forward hooks, theirs or global ones.

    torch has no public query for this; these are the four dicts ``nn.Module.__call__`` reads to
    decide whether to run hooks at all. This function is the package's only reader of them.
    """
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def projections(modulation: nn.Module, x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(x), f_temporal(x)`` of a SpatioTemporalFocalModulation: one GEMM reading `x` for both,
    or the two layers called as modules where a hook watches either."""
    f, f_t = modulation.f, modulation.f_temporal
    if hooked(f, f_t):
        return f(x), f_t(x)
    return dvfl_kernels.linears(x, [(f.weight, f.bias), (f_t.weight, f_t.bias)], backend=backend)


def fuses_block(block: nn.Module, backend: str) -> bool:
    """Whether `block` (a pre-LN VideoFocalNetBlock) may run `fused_block` on `backend` this call:
    not on the reference backend, and only where its sums reduce to ``x + proj(..)`` and
    ``x + fc2(GELU(fc1(..)))`` (no layer scale; no stochastic depth or dropout at work; the exact
    GELU) and no hook watches a module whose call the fused path leaves out."""
    mlp, modulation = block.mlp, block.modulation
    inactive = not block.training or (isinstance(block.drop_path, nn.Identity) and mlp.drop.p == 0.0
                                      and modulation.proj_drop.p == 0.0)
    return (backend != "reference" and inactive and not isinstance(block.gamma_1, nn.Parameter)
            and type(mlp.act) is nn.GELU and mlp.act.approximate == "none"
            and not hooked(modulation, modulation.proj, mlp, mlp.fc1, mlp.act, mlp.fc2))


def fused_block(block: nn.Module, x: torch.Tensor, num_frames: int, backend: str) -> torch.Tensor:
    """The block's output for `x` (N, H, W, C) with each residual add fused into the GEMM before it
    (proj, fc2) and fc1's GELU into fc1. Only where ``fuses_block(block, backend)``."""
    modulation = block.modulation
    proj, fc1, fc2 = modulation.proj, block.mlp.fc1, block.mlp.fc2
    modulated = modulation.modulate(block.norm1(x), num_frames, backend)
    x = dvfl_kernels.linear(modulated, proj.weight, proj.bias, residual=x, backend=backend)
    return dvfl_kernels.mlp(block.norm2(x), fc1.weight, fc1.bias, fc2.weight, fc2.bias, residual=x, backend=backend)
