"""The focal-modulation ops: one fake kernel and one autograd formula per op, shared by both kernel
families, each op declared once:
- ``dvfl::spatial_context``, ``temporal_context``, ``modulate`` and their ``_backward`` ops: schemas in
  csrc/ops.cpp, C++ kernels registered per dispatch key (CPU, and CUDA in builds with CUDA) in
  csrc/focal/focal.cpp;
- ``dvfl::spatial_context_triton`` ... ``modulate_backward_triton``: the Triton kernels, declared here
  (they need no C++ extension), for CUDA tensors or, interpreted (TRITON_INTERPRET=1), CPU tensors.
The backend is chosen once, in ops.py, by picking the op. Forward ops also return what their backward
needs (pre-activations, global means); the public functions return the context alone.
"""
from __future__ import annotations

from types import ModuleType

import torch

from . import _checks

_BACKWARD_NOTE = "ran with save=False (no input needed a gradient), so it kept nothing for backward"
OPS = ("spatial_context", "temporal_context", "modulate")
# The Triton family's schemas (the C++ family's are csrc/ops.cpp's, the same with their own names).
TRITON_SCHEMAS = {
    "spatial_context": "(Tensor z, Tensor g, Tensor[] weights, bool normalize, bool save) -> (Tensor, Tensor, Tensor)",
    "spatial_context_backward": "(Tensor grad, Tensor z, Tensor g, Tensor[] weights, Tensor pre, Tensor mean, "
                                "bool normalize, bool weights_grad) -> Tensor[]",
    "temporal_context": "(Tensor z_t, Tensor g_t, Tensor[] weights, int num_frames, bool normalize, bool save) "
                        "-> (Tensor, Tensor, Tensor)",
    "temporal_context_backward": "(Tensor grad, Tensor z_t, Tensor g_t, Tensor[] weights, int num_frames, Tensor pre, "
                                 "Tensor mean, bool normalize, bool weights_grad) -> Tensor[]",
    "modulate": "(Tensor q, Tensor m_s, Tensor m_t) -> Tensor",
    "modulate_backward": "(Tensor grad, Tensor q, Tensor m_s, Tensor m_t) -> Tensor[]",
}


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def op_name(op: str, family: str, backward: bool = False) -> str:
    """The custom op of `op` in a kernel family ("cpp" or "triton")."""
    return f"{op}{'_backward' if backward else ''}{'_triton' if family == 'triton' else ''}"


# ---- fake kernels (shapes and dtypes of both families' outputs) ----------------------------------------
def _fake_spatial(z, g, weights, normalize, save):
    n, h, w, c = z.shape
    acc = _acc_dtype(z)
    return (z.new_empty(z.shape), z.new_empty((len(weights) if save else 0, n, h, w, c), dtype=acc),
            z.new_empty((n, c), dtype=acc))


