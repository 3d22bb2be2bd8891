"""The focal-modulation ops (schemas declared once, in csrc/ops.cpp): one fake kernel and one
autograd formula per op, and the kernels that serve each device.

Every op takes a trailing ``backend`` string naming the kernel family that runs it, so one schema
serves them all and the choice survives ``torch.compile`` and ``torch.export``:
- CPU tensors: ``"cpu"``, the C++ kernels (csrc/focal/); ``"triton"`` runs the Triton kernels in
  Triton's interpreter (TRITON_INTERPRET=1, for tests without a GPU).
- CUDA tensors: ``"triton"``, or ``"cuda"``: the CUDA C++ kernels (csrc/focal/focal_cuda.cu, in
  builds with CUDA), launched by the same C++ code as the CPU kernels.
Forward ops also return what their backward needs (pre-activations, global means); the public
functions (``dvfl_kernels.spatial_context`` ...) return the context alone.
"""
from __future__ import annotations

from types import ModuleType

import torch

_BACKWARD_NOTE = "ran with save=False (no input needed a gradient), so it kept nothing for backward"


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# ---- fake kernels (shapes and dtypes of every backend's outputs) -------------------------------------
def _fake_spatial(z, g, weights, normalize, save, backend):
    n, h, w, c = z.shape
    acc = _acc_dtype(z)
    return (z.new_empty(z.shape), z.new_empty((len(weights) if save else 0, n, h, w, c), dtype=acc),
            z.new_empty((n, c), dtype=acc))


