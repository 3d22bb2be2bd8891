"""Public dvfl ops: argument checks, then dispatch to a backend.

Backends: "reference" (plain PyTorch, always there), "cpu" (C++ extension), "cuda" (CUDA C++
extension), "triton". ``backend="auto"`` picks the fast backend for the tensors' device and falls
back to the reference with a one-time warning naming why. Asking explicitly for a backend that is
not built for an op raises ``BackendUnavailableError`` naming what is missing.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

import torch

from . import _checks, reference

BACKENDS = ("reference", "cpu", "cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend is not built or cannot run these tensors."""


# op name -> backend name -> implementation. Fast backends register themselves here when built.
_IMPLEMENTATIONS: dict[str, dict[str, Callable]] = {
    "spatial_context": {"reference": reference.spatial_context},
    "temporal_context": {"reference": reference.temporal_context},
    "modulate": {"reference": reference.modulate},
    "kd_ce_loss": {"reference": reference.kd_ce_loss},
}
_WARNED: set[tuple[str, str]] = set()

# What "auto" runs, per op and device type, fastest first. An op with no entry for a device runs the
# reference there silently: e.g. on CPU the focal contexts are convolutions that PyTorch's own CPU
# kernels already run well. A listed backend that is missing (not built, failed to load) warns once.
_AUTO_PREFERENCE: dict[str, dict[str, tuple[str, ...]]] = {
    "spatial_context": {"cuda": ("triton",)},
    "temporal_context": {"cuda": ("triton",)},
    "modulate": {"cuda": ("triton",)},
    # Triton before CUDA C++ on GPUs: not measured yet (no GPU was available when this was
    # written); bench/run_gpu.sh times both, and this order should follow its results.
    "kd_ce_loss": {"cuda": ("triton", "cuda"), "cpu": ("cpu",)},
}
# Why a backend failed to load (e.g. the C++ extension), reported when it is asked for.
LOAD_ERRORS: dict[str, str] = {}


def register_backend(op: str, backend: str, impl: Callable) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    _IMPLEMENTATIONS[op][backend] = impl


def available_backends(op: str) -> tuple[str, ...]:
    """Backends built for `op` in this installation."""
    return tuple(_IMPLEMENTATIONS[op])


def _why_missing(backend: str, device: torch.device) -> str:
    if backend in LOAD_ERRORS:
        return LOAD_ERRORS[backend]
    if backend == "triton" and device.type != "cuda":
        return "Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"
    if backend == "cuda" and device.type != "cuda":
        return "the CUDA kernels need CUDA tensors"
    return "no kernel for this op is built in this installation"


def _runs_on(backend: str, device: torch.device) -> bool:
    if backend == "triton":
        return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    if backend == "cuda":
        return device.type == "cuda"
    if backend == "cpu":
        return device.type == "cpu"
    return True


def select_backend(op: str, backend: str, device: torch.device) -> Callable:
    """The implementation of `op` to run on `device` for the requested `backend`."""
    impls = _IMPLEMENTATIONS[op]
    if backend == "auto":
        preferred = _AUTO_PREFERENCE[op].get(device.type, ())
        for choice in preferred:
            if choice in impls and _runs_on(choice, device):
                return impls[choice]
        if preferred and (op, device.type) not in _WARNED:
            _WARNED.add((op, device.type))
            warnings.warn(
                f"dvfl_kernels.{op}: backend 'auto' wanted '{preferred[0]}' for {device.type} tensors but "
                f"{_why_missing(preferred[0], device)}; using the plain-PyTorch reference",
                stacklevel=3,
            )
        return impls["reference"]
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in impls or not _runs_on(backend, device):
        raise BackendUnavailableError(
            f"dvfl_kernels.{op}: backend {backend!r} is not available: {_why_missing(backend, device)} "
            f"(available: {available_backends(op)})"
        )
    return impls[backend]


