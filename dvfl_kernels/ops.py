"""Public dvfl ops: argument checks, then dispatch to a backend.

Backends: "reference" (plain PyTorch, always there), "cpu" (C++ extension), "cuda" (CUDA C++
extension), "triton"; one record each in backends.py. ``backend="auto"`` picks the fast backend for the tensors' device and falls
back to the reference with a one-time warning naming why. Asking explicitly for a backend that is
not built for an op raises ``BackendUnavailableError`` naming what is missing.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

from . import _checks, _prepared, _probe, backends, cpu_int8, focal, reference
from .backends import BACKENDS, IMPLEMENTATIONS, LOAD_ERRORS, REGISTRY, auto_preference, available_backends
from .runtime import RUNTIME


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend is not built or cannot run these tensors."""


def _probes_temporal(x: torch.Tensor, needs_grad: bool) -> bool:
    """Calls where "auto" times the C++ kernel against the reference and runs the faster for that
    shape on this machine (``_probe.fastest``): bf16 inference of the temporal context on CPU. There
    the reference's per-tap oneDNN GEMMs and bf16 ATen adds and the kernel's float32 epilogue are
    within ~20% of each other, either way by stage, machine and thread count (docs/kernels.md, "The ops
    and their backends", has the timings); everywhere else the kernel wins. Not under
    torch.compile, where the kernel wins (inductor's bf16 code for the reference's graph is slow on
    CPU: bench/test_bench_model_cpu.py)."""
    return (
        x.device.type == "cpu" and x.dtype == torch.bfloat16 and not needs_grad and not torch.compiler.is_compiling()
    )


def _prepared_taps(z_t: torch.Tensor, weights: list[torch.Tensor], needs_grad: bool) -> list[torch.Tensor]:
    """At inference on CPU, each (C, C, k) weight as a view of its taps prepared once per parameter
    state (``_prepared``): (k, C_out, C_in) contiguous in z_t's dtype. The kernel and the reference
    multiply by the taps so laid out; from the parameter itself each call cast and re-laid them out,
    and ATen's bf16 GEMM is slower on permuted taps than on contiguous ones (docs/kernels.md, "The ops
    and their backends", has the timings). The values are the same: the results are too."""
    if z_t.dtype not in (torch.float32, torch.float64, torch.bfloat16) or needs_grad or not _prepared.inference_call(z_t, weights):
        return weights
    kind = ("temporal taps", z_t.dtype)
    return [_prepared.prepare(kind, [w], lambda w=w: (w.detach().permute(2, 0, 1).to(z_t.dtype).contiguous(),))
            .tensors[0].permute(1, 2, 0) for w in weights]


