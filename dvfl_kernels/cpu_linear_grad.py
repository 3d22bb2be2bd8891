"""The CPU linear engine where a gradient is needed: a training step's three GEMMs of a linear, each on
ATen's path or on oneDNN's, whichever this machine measured faster for its shape.

``y = x W^T + b`` (forward), ``dx = dy W`` (input gradient) and ``dW = dy^T x`` (weight gradient) are
three choices (``_probe.fastest``, the verdicts the inference engine keeps too): on an AMD EPYC Zen 3
oneDNN won the forward and the input gradient of the nano's stage 1-2 shapes by 1.1-1.75x and lost
every weight gradient to MKL (docs/benchmarks.md, "Training GEMMs"; ``bench/gemm_shapes.py
--training`` measures them on any CPU). oneDNN's calls do what a training step must, in the call: the
weight changes every step, so the forward reorders it each time; the input gradient multiplies by
W^T laid out contiguously; the weight gradient converts dy and x to oneDNN's layout. The bias
gradient is dy summed over rows. Saved for the backward: x and W, as F.linear saves them.

It runs in eager mode on CPU for float32 (outside autocast). bfloat16 stays F.linear's: ATen's bf16
GEMMs already run on oneDNN (``mkldnn_matmul``) wherever oneDNN runs bf16, and emulate it elsewhere.
So do float64, torch.compile, export, another device and ``DVFL_CPU_GEMM=aten``: there the caller gets
``None`` and runs F.linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._prepared import tracing


def _choose(which: str, rows: int, k: int, n: int, dtype: torch.dtype, candidates: dict) -> str:
    from .cpu_linear import _choose as choose

    key = ("linear grad", which, 1 << max(rows - 1, 0).bit_length(), k, n, dtype, torch.get_num_threads())
    return choose(key, candidates, dtype)


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        rows, k = x2.shape
        candidates = {
            "aten": lambda: F.linear(x2, weight, bias),
            "onednn": lambda: torch.ops.mkldnn._linear_pointwise(
                x2, torch.ops.mkldnn._reorder_linear_weight(weight, rows), bias, "none", [], ""),
        }
        return candidates[_choose("forward", rows, k, weight.shape[0], x2.dtype, candidates)]()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2, weight = ctx.saved_tensors
        grad = grad.contiguous()
        (rows, k), n = x2.shape, weight.shape[0]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            candidates = {
                "aten": lambda: grad.mm(weight),
                "onednn": lambda: torch.ops.mkldnn._linear_pointwise(grad, weight.t().contiguous(), None, "none", [], ""),
            }
            grad_x = candidates[_choose("input grad", rows, k, n, grad.dtype, candidates)]()
        if ctx.needs_input_grad[1]:
            candidates = {
                "aten": lambda: grad.t().mm(x2),
                "onednn": lambda: torch.ops.aten.mkldnn_linear_backward_weights(
                    grad.to_mkldnn(), x2.to_mkldnn(), weight, False)[0],
            }
            grad_weight = candidates[_choose("weight grad", rows, k, n, grad.dtype, candidates)]()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` with its forward and backward GEMMs on the implementations measured
    fastest here, or None where the engine does not apply (module docstring).

    Args:
        x: (..., K) float32, a gradient needed by x, the weight or the bias.
        weight: (N, K), or (N, K, 1, ...) (a 1x1 convolution's weight).
        bias: (N,) or None.
    Returns:
        (..., N), or None. Saved for backward: x as (rows, K) and the weight.
    """
    from .cpu_linear import _ONEDNN, implementation_override

    if (not _ONEDNN or tracing() or not torch.is_grad_enabled() or type(x) is not torch.Tensor
            or x.device.type != "cpu" or x.numel() == 0):
        return None
    tensors = [t for t in (x, weight, bias) if t is not None]
    if not any(t.requires_grad for t in tensors) or any(t.device.type != "cpu" for t in tensors):
        return None
    if torch.is_autocast_enabled("cpu") or any(t.dtype != torch.float32 for t in tensors):
        return None  # bf16 (autocast's or the tensors'), float64, mixed dtypes (F.linear's error)
    if implementation_override() == "aten":
        return None
    k = x.shape[-1]
    if weight.dim() < 2 or weight.numel() != weight.shape[0] * k or (bias is not None and bias.shape != weight.shape[:1]):
        return None  # F.linear raises its own shape error
    n = weight.shape[0]
    out = _LinearFunction.apply(x.reshape(-1, k).contiguous(), weight.reshape(n, k).contiguous(), bias)
    return out.reshape(*x.shape[:-1], n)