def spatial_context(
    z: torch.Tensor,
    g: torch.Tensor,
    weights: Sequence[torch.Tensor],
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Spatial focal context A_s (N, H, W, C) from z (N, H, W, C), gates g (N, H, W, L+1) and L
    depthwise kernels (C, 1, k, k). See ``reference.spatial_context`` for the maths."""
    _checks.check_spatial_context(z, g, weights)
    return select_backend("spatial_context", backend, z.device)(z, g, list(weights), bool(normalize))


def temporal_context(
    z_t: torch.Tensor,
    g_t: torch.Tensor,
    weights: Sequence[torch.Tensor],
    num_frames: int,
    normalize: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Temporal focal context A_t (N, H, W, C) from z_t (N, H, W, C) with N = B * num_frames, gates
    g_t (N, H, W, L+1) and L dense kernels (C, C, k). See ``reference.temporal_context``."""
    _checks.check_temporal_context(z_t, g_t, weights, num_frames)
    impl = select_backend("temporal_context", backend, z_t.device)
    return impl(z_t, g_t, list(weights), num_frames, bool(normalize))


def modulate(q: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """q * m_s * m_t for three (N, H, W, C) tensors."""
    _checks.check_modulate(q, m_s, m_t)
    return select_backend("modulate", backend, q.device)(q, m_s, m_t)


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
    """Distillation loss (total, kd, ce): alpha * T^2 KL(teacher_T || student_T) + (1 - alpha) CE.

    target: int labels (B,) or float32/float64 soft targets (B, K). Half-precision logits are
    computed in float32 and the losses returned in float32. `total` carries the gradient (to the
    student only); `kd` and `ce` are returned detached, for logging (alpha=1 or 0 gives either
    alone as `total`). See ``reference.kd_ce_loss`` for the maths."""
    _checks.check_tensor("student_logits", student_logits, ndim=2)
    impl = select_backend("kd_ce_loss", backend, student_logits.device)
    _checks.check_kd_ce_loss(
        student_logits, teacher_logits, target, alpha, temperature, label_smoothing, reduction,
        kernel_checks_values=impl is not reference.kd_ce_loss,
    )
    total, kd, ce = impl(
        student_logits, teacher_logits, target, float(alpha), float(temperature), float(label_smoothing), reduction
    )
    return total, kd.detach(), ce.detach()


# ---- fused distillation loss: custom ops, fake kernels, autograd ---------------------------------------
# dvfl::kd_ce_loss_rows (C++: CPU and CUDA dispatch keys, csrc/) and dvfl::kd_ce_loss_rows_triton
# return per-row losses (3, B) = [total, kd, ce] and d total_b / d student_b (B, K), computed in one
# pass; the backward is that gradient scaled by the upstream gradient of each row's total.


def _kd_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])
    ctx.student_dtype = inputs[0].dtype
    ctx.compute_grad = inputs[6]


def _kd_backward(ctx, grad_losses, _grad_of_grad):
    if not ctx.compute_grad:
        raise RuntimeError("dvfl kd_ce_loss_rows: called with compute_grad=False, so it saved no gradient")
    (grad_rows,) = ctx.saved_tensors
    grad_student = (grad_rows * grad_losses[0].unsqueeze(1).to(grad_rows.dtype)).to(ctx.student_dtype)
    return grad_student, None, None, None, None, None, None


def _fake_kd_ce_loss_rows(student, teacher, target, alpha, temperature, label_smoothing, compute_grad):
    dtype = reference.compute_dtype(student)
    rows, classes = student.shape
    return student.new_empty((3, rows), dtype=dtype), student.new_empty((rows if compute_grad else 0, classes), dtype=dtype)


def _fused_kd_ce_loss(op):
    """The kd_ce_loss backend running custom op `op` (per-row losses, then the reduction)."""

    def run(student, teacher, target, alpha, temperature, label_smoothing, reduction):
        target = target.to(reference.compute_dtype(student)) if target.is_floating_point() else target.long()
        compute_grad = student.requires_grad and torch.is_grad_enabled()
        losses, _ = op(student, teacher.detach(), target.detach(), alpha, temperature, label_smoothing, compute_grad)
        if reduction != "none":  # one reduction over the (3, B) rows, not three
            losses = losses.mean(1) if reduction == "mean" else losses.sum(1)
        return losses[0], losses[1], losses[2]

    return run