def select_backend(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """(the backend's name, the implementation) of `op` to run on `device` for the requested `backend`."""
    impls = IMPLEMENTATIONS[op]
    if backend == "auto":
        preferred = auto_preference(op, device)
        for choice in preferred:
            if choice in impls and REGISTRY[choice].runs_on(device):
                return choice, impls[choice]
        if preferred and RUNTIME.warn_once(("auto", op, device.type)):
            warnings.warn(
                f"dvfl_kernels.{op}: backend 'auto' wanted '{preferred[0]}' for {device.type} tensors but "
                f"{REGISTRY[preferred[0]].why_missing(op, device)}; using the plain-PyTorch reference",
                stacklevel=3,
            )
        return "reference", impls["reference"]
    if backend not in REGISTRY:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in impls or not REGISTRY[backend].runs_on(device):
        raise BackendUnavailableError(
            f"dvfl_kernels.{op}: backend {backend!r} is not available: {REGISTRY[backend].why_missing(op, device)} "
            f"(available for {device.type} tensors: {available_backends(op, device)})"
        )
    return backend, impls[backend]


def spatial_context(
    z: torch.Tensor,
    g: torch.Tensor,
    weights: Sequence[torch.Tensor],
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The spatial focal context: L levels of depthwise conv + GELU over z, each gated, plus the
    gated global mean (``reference.spatial_context`` has the maths).

    Args:
        z: (N, H, W, C) float32 / bfloat16 / float16 / float64; any strides (a column slice of f's output).
        g: (N, H, W, L+1) gates, z's dtype; any strides.
        weights: L depthwise kernels (C, 1, k_l, k_l), odd k_l; float32 or z's dtype.
        normalize: divide the sum by L+1 (normalize_modulator).
        backend: "auto" | "reference" | "cpu" | "cuda" | "triton".
    Returns:
        A_s (N, H, W, C) in z's dtype, contiguous. Where a gradient is needed the kernels save each
        level's pre-activation (L, N, H, W, C) and the global mean (N, C) in the accumulation dtype
        (float32, float64 for float64); the backward recomputes the GELUs from them.
    """
    _checks.check_spatial_context(z, g, weights)
    return select_backend("spatial_context", backend, z.device)[1](z, g, list(weights), bool(normalize))


def temporal_context(
    z_t: torch.Tensor,
    g_t: torch.Tensor,
    weights: Sequence[torch.Tensor],
    num_frames: int,
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The temporal focal context: L levels of dense 1-D convolutions over each clip's frames + GELU,
    each gated, plus the gated mean over frames (``reference.temporal_context`` has the maths).

    Args:
        z_t: (N, H, W, C) with N = B * num_frames; float32 / bfloat16 / float16 / float64; any strides.
        g_t: (N, H, W, L+1) gates, z_t's dtype; any strides.
        weights: L dense kernels (C, C, k_l), odd k_l; float32 or z_t's dtype.
        num_frames: frames per clip (N must be a multiple).
        normalize: divide the sum by L+1.
        backend: "auto" | "reference" | "cpu" | "cuda" | "triton".
    Returns:
        A_t (N, H, W, C) in z_t's dtype, contiguous. Saved for the backward as in
        ``spatial_context`` (pre-activations, and the mean over frames (B, H, W, C)). At inference on
        CPU the taps are prepared once per weight state (``_prepared``); inside an int8 model's
        forward each level's tap GEMM may run in int8 where that is measured faster.
    """
    _checks.check_temporal_context(z_t, g_t, weights, num_frames)
    weights, normalize = list(weights), bool(normalize)
    chosen, impl = select_backend("temporal_context", backend, z_t.device)
    needs_grad = focal.needs_grad(z_t, g_t, *weights)
    # an int8 model's forward (dvfl_kernels/cpu_int8.py), or its calibration; never traced (the
    # handler is a context variable, which dynamo does not read)
    handler = None if _prepared.tracing() else cpu_int8.active()
    int8 = None
    if handler is not None and backend != "reference" and not needs_grad and z_t.device.type == "cpu" and HAS_EXTENSION:
        int8 = handler.temporal(z_t, g_t, weights, num_frames, normalize)
    if int8 is not None:
        shape_key = ("temporal_context", tuple(z_t.shape), tuple(w.shape[-1] for w in weights), z_t.dtype, num_frames,
                     normalize)
        float_run = lambda: temporal_context(z_t, g_t, weights, num_frames, normalize, backend)  # noqa: E731
        with cpu_int8.running(None):  # the float candidate runs without the plan
            if cpu_int8.int8_pays(shape_key, int8, float_run, handler.measured):
                return int8()
    if backend != "reference":
        weights = _prepared_taps(z_t, weights, needs_grad)
    if backend == "auto" and chosen != "reference" and _probes_temporal(z_t, needs_grad):
        key = ("temporal_context", tuple(z_t.shape), tuple(w.shape[-1] for w in weights), z_t.dtype, weights[0].dtype,
               num_frames, normalize, torch.get_num_threads())
        candidates = {"kernel": lambda: impl(z_t, g_t, weights, num_frames, normalize),
                      "reference": lambda: reference.temporal_context(z_t, g_t, weights, num_frames, normalize)}
        impl = reference.temporal_context if _probe.fastest(key, candidates) == "reference" else impl
    return impl(z_t, g_t, weights, num_frames, normalize)


def modulate(q: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """The modulator product.

    Args:
        q, m_s, m_t: (N, H, W, C), one dtype (float32 / bfloat16 / float16 / float64); any strides.
        backend: "auto" | "reference" | "cpu" | "cuda" | "triton".
    Returns:
        q * m_s * m_t, (N, H, W, C), contiguous. The backward recomputes the products from the saved
        inputs (nothing else is saved).
    """
    _checks.check_modulate(q, m_s, m_t)
    return select_backend("modulate", backend, q.device)[1](q, m_s, m_t)


def kd_ce_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    backend: str = "auto",
):
    """Distillation loss (total, kd, ce): alpha * T^2 KL(teacher_T || student_T) + (1 - alpha) CE,
    in one pass over the logits (``reference.kd_ce_loss`` has the maths).

    Args:
        student_logits: (B, K) float32 / bfloat16 / float16 / float64.
        teacher_logits: (B, K), any float dtype; gets no gradient.
        target: int labels (B,) in [0, K), or float32 / float64 soft targets (B, K) (mixup, cutmix).
        alpha: the KD term's weight, in [0, 1].
        temperature: T, in (0, MAX_KD_TEMPERATURE].
        label_smoothing: for the CE term with int labels, in [0, 1).
        reduction: "mean" | "sum" | "none" (per row).
        backend: "auto" | "reference" | "cpu" | "cuda" | "triton".
    Returns:
        (total, kd, ce), float32 (float64 for float64 logits). `total` carries the gradient to the
        student; `kd` and `ce` are detached, for logging. The kernels save d total / d student (B, K)
        in the forward; the backward scales it by the upstream gradient (nothing is recomputed).
    """
    _checks.check_tensor("student_logits", student_logits, ndim=2)
    chosen, impl = select_backend("kd_ce_loss", backend, student_logits.device)
    _checks.check_kd_ce_loss(
        student_logits, teacher_logits, target, alpha, temperature, label_smoothing, reduction,
        kernel_checks_values=chosen != "reference",
    )
    total, kd, ce = impl(
        student_logits, teacher_logits, target, float(alpha), float(temperature), float(label_smoothing), reduction
    )
    return total, kd.detach(), ce.detach()


backends.load_all()
HAS_EXTENSION = backends._load_extension() is None
HAS_TRITON = "triton" not in LOAD_ERRORS
