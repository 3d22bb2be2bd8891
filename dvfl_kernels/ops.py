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

from . import _checks, _prepared, _probe, cpu_int8, focal, kd_loss, reference

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

# What "auto" runs, per op and device type, fastest first (bench/ measures each choice). A listed
# backend that is missing (not built, failed to load) warns once and the reference runs.
_AUTO_PREFERENCE: dict[str, dict[str, tuple[str, ...]]] = {
    # The CUDA C++ focal kernels ("cuda") are compiled but not yet validated on a GPU: "auto" does
    # not pick them until bench/run_gpu.sh has validated and timed them against Triton.
    "spatial_context": {"cuda": ("triton",), "cpu": ("cpu",)},
    "temporal_context": {"cuda": ("triton",), "cpu": ("cpu",)},
    "modulate": {"cuda": ("triton",), "cpu": ("cpu",)},
    # Triton before CUDA C++ on GPUs: not measured yet (no GPU was available when this was
    # written); bench/run_gpu.sh times both, and this order should follow its results.
    "kd_ce_loss": {"cuda": ("triton", "cuda"), "cpu": ("cpu",)},
}


def _probes_temporal(x: torch.Tensor, needs_grad: bool) -> bool:
    """Calls where "auto" times the C++ kernel against the reference and runs the faster for that
    shape on this machine (``_probe.fastest``): bf16 inference of the temporal context on CPU. There
    the reference's per-tap oneDNN GEMMs and bf16 ATen adds and the kernel's float32 epilogue are
    within ~20% of each other, either way by stage, machine and thread count (one clip of the nano,
    Intel Xeon with AMX: 11.0-11.6 / 5.6 / 4.3 / 7.2-7.3 ms on the kernel against 11.6-12.3 / 5.2 /
    4.3 / 5.8-6.1 on the reference, stages 1 to 4); everywhere else the kernel wins. Not under
    torch.compile, where the kernel wins (inductor's bf16 code for the reference's graph is slow on
    CPU: bench/test_bench_model_cpu.py)."""
    return (
        x.device.type == "cpu" and x.dtype == torch.bfloat16 and not needs_grad and not torch.compiler.is_compiling()
    )


def _prepared_taps(z_t: torch.Tensor, weights: list[torch.Tensor], needs_grad: bool) -> list[torch.Tensor]:
    """At inference on CPU, each (C, C, k) weight as a view of its taps prepared once per parameter
    state (``_prepared``): (k, C_out, C_in) contiguous in z_t's dtype. The kernel and the reference
    multiply by the taps so laid out; from the parameter itself each call cast and re-laid them out
    (1 to 7 ms of a bf16 nano clip on an Intel Xeon, and ATen's bf16 GEMM is 2-3x slower on the
    permuted taps than on contiguous ones). The values are the same: the results are too."""
    if z_t.dtype not in (torch.float32, torch.float64, torch.bfloat16) or needs_grad or not _prepared.inference_call(z_t, weights):
        return weights
    kind = ("temporal taps", z_t.dtype)
    return [_prepared.prepare(kind, [w], lambda w=w: (w.detach().permute(2, 0, 1).to(z_t.dtype).contiguous(),))
            .tensors[0].permute(1, 2, 0) for w in weights]


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
    weights, normalize = list(weights), bool(normalize)
    impl = select_backend("temporal_context", backend, z_t.device)
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
    if backend == "auto" and impl is not reference.temporal_context and _probes_temporal(z_t, needs_grad):
        key = ("temporal_context", tuple(z_t.shape), tuple(w.shape[-1] for w in weights), z_t.dtype, weights[0].dtype,
               num_frames, normalize, torch.get_num_threads())
        candidates = {"kernel": lambda: impl(z_t, g_t, weights, num_frames, normalize),
                      "reference": lambda: reference.temporal_context(z_t, g_t, weights, num_frames, normalize)}
        impl = reference.temporal_context if _probe.fastest(key, candidates) == "reference" else impl
    return impl(z_t, g_t, weights, num_frames, normalize)


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


def _load_extension():
    try:
        from . import _C  # loading it registers the dvfl C++ ops and their CPU / CUDA kernels
    except ImportError as err:
        LOAD_ERRORS["cpu"] = LOAD_ERRORS["cuda"] = f"the C++ extension dvfl_kernels._C did not load ({err})"
        return None
    kd_loss.register_cpp(register_backend)
    focal.register_family("cpp")
    cpu_int8.register_fakes()
    for op, impl in focal.implementations("cpp").items():
        register_backend(op, "cpu", impl)
    if not torch._C._dispatch_has_kernel_for_dispatch_key("dvfl::kd_ce_loss_rows", "CUDA"):
        LOAD_ERRORS["cuda"] = "dvfl_kernels._C was built without CUDA kernels (CPU-only torch or DVFL_SKIP_CUDA=1)"
    else:
        for op, impl in focal.implementations("cpp").items():
            register_backend(op, "cuda", impl)
    return _C


def _load_triton() -> None:
    try:
        from .triton import focal_modulation as triton_focal
        from .triton import kd_loss as triton_kd_loss
    except ImportError as err:
        LOAD_ERRORS["triton"] = f"triton is not importable ({err})"
        return
    kd_loss.register_triton(register_backend, triton_kd_loss)
    focal.declare_triton(triton_focal)
    for op, impl in focal.implementations("triton").items():
        register_backend(op, "triton", impl)


_EXTENSION = _load_extension()
_load_triton()
HAS_EXTENSION = _EXTENSION is not None
HAS_TRITON = "triton" not in LOAD_ERRORS
