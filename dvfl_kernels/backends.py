"""The backends, one record each, and the implementations they registered: the one registry that
ops.py dispatches through and the tests read.

A backend is a ``Backend`` record in ``REGISTRY``: its name, the device types its kernels take, whether
it needs a GPU, which ops "auto" prefers it for on which device, and how it loads (a function that
registers its implementations and returns why it could not, or None). Adding a backend is one record
(and its loader). ``REGISTRY``'s order is "auto"'s order of preference where two backends qualify.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

OPS = ("spatial_context", "temporal_context", "modulate", "kd_ce_loss")


@dataclass(frozen=True)
class Backend:
    """One backend.

    Args:
        name: what ``backend=`` names.
        devices: the device types whose tensors its kernels take.
        gpu: its kernels are GPU kernels (interpreted Triton on CPU aside); tests mark its cases `gpu`.
        auto: device type -> the ops "auto" runs on this backend there.
        load: registers its implementations (``register``); returns why it is missing, or None.
        interpreter: an environment variable that, set to "1", runs its kernels on CPU tensors too
            (Triton's interpreter), or None.
        note: why "auto" leaves it out where it does.
    """

    name: str
    devices: tuple[str, ...]
    gpu: bool = False
    auto: dict[str, tuple[str, ...]] = field(default_factory=dict)
    load: Callable[[], str | None] | None = None
    interpreter: str | None = None
    note: str = ""

    def runs_on(self, device: torch.device) -> bool:
        """Whether its kernels take tensors on `device` (Triton: CUDA, or any interpreted)."""
        if self.interpreter is not None and os.environ.get(self.interpreter) == "1":
            return True
        return device.type in self.devices

    def why_missing(self, op: str, device: torch.device) -> str:
        """Why `op` cannot run on this backend for `device` tensors."""
        if self.name in LOAD_ERRORS:
            return LOAD_ERRORS[self.name]
        if self.name not in IMPLEMENTATIONS[op]:
            return "no kernel for this op is built in this installation"
        if not self.runs_on(device):
            wanted = " or ".join(d.upper() for d in self.devices)
            extra = f" (or {self.interpreter}=1)" if self.interpreter else ""
            return f"its kernels need {wanted} tensors{extra}, got {device.type} ones"
        return "not available"


# op -> backend -> implementation; every op has its reference, fast backends add theirs when they load
IMPLEMENTATIONS: dict[str, dict[str, Callable]] = {op: {} for op in OPS}
# backend -> why it did not load (e.g. the C++ extension), reported when it is asked for
LOAD_ERRORS: dict[str, str] = {}


def register(op: str, backend: str, impl: Callable) -> None:
    """`impl` runs `op` on `backend` (a loader's call)."""
    if backend not in REGISTRY:
        raise ValueError(f"backend: expected one of {tuple(REGISTRY)}, got {backend!r}")
    if op not in IMPLEMENTATIONS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    IMPLEMENTATIONS[op][backend] = impl


def _this_machines_devices() -> tuple[torch.device, ...]:
    return (torch.device("cpu"), *((torch.device("cuda"),) if torch.cuda.is_available() else ()))


def available_backends(op: str, device: torch.device | str | None = None) -> tuple[str, ...]:
    """The backends that can run `op` here: built in this installation and able to take tensors on
    `device` (default: on any device this machine has; Triton on a CPU-only machine only interpreted,
    TRITON_INTERPRET=1)."""
    if op not in IMPLEMENTATIONS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    devices = _this_machines_devices() if device is None else (torch.device(device),)
    return tuple(name for name in IMPLEMENTATIONS[op] if any(REGISTRY[name].runs_on(d) for d in devices))


def built_backends(op: str) -> tuple[str, ...]:
    """The backends whose kernels for `op` are built in this installation, whatever device they need."""
    return tuple(IMPLEMENTATIONS[op])


def auto_preference(op: str, device: torch.device) -> tuple[str, ...]:
    """What "auto" runs `op` on for `device` tensors, first choice first (the reference aside)."""
    return _auto_preference(op, device.type)


@functools.cache  # every op call asks: the registry is fixed once loaded, so each answer is made once
def _auto_preference(op: str, device_type: str) -> tuple[str, ...]:
    return tuple(b.name for b in REGISTRY.values() if op in b.auto.get(device_type, ()))


def describe() -> dict:
    """Built backends per op, why the missing ones are missing, and what "auto" leaves out and why."""
    return {"built": {op: list(impls) for op, impls in IMPLEMENTATIONS.items()}, "load_errors": dict(LOAD_ERRORS),
            "gpu": [b.name for b in REGISTRY.values() if b.gpu],
            "notes": {b.name: b.note for b in REGISTRY.values() if b.note}}


# ---- loaders -------------------------------------------------------------------------------------------
def _load_reference() -> None:
    from . import reference

    for op in OPS:
        register(op, "reference", getattr(reference, op))


@functools.cache
def _load_extension() -> str | None:
    """dvfl_kernels._C: loading it registers the dvfl C++ ops and their CPU (and CUDA) kernels."""
    try:
        from . import _C  # noqa: F401  (importing it registers the ops)
    except ImportError as err:
        return f"the C++ extension dvfl_kernels._C did not load ({err})"
    from . import cpu_int8, focal, kd_loss

    focal.register_family("cpp")
    kd_loss.register_family_cpp()
    cpu_int8.register_fakes()
    return None


def _load_cpu() -> str | None:
    from . import focal, kd_loss

    error = _load_extension()
    if error:
        return error
    for op, impl in {**focal.implementations("cpp"), **kd_loss.implementations("cpp")}.items():
        register(op, "cpu", impl)
    return None


def _load_cuda() -> str | None:
    from . import focal, kd_loss

    error = _load_extension()
    if error:
        return error
    if not torch._C._dispatch_has_kernel_for_dispatch_key("dvfl::kd_ce_loss_rows", "CUDA"):
        return "dvfl_kernels._C was built without CUDA kernels (CPU-only torch or DVFL_SKIP_CUDA=1)"
    for op, impl in {**focal.implementations("cpp"), **kd_loss.implementations("cpp")}.items():
        register(op, "cuda", impl)
    return None


def _load_triton() -> str | None:
    try:
        from .triton import focal_modulation as triton_focal
        from .triton import kd_loss as triton_kd_loss
    except ImportError as err:
        return f"triton is not importable ({err})"
    from . import focal, kd_loss

    focal.declare_triton(triton_focal)
    kd_loss.declare_triton(triton_kd_loss)
    for op, impl in {**focal.implementations("triton"), **kd_loss.implementations("triton")}.items():
        register(op, "triton", impl)
    return None


REGISTRY: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("reference", ("cpu", "cuda"), load=_load_reference),
        Backend("cpu", ("cpu",), auto={"cpu": OPS}, load=_load_cpu),
        # Triton before CUDA C++ for the loss on GPUs: not measured yet (no GPU has run them);
        # bench/run_gpu.sh times both, and this order should follow its results.
        Backend("triton", ("cuda",), gpu=True, auto={"cuda": OPS}, load=_load_triton, interpreter="TRITON_INTERPRET"),
        Backend("cuda", ("cuda",), gpu=True, auto={"cuda": ("kd_ce_loss",)}, load=_load_cuda,
                note="the CUDA C++ focal kernels are compiled but not yet validated on a GPU: 'auto' does not "
                     "pick them until bench/run_gpu.sh has validated and timed them against Triton"),
    )
}
BACKENDS = tuple(REGISTRY)


def load_all() -> None:
    """Every backend's loader, once (at import of dvfl_kernels.ops)."""
    for backend in REGISTRY.values():
        error = backend.load() if backend.load is not None else None
        if error:
            LOAD_ERRORS[backend.name] = error
