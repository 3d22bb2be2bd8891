"""The fused distillation loss's custom ops: fake kernel, autograd, and the kd_ce_loss backends.

dvfl::kd_ce_loss_rows (C++: CPU and CUDA dispatch keys, csrc/kd_loss/) and dvfl::kd_ce_loss_rows_triton
return per-row losses (3, B) = [total, kd, ce] and d total_b / d student_b (B, K), computed in one
pass; the backward is that gradient scaled by the upstream gradient of each row's total.
"""
from __future__ import annotations

import torch

from . import reference


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


def _register_fake_and_autograd(qualname: str) -> None:
    torch.library.register_fake(qualname)(_fake_kd_ce_loss_rows)
    torch.library.register_autograd(qualname, _kd_backward, setup_context=_kd_setup_context)


def register_family_cpp() -> None:
    """Fake kernel and autograd of the C++ op (the extension has loaded)."""
    _register_fake_and_autograd("dvfl::kd_ce_loss_rows")


def declare_triton(triton_kd_loss) -> None:
    """Declare the Triton op with the kernel of `triton_kd_loss` (dvfl_kernels.triton.kd_loss), its
    fake and autograd. An opaque custom op (like the C++ one) with the same fake kernel: torch.compile
    treats the launch as one node, and tracing also works when the kernel runs in Triton's interpreter
    (CPU tensors)."""

    @torch.library.custom_op("dvfl::kd_ce_loss_rows_triton", mutates_args=())
    def kd_ce_loss_rows_triton(
        student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
        alpha: float, temperature: float, label_smoothing: float, compute_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The kernel needs each row's classes adjacent; other strides are handled.
        student, teacher, target = (x if x.stride(-1) == 1 else x.contiguous() for x in (student, teacher, target))
        return triton_kd_loss.kd_ce_rows(student, teacher, target, alpha, temperature, label_smoothing, compute_grad)

    _register_fake_and_autograd("dvfl::kd_ce_loss_rows_triton")


def implementations(family: str) -> dict:
    """kd_ce_loss on one family's op ("cpp" or "triton"), for backends.register."""
    op = torch.ops.dvfl.kd_ce_loss_rows_triton if family == "triton" else torch.ops.dvfl.kd_ce_loss_rows
    return {"kd_ce_loss": _fused_kd_ce_loss(op)}