def _fake_temporal(z_t, g_t, weights, num_frames, normalize, save):
    n, h, w, c = z_t.shape
    acc = _acc_dtype(z_t)
    return (z_t.new_empty(z_t.shape), z_t.new_empty((len(weights) if save else 0, n, h, w, c), dtype=acc),
            z_t.new_empty((n // num_frames, h, w, c), dtype=acc))


def _fake_context_backward(grad, z, g, weights, *rest):
    weights_grad = rest[-1]  # the weights' gradients only where asked (frozen weights: [dz, dg])
    return [z.new_empty(z.shape), g.new_empty(g.shape), *(w.new_empty(w.shape) for w in weights if weights_grad)]


def _fake_modulate(q, m_s, m_t):
    return q.new_empty(q.shape)


def _fake_modulate_backward(grad, q, m_s, m_t):
    return [q.new_empty(q.shape), m_s.new_empty(m_s.shape), m_t.new_empty(m_t.shape)]


FAKES = {"spatial_context": _fake_spatial, "spatial_context_backward": _fake_context_backward,
         "temporal_context": _fake_temporal, "temporal_context_backward": _fake_context_backward,
         "modulate": _fake_modulate, "modulate_backward": _fake_modulate_backward}


# ---- autograd (each forward's backward is its family's backward op) ---------------------------------------
def _autograd(op: str, backward_op):
    """(setup_context, backward) of forward op `op`, whose gradient `backward_op` computes."""
    if op == "modulate":
        def setup(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        def backward(ctx, grad):
            return tuple(backward_op(grad, *ctx.saved_tensors))

        return setup, backward
    spatial = op == "spatial_context"

    def setup(ctx, inputs, output):
        if spatial:
            z, g, weights, normalize, save = inputs
        else:
            z, g, weights, ctx.num_frames, normalize, save = inputs
        ctx.save_for_backward(z, g, output[1], output[2], *weights)
        ctx.normalize, ctx.saved = normalize, save
        ctx.mark_non_differentiable(output[1], output[2])

    def backward(ctx, grad, _grad_pre, _grad_mean):
        if not ctx.saved:
            raise RuntimeError(f"dvfl::{op}: {_BACKWARD_NOTE}")
        z, g, pre, mean, *weights = ctx.saved_tensors
        frames = () if spatial else (ctx.num_frames,)
        # extension-cpp's needs_input_grad: frozen weights (a frozen stage, a teacher) cost no weight-gradient work
        weights_grad = any(ctx.needs_input_grad[2])  # one bool per weight (torch.library unflattens the list)
        dz, dg, *dweights = backward_op(grad, z, g, weights, *frames, pre, mean, ctx.normalize, weights_grad)
        return (dz, dg, dweights if weights_grad else [None] * len(weights), *([None] * (2 if spatial else 3)))

    return setup, backward


def register_family(family: str) -> None:
    """Fake kernels and autograd of one family's ops (the C++ ops once the extension has loaded; the
    Triton ops once declared)."""
    for name, fake in FAKES.items():
        op, backward = name.removesuffix("_backward"), name.endswith("_backward")
        torch.library.register_fake(f"dvfl::{op_name(op, family, backward)}")(fake)
    for op in OPS:
        setup, backward = _autograd(op, getattr(torch.ops.dvfl, op_name(op, family, backward=True)))
        torch.library.register_autograd(f"dvfl::{op_name(op, family)}", backward, setup_context=setup)


def _as_contract(out, pre, mean, like: torch.Tensor):
    """Triton keeps float32 buffers; the schema's contract is the accumulation dtype."""
    acc = _acc_dtype(like)
    return out, pre.to(acc), mean.to(acc)


def declare_triton(triton: ModuleType) -> None:
    """Declare the Triton family's ops (no C++ extension needed) with the kernels of `triton`
    (dvfl_kernels.triton.focal_modulation), their fakes and autograd."""
    # Each op checks its arguments, as the C++ ops do: a direct call (torch.ops.dvfl.*) bypasses ops.py.
    def spatial(z, g, w, normalize, save):
        _checks.check_spatial_context(z, g, w)
        return _as_contract(*triton.spatial_context_forward(z, g, w, normalize, save), z)

    def spatial_backward(grad, z, g, w, pre, mean, normalize, weights_grad):
        _checks.check_spatial_context(z, g, w)
        _checks.check_upstream(grad, z, "z")
        _checks.check_saved(pre, mean, z, len(w), (z.shape[0], z.shape[3]))
        return _flat(triton.spatial_context_backward(grad, z, g, w, pre.float(), mean.float(), normalize), weights_grad)

    def temporal(z, g, w, frames, normalize, save):
        _checks.check_temporal_context(z, g, w, frames)
        return _as_contract(*triton.temporal_context_forward(z, g, w, frames, normalize, save), z)

    def temporal_backward(grad, z, g, w, frames, pre, mean, normalize, weights_grad):
        _checks.check_temporal_context(z, g, w, frames)
        _checks.check_upstream(grad, z, "z_t")
        _checks.check_saved(pre, mean, z, len(w), (z.shape[0] // frames, *z.shape[1:]))
        return _flat(triton.temporal_context_backward(grad, z, g, w, frames, pre.float(), mean.float(), normalize),
                     weights_grad)

    def modulate(q, m_s, m_t):
        _checks.check_modulate(q, m_s, m_t)
        return triton.modulate_forward(q, m_s, m_t)

    def modulate_backward(grad, q, m_s, m_t):
        _checks.check_modulate(q, m_s, m_t)
        _checks.check_upstream(grad, q, "q")
        return list(triton.modulate_backward(grad, q, m_s, m_t))

    kernels = {"spatial_context": spatial, "spatial_context_backward": spatial_backward, "temporal_context": temporal,
               "temporal_context_backward": temporal_backward, "modulate": modulate,
               "modulate_backward": modulate_backward}
    for name, schema in TRITON_SCHEMAS.items():
        op, backward = name.removesuffix("_backward"), name.endswith("_backward")
        qualname = f"dvfl::{op_name(op, 'triton', backward)}"
        torch.library.define(qualname, schema)
        for device in ("CPU", "CUDA"):
            torch.library.impl(qualname, device)(kernels[name])
    register_family("triton")


def _flat(grads, weights_grad: bool) -> list:
    """The backward op's list: [dz, dg, *dweights], the weights' gradients only where asked (the Triton
    kernels compute them either way), contiguous as the fake kernel promises (the weight's own layout)."""
    dz, dg, dweights = grads
    return [dz, dg, *(w.contiguous() for w in dweights if weights_grad)]


def implementations(family: str) -> dict:
    """The public functions' implementations on one family's ops, for ops.register_backend."""
    spatial_op, temporal_op, modulate_op = (getattr(torch.ops.dvfl, op_name(op, family)) for op in OPS)

    def spatial(z, g, weights, normalize):
        return spatial_op(z, g, weights, normalize, needs_grad(z, g, *weights))[0]

    def temporal(z_t, g_t, weights, num_frames, normalize):
        return temporal_op(z_t, g_t, weights, num_frames, normalize, needs_grad(z_t, g_t, *weights))[0]

    def modulate(q, m_s, m_t):
        return modulate_op(q, m_s, m_t)

    return {"spatial_context": spatial, "temporal_context": temporal, "modulate": modulate}