def _load_extension() -> bool:
    try:
        from . import _C  # noqa: F401  (loading it registers torch.ops.dvfl.*)
    except ImportError as err:
        LOAD_ERRORS["cpu"] = LOAD_ERRORS["cuda"] = f"the C++ extension dvfl_kernels._C did not load ({err})"
        return False
    torch.library.register_fake("dvfl::kd_ce_loss_rows")(_fake_kd_ce_loss_rows)
    torch.library.register_autograd("dvfl::kd_ce_loss_rows", _kd_backward, setup_context=_kd_setup_context)
    register_backend("kd_ce_loss", "cpu", _fused_kd_ce_loss(torch.ops.dvfl.kd_ce_loss_rows))
    if torch._C._dispatch_has_kernel_for_dispatch_key("dvfl::kd_ce_loss_rows", "CUDA"):
        register_backend("kd_ce_loss", "cuda", _fused_kd_ce_loss(torch.ops.dvfl.kd_ce_loss_rows))
    else:
        LOAD_ERRORS["cuda"] = "dvfl_kernels._C was built without CUDA kernels (CPU-only torch or DVFL_SKIP_CUDA=1)"
    return True


def _load_triton() -> bool:
    try:
        from .triton import kd_loss as triton_kd_loss
    except ImportError as err:
        LOAD_ERRORS["triton"] = f"triton is not importable ({err})"
        return False

    # An opaque custom op (like the C++ one) with the same fake kernel: torch.compile treats the launch
    # as one node, and tracing also works when the kernel runs in Triton's interpreter (CPU tensors).
    @torch.library.custom_op("dvfl::kd_ce_loss_rows_triton", mutates_args=())
    def kd_ce_loss_rows_triton(
        student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
        alpha: float, temperature: float, label_smoothing: float, compute_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The kernel needs each row's classes adjacent; other strides are handled.
        student, teacher, target = (x if x.stride(-1) == 1 else x.contiguous() for x in (student, teacher, target))
        return triton_kd_loss.kd_ce_rows(student, teacher, target, alpha, temperature, label_smoothing, compute_grad)

    kd_ce_loss_rows_triton.register_fake(_fake_kd_ce_loss_rows)
    torch.library.register_autograd("dvfl::kd_ce_loss_rows_triton", _kd_backward, setup_context=_kd_setup_context)
    register_backend("kd_ce_loss", "triton", _fused_kd_ce_loss(torch.ops.dvfl.kd_ce_loss_rows_triton))
    return True


# ---- focal modulation on Triton: custom ops (named so fvcore's handles count them), fake kernels,
# autograd. The forward ops return what their backward needs (pre-activations, global means) as
# extra outputs; the public functions return the context alone.


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _load_triton_focal() -> None:
    from .triton import focal_modulation as focal

    @torch.library.custom_op("dvfl::spatial_context", mutates_args=())
    def spatial_context_op(
        z: torch.Tensor, g: torch.Tensor, weights: list[torch.Tensor], normalize: bool, save: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return focal.spatial_context_forward(z, g, weights, normalize, save)

    @spatial_context_op.register_fake
    def _(z, g, weights, normalize, save):
        n, h, w, c = z.shape
        return (z.new_empty(z.shape), z.new_empty((len(weights) if save else 0, n, h, w, c), dtype=torch.float32),
                z.new_empty((n, c), dtype=torch.float32))

    @torch.library.custom_op("dvfl::spatial_context_backward", mutates_args=())
    def spatial_context_backward_op(
        grad: torch.Tensor, z: torch.Tensor, g: torch.Tensor, weights: list[torch.Tensor], pre: torch.Tensor,
        mean: torch.Tensor, normalize: bool,
    ) -> list[torch.Tensor]:
        dz, dg, dweights = focal.spatial_context_backward(grad, z, g, weights, pre, mean, normalize)
        return [dz, dg, *dweights]

    @spatial_context_backward_op.register_fake
    def _(grad, z, g, weights, pre, mean, normalize):
        return [z.new_empty(z.shape), g.new_empty(g.shape), *(w.new_empty(w.shape) for w in weights)]

    def spatial_setup(ctx, inputs, output):
        z, g, weights, normalize, save = inputs
        ctx.save_for_backward(z, g, output[1], output[2], *weights)
        ctx.normalize, ctx.saved = normalize, save
        ctx.mark_non_differentiable(output[1], output[2])

    def spatial_backward(ctx, grad, _grad_pre, _grad_mean):
        if not ctx.saved:
            raise RuntimeError("dvfl::spatial_context: ran with save=False, so it kept nothing for backward")
        z, g, pre, mean, *weights = ctx.saved_tensors
        dz, dg, *dweights = torch.ops.dvfl.spatial_context_backward(grad, z, g, weights, pre, mean, ctx.normalize)
        return dz, dg, dweights, None, None

    torch.library.register_autograd("dvfl::spatial_context", spatial_backward, setup_context=spatial_setup)

    @torch.library.custom_op("dvfl::temporal_context", mutates_args=())
    def temporal_context_op(
        z_t: torch.Tensor, g_t: torch.Tensor, weights: list[torch.Tensor], num_frames: int, normalize: bool, save: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return focal.temporal_context_forward(z_t, g_t, weights, num_frames, normalize, save)

    @temporal_context_op.register_fake
    def _(z_t, g_t, weights, num_frames, normalize, save):
        n, h, w, c = z_t.shape
        return (z_t.new_empty(z_t.shape), z_t.new_empty((len(weights) if save else 0, n, h, w, c), dtype=torch.float32),
                z_t.new_empty((n // num_frames, h, w, c), dtype=torch.float32))

    @torch.library.custom_op("dvfl::temporal_context_backward", mutates_args=())
    def temporal_context_backward_op(
        grad: torch.Tensor, z_t: torch.Tensor, g_t: torch.Tensor, weights: list[torch.Tensor], num_frames: int,
        pre: torch.Tensor, mean: torch.Tensor, normalize: bool,
    ) -> list[torch.Tensor]:
        dz, dg, dweights = focal.temporal_context_backward(grad, z_t, g_t, weights, num_frames, pre, mean, normalize)
        return [dz, dg, *dweights]

    @temporal_context_backward_op.register_fake
    def _(grad, z_t, g_t, weights, num_frames, pre, mean, normalize):
        return [z_t.new_empty(z_t.shape), g_t.new_empty(g_t.shape), *(w.new_empty(w.shape) for w in weights)]

    def temporal_setup(ctx, inputs, output):
        z_t, g_t, weights, num_frames, normalize, save = inputs
        ctx.save_for_backward(z_t, g_t, output[1], output[2], *weights)
        ctx.num_frames, ctx.normalize, ctx.saved = num_frames, normalize, save
        ctx.mark_non_differentiable(output[1], output[2])

    def temporal_backward(ctx, grad, _grad_pre, _grad_mean):
        if not ctx.saved:
            raise RuntimeError("dvfl::temporal_context: ran with save=False, so it kept nothing for backward")
        z_t, g_t, pre, mean, *weights = ctx.saved_tensors
        dz, dg, *dweights = torch.ops.dvfl.temporal_context_backward(
            grad, z_t, g_t, weights, ctx.num_frames, pre, mean, ctx.normalize
        )
        return dz, dg, dweights, None, None, None

    torch.library.register_autograd("dvfl::temporal_context", temporal_backward, setup_context=temporal_setup)

    @torch.library.custom_op("dvfl::modulate", mutates_args=())
    def modulate_op(q: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
        return focal.modulate_forward(q, m_s, m_t)

    @modulate_op.register_fake
    def _(q, m_s, m_t):
        return q.new_empty(q.shape)

    @torch.library.custom_op("dvfl::modulate_backward", mutates_args=())
    def modulate_backward_op(grad: torch.Tensor, q: torch.Tensor, m_s: torch.Tensor, m_t: torch.Tensor) -> list[torch.Tensor]:
        return list(focal.modulate_backward(grad, q, m_s, m_t))

    @modulate_backward_op.register_fake
    def _(grad, q, m_s, m_t):
        return [q.new_empty(q.shape), m_s.new_empty(m_s.shape), m_t.new_empty(m_t.shape)]

    def modulate_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def modulate_backward(ctx, grad):
        return tuple(torch.ops.dvfl.modulate_backward(grad, *ctx.saved_tensors))

    torch.library.register_autograd("dvfl::modulate", modulate_backward, setup_context=modulate_setup)

    def spatial(z, g, weights, normalize):
        return torch.ops.dvfl.spatial_context(z, g, weights, normalize, _needs_grad(z, g, *weights))[0]

    def temporal(z_t, g_t, weights, num_frames, normalize):
        return torch.ops.dvfl.temporal_context(z_t, g_t, weights, num_frames, normalize, _needs_grad(z_t, g_t, *weights))[0]

    register_backend("spatial_context", "triton", spatial)
    register_backend("temporal_context", "triton", temporal)
    register_backend("modulate", "triton", torch.ops.dvfl.modulate)


HAS_EXTENSION = _load_extension()
HAS_TRITON = _load_triton()
if HAS_TRITON:
    _load_triton_focal()