def _fake_temporal(z_t, g_t, weights, num_frames, normalize, save, backend):
    n, h, w, c = z_t.shape
    acc = _acc_dtype(z_t)
    return (z_t.new_empty(z_t.shape), z_t.new_empty((len(weights) if save else 0, n, h, w, c), dtype=acc),
            z_t.new_empty((n // num_frames, h, w, c), dtype=acc))


def _fake_context_backward(grad, z, g, weights, *rest):
    return [z.new_empty(z.shape), g.new_empty(g.shape), *(w.new_empty(w.shape) for w in weights)]


def _fake_modulate(q, m_s, m_t, backend):
    return q.new_empty(q.shape)


def _fake_modulate_backward(grad, q, m_s, m_t, backend):
    return [q.new_empty(q.shape), m_s.new_empty(m_s.shape), m_t.new_empty(m_t.shape)]


# ---- autograd ------------------------------------------------------------------------------------------
def _spatial_setup(ctx, inputs, output):
    z, g, weights, normalize, save, backend = inputs
    ctx.save_for_backward(z, g, output[1], output[2], *weights)
    ctx.normalize, ctx.saved, ctx.backend = normalize, save, backend
    ctx.mark_non_differentiable(output[1], output[2])


def _spatial_backward(ctx, grad, _grad_pre, _grad_mean):
    if not ctx.saved:
        raise RuntimeError(f"dvfl::spatial_context: {_BACKWARD_NOTE}")
    z, g, pre, mean, *weights = ctx.saved_tensors
    dz, dg, *dweights = torch.ops.dvfl.spatial_context_backward(
        grad, z, g, weights, pre, mean, ctx.normalize, ctx.backend
    )
    return dz, dg, dweights, None, None, None


def _temporal_setup(ctx, inputs, output):
    z_t, g_t, weights, num_frames, normalize, save, backend = inputs
    ctx.save_for_backward(z_t, g_t, output[1], output[2], *weights)
    ctx.num_frames, ctx.normalize, ctx.saved, ctx.backend = num_frames, normalize, save, backend
    ctx.mark_non_differentiable(output[1], output[2])


def _temporal_backward(ctx, grad, _grad_pre, _grad_mean):
    if not ctx.saved:
        raise RuntimeError(f"dvfl::temporal_context: {_BACKWARD_NOTE}")
    z_t, g_t, pre, mean, *weights = ctx.saved_tensors
    dz, dg, *dweights = torch.ops.dvfl.temporal_context_backward(
        grad, z_t, g_t, weights, ctx.num_frames, pre, mean, ctx.normalize, ctx.backend
    )
    return dz, dg, dweights, None, None, None, None


def _modulate_setup(ctx, inputs, output):
    q, m_s, m_t, backend = inputs
    ctx.save_for_backward(q, m_s, m_t)
    ctx.backend = backend


def _modulate_backward(ctx, grad):
    dq, dm_s, dm_t = torch.ops.dvfl.modulate_backward(grad, *ctx.saved_tensors, ctx.backend)
    return dq, dm_s, dm_t, None


# ---- kernels per device --------------------------------------------------------------------------------
def _as_contract(out, pre, mean, like: torch.Tensor):
    """Triton keeps float32 buffers; the schema's contract is the accumulation dtype."""
    acc = _acc_dtype(like)
    return out, pre.to(acc), mean.to(acc)


class _Kernels:
    """The kernel families built here: `ext` is the extension module (the C++ kernels of both devices,
    CUDA ones when `with_cuda`), `triton` the Triton launchers."""

    def __init__(self, ext: ModuleType | None, triton: ModuleType | None, with_cuda: bool):
        self.ext, self.triton, self.with_cuda = ext, triton, with_cuda

    def pick(self, op: str, backend: str, device: str):
        if backend == "triton" and self.triton is not None:
            return "triton"
        if self.ext is not None and ((backend == "cpu" and device == "cpu") or (backend == "cuda" and device == "cuda" and self.with_cuda)):
            return "cpp"
        raise RuntimeError(f"dvfl::{op}: backend {backend!r} has no kernel for {device} tensors in this installation")

    # the registered kernels; `device` is the dispatch key's device type
    def spatial(self, device):
        def kernel(z, g, weights, normalize, save, backend):
            if self.pick("spatial_context", backend, device) == "triton":
                return _as_contract(*self.triton.spatial_context_forward(z, g, weights, normalize, save), z)
            return self.ext.spatial_context_kernels(z, g, weights, normalize, save)

        return kernel

    def spatial_backward(self, device):
        def kernel(grad, z, g, weights, pre, mean, normalize, backend):
            if self.pick("spatial_context_backward", backend, device) == "triton":
                dz, dg, dweights = self.triton.spatial_context_backward(
                    grad, z, g, weights, pre.float(), mean.float(), normalize
                )
                return [dz, dg, *dweights]
            return self.ext.spatial_context_backward_kernels(grad, z, g, weights, pre, mean, normalize)

        return kernel

    def temporal(self, device):
        def kernel(z_t, g_t, weights, num_frames, normalize, save, backend):
            if self.pick("temporal_context", backend, device) == "triton":
                out = self.triton.temporal_context_forward(z_t, g_t, weights, num_frames, normalize, save)
                return _as_contract(*out, z_t)
            return self.ext.temporal_context_kernels(z_t, g_t, weights, num_frames, normalize, save)

        return kernel

    def temporal_backward(self, device):
        def kernel(grad, z_t, g_t, weights, num_frames, pre, mean, normalize, backend):
            if self.pick("temporal_context_backward", backend, device) == "triton":
                dz, dg, dweights = self.triton.temporal_context_backward(
                    grad, z_t, g_t, weights, num_frames, pre.float(), mean.float(), normalize
                )
                return [dz, dg, *dweights]
            return self.ext.temporal_context_backward_kernels(grad, z_t, g_t, weights, num_frames, pre, mean, normalize)

        return kernel

    def modulate(self, device):
        def kernel(q, m_s, m_t, backend):
            if self.pick("modulate", backend, device) == "triton":
                return self.triton.modulate_forward(q, m_s, m_t)
            return self.ext.modulate_kernels(q, m_s, m_t)

        return kernel

    def modulate_backward(self, device):
        def kernel(grad, q, m_s, m_t, backend):
            if self.pick("modulate_backward", backend, device) == "triton":
                return list(self.triton.modulate_backward(grad, q, m_s, m_t))
            return self.ext.modulate_backward_kernels(grad, q, m_s, m_t)

        return kernel


def register(ext: ModuleType | None, triton: ModuleType | None, with_cuda: bool) -> None:
    """Register fake kernels, autograd and the CPU / CUDA kernels of the dvfl focal ops (their schemas
    come with the C++ extension, so this runs once it has loaded)."""
    kernels = _Kernels(ext, triton, with_cuda)
    ops = {
        "spatial_context": (_fake_spatial, kernels.spatial),
        "spatial_context_backward": (_fake_context_backward, kernels.spatial_backward),
        "temporal_context": (_fake_temporal, kernels.temporal),
        "temporal_context_backward": (_fake_context_backward, kernels.temporal_backward),
        "modulate": (_fake_modulate, kernels.modulate),
        "modulate_backward": (_fake_modulate_backward, kernels.modulate_backward),
    }
    for name, (fake, kernel_for) in ops.items():
        torch.library.register_fake(f"dvfl::{name}")(fake)
        for device in ("cpu", "cuda"):
            torch.library.impl(f"dvfl::{name}", device.upper())(kernel_for(device))
    torch.library.register_autograd("dvfl::spatial_context", _spatial_backward, setup_context=_spatial_setup)
    torch.library.register_autograd("dvfl::temporal_context", _temporal_backward, setup_context=_temporal_setup)
    torch.library.register_autograd("dvfl::modulate", _modulate_backward, setup_context=_modulate_setup)


def implementations(backend: str) -> dict:
    """The public-function implementations of `backend` ("cpu", "cuda" or "triton"), for ops.register_backend."""

    def spatial(z, g, weights, normalize):
        return torch.ops.dvfl.spatial_context(z, g, weights, normalize, needs_grad(z, g, *weights), backend)[0]

    def temporal(z_t, g_t, weights, num_frames, normalize):
        save = needs_grad(z_t, g_t, *weights)
        return torch.ops.dvfl.temporal_context(z_t, g_t, weights, num_frames, normalize, save, backend)[0]

    def modulate(q, m_s, m_t):
        return torch.ops.dvfl.modulate(q, m_s, m_t, backend)

    return {"spatial_context": spatial, "temporal_context": temporal, "modulate": modulate}
