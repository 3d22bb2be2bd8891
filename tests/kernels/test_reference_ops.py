"""The reference ops against independent float64 computations (public-code style: NCHW copies,
nn.functional convolutions, torch's KL / CE), forward and every gradient; validation and dispatch."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dvfl_kernels
from dvfl_kernels import ops, reference
from helpers import assert_close, strided_view

F64 = dict(dtype=torch.float64)


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def spatial_independent(z, g, weights, normalize):
    """The public model's computation: channels-first contiguous copies and grouped conv2d."""
    ctx = z.permute(0, 3, 1, 2).contiguous()
    gates = g.permute(0, 3, 1, 2).contiguous()
    acc = 0
    for level, w in enumerate(weights):
        ctx = gelu_erf(F.conv2d(ctx, w, padding=w.shape[-1] // 2, groups=ctx.shape[1]))
        acc = acc + ctx * gates[:, level : level + 1]
    acc = acc + gelu_erf(ctx.mean(2, keepdim=True).mean(3, keepdim=True)) * gates[:, len(weights) :]
    if normalize:
        acc = acc / (len(weights) + 1)
    return acc.permute(0, 2, 3, 1)


def temporal_independent(z_t, g_t, weights, num_frames, normalize):
    """The public model's computation: (b t) h w c -> (b h w) c t copies and conv1d."""
    n, h, w, c = z_t.shape
    b = n // num_frames

    def to_seq(x):
        return x.reshape(b, num_frames, h, w, -1).permute(0, 2, 3, 4, 1).reshape(b * h * w, -1, num_frames)

    ctx, gates = to_seq(z_t), to_seq(g_t)
    acc = 0
    for level, wt in enumerate(weights):
        ctx = gelu_erf(F.conv1d(ctx, wt, padding=wt.shape[-1] // 2))
        acc = acc + ctx * gates[:, level : level + 1]
    acc = acc + gelu_erf(ctx.mean(2, keepdim=True)) * gates[:, len(weights) :]
    if normalize:
        acc = acc / (len(weights) + 1)
    return acc.reshape(b, h, w, c, num_frames).permute(0, 4, 1, 2, 3).reshape(n, h, w, c)


def _grads(out, inputs, upstream):
    return torch.autograd.grad(out, inputs, upstream, allow_unused=False)


def _kernels(levels, c, dense, window=3, factor=2):
    shapes = [(c, c, factor * l + window) if dense else (c, 1, factor * l + window, factor * l + window) for l in range(levels)]
    return [(torch.randn(s, **F64) / math.sqrt(s[1] * s[-1])).requires_grad_() for s in shapes]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=st.integers(1, 10),
    levels=st.integers(1, 3),
    normalize=st.booleans(),
    strided=st.booleans(),
)
def test_spatial_context_matches_independent(n, h, w, c, levels, normalize, strided):
    z = torch.randn(n, h, w, c, **F64)
    g = torch.randn(n, h, w, levels + 1, **F64)
    weights = _kernels(levels, c, dense=False)
    z_in = strided_view(z) if strided else z.clone().requires_grad_()
    g_in = strided_view(g) if strided else g.clone().requires_grad_()
    z_before, g_before = z_in.detach().clone(), g_in.detach().clone()
    out = dvfl_kernels.spatial_context(z_in, g_in, weights, normalize, backend="reference")
    z_ref, g_ref = z.clone().requires_grad_(), g.clone().requires_grad_()
    ref = spatial_independent(z_ref, g_ref, weights, normalize)
    assert_close(out, ref, 1e-12, "A_s")
    assert out.is_contiguous()
    upstream = torch.randn_like(ref)
    got = _grads(out, [z_in, g_in, *weights], upstream)
    want = _grads(ref, [z_ref, g_ref, *weights], upstream)
    for name, a, b in zip(["z", "g"] + [f"w{l}" for l in range(levels)], got, want):
        assert_close(a, b, 1e-12, f"grad {name}")
    assert torch.equal(z_in.detach(), z_before) and torch.equal(g_in.detach(), g_before)


@settings(max_examples=25, deadline=None)
@given(
    clips=st.integers(1, 3),
    t=st.sampled_from([1, 2, 3, 8]),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    c=st.integers(1, 9),
    levels=st.integers(1, 3),
    normalize=st.booleans(),
    strided=st.booleans(),
)
def test_temporal_context_matches_independent(clips, t, h, w, c, levels, normalize, strided):
    n = clips * t
    z = torch.randn(n, h, w, c, **F64)
    g = torch.randn(n, h, w, levels + 1, **F64)
    weights = _kernels(levels, c, dense=True)
    z_in = strided_view(z) if strided else z.clone().requires_grad_()
    g_in = strided_view(g) if strided else g.clone().requires_grad_()
    out = dvfl_kernels.temporal_context(z_in, g_in, weights, t, normalize, backend="reference")
    z_ref, g_ref = z.clone().requires_grad_(), g.clone().requires_grad_()
    ref = temporal_independent(z_ref, g_ref, weights, t, normalize)
    assert_close(out, ref, 1e-12, "A_t")
    upstream = torch.randn_like(ref)
    got = _grads(out, [z_in, g_in, *weights], upstream)
    want = _grads(ref, [z_ref, g_ref, *weights], upstream)
    for name, a, b in zip(["z_t", "g_t"] + [f"w{l}" for l in range(levels)], got, want):
        assert_close(a, b, 1e-12, f"grad {name}")


def test_modulate_and_gradcheck_small():
    q, ms, mt = (torch.randn(2, 3, 4, 5, **F64, requires_grad=True) for _ in range(3))
    assert torch.equal(dvfl_kernels.modulate(q, ms, mt, backend="reference"), q * ms * mt)
    assert torch.autograd.gradcheck(lambda a, b, c: dvfl_kernels.modulate(a, b, c, backend="reference"), (q, ms, mt))
    z = torch.randn(2, 3, 4, 3, **F64, requires_grad=True)
    g = torch.randn(2, 3, 4, 3, **F64, requires_grad=True)
    ws = _kernels(2, 3, dense=False)
    assert torch.autograd.gradcheck(lambda z, g, a, b: reference.spatial_context(z, g, [a, b], True), (z, g, *ws))
    wt = _kernels(2, 3, dense=True)
    assert torch.autograd.gradcheck(lambda z, g, a, b: reference.temporal_context(z, g, [a, b], 2, False), (z, g, *wt))


# ---- the distillation loss ------------------------------------------------------------------------


def loss_independent(s, t, target, alpha, temp, eps):
    kd = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), reduction="none", log_target=True)
    kd = kd.sum(-1) * temp * temp
    ce = F.cross_entropy(s, target, label_smoothing=eps, reduction="none")
    return alpha * kd + (1 - alpha) * ce, kd, ce


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("alpha,temp", [(0.0, 1.0), (0.3, 10.0), (1.0, 5.0), (0.5, 15.0)])
@pytest.mark.parametrize("b,k", [(1, 1), (3, 2), (8, 101), (5, 1000)])
def test_kd_ce_loss_matches_torch(soft, eps, alpha, temp, b, k):
    s = (torch.randn(b, k, **F64) * 4).requires_grad_()
    t = torch.randn(b, k, **F64) * 4
    target = torch.softmax(torch.randn(b, k, **F64), -1) if soft else torch.randint(0, k, (b,))
    for reduction in ("mean", "sum", "none"):
        got = dvfl_kernels.kd_ce_loss(s, t, target, alpha, temp, eps, reduction=reduction, backend="reference")
        want = loss_independent(s, t, target, alpha, temp, eps)
        reduce = {"mean": torch.mean, "sum": torch.sum, "none": lambda x: x}[reduction]
        for name, a, w in zip(("total", "kd", "ce"), got, want):
            assert_close(a, reduce(w), 1e-12, f"{name} ({reduction})")
    upstream = torch.randn(b, **F64)
    (g_got,) = torch.autograd.grad(dvfl_kernels.kd_ce_loss(s, t, target, alpha, temp, eps, "none", "reference")[0], s, upstream)
    (g_want,) = torch.autograd.grad(loss_independent(s, t, target, alpha, temp, eps)[0], s, upstream)
    assert_close(g_got, g_want, 1e-12, "grad student")


def test_kd_ce_loss_extreme_logits_and_teacher_minus_inf():
    s = torch.tensor([[1e4, -1e4, 0.0, 3.0]], **F64, requires_grad=True)
    t = torch.tensor([[float("-inf"), 2.0, 1e4, float("-inf")]], **F64)
    total, kd, ce = dvfl_kernels.kd_ce_loss(s, t, torch.tensor([2]), 0.3, 10.0, backend="reference")
    assert torch.isfinite(total) and torch.isfinite(kd) and torch.isfinite(ce)
    # Only the classes the teacher allows enter the KL: p_t = softmax over classes 1, 2.
    log_p = torch.log_softmax(t[0, 1:3] / 10, -1)
    log_q = torch.log_softmax(s[0] / 10, -1)[1:3]
    assert_close(kd, 100 * (log_p.exp() * (log_p - log_q)).sum(), 1e-12, "kd")
    (grad,) = torch.autograd.grad(total, s)
    assert torch.isfinite(grad).all()


def test_kd_ce_loss_half_inputs_computed_in_float32_and_teacher_gets_no_grad():
    s = torch.randn(4, 7, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(4, 7, dtype=torch.bfloat16, requires_grad=True)
    total, kd, ce = dvfl_kernels.kd_ce_loss(s, t, torch.tensor([0, 1, 2, 6]), 0.3, 10.0, backend="reference")
    assert total.dtype == kd.dtype == ce.dtype == torch.float32
    want = loss_independent(s.double(), t.double(), torch.tensor([0, 1, 2, 6]), 0.3, 10.0, 0.0)
    assert_close(total, want[0].mean(), 1e-5, "bf16 total")  # fp32 arithmetic on bf16 values
    total.backward()
    assert s.grad is not None and t.grad is None


# ---- validation and dispatch -------------------------------------------------------------------------


def _spatial_args():
    return torch.randn(2, 5, 5, 4), torch.randn(2, 5, 5, 3), [torch.randn(4, 1, 3, 3), torch.randn(4, 1, 5, 5)]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: (a[0][0], a[1], a[2]), r"z: expected a 4-D"),
        (lambda a: (a[0], a[1][..., :2], a[2]), r"g: expected shape \(2, 5, 5, 3\)"),
        (lambda a: (a[0].double(), a[1], a[2]), r"dtype"),
        (lambda a: (a[0].int(), a[1], a[2]), r"z: expected a float"),
        (lambda a: (a[0], a[1], []), r"weights: expected a non-empty list"),
        (lambda a: (a[0], a[1], [a[2][0], torch.randn(4, 1, 4, 4)]), r"weights\[1\]: .*odd kernel"),
        (lambda a: (a[0], a[1], [a[2][0], torch.randn(3, 1, 5, 5)]), r"weights\[1\]: expected shape \(4, 1\)"),
    ],
)
def test_spatial_context_bad_input(mutate, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dvfl_kernels.spatial_context(*mutate(_spatial_args()), backend="reference")


def test_temporal_context_bad_input():
    z, g, w = torch.randn(6, 2, 2, 4), torch.randn(6, 2, 2, 2), [torch.randn(4, 4, 3)]
    with pytest.raises(ValueError, match="num_frames=4 does not divide"):
        dvfl_kernels.temporal_context(z, g, w, 4)
    with pytest.raises(ValueError, match="num_frames: expected a positive int"):
        dvfl_kernels.temporal_context(z, g, w, 0)
    with pytest.raises(ValueError, match=r"weights\[0\]: expected shape \(4, 4\)"):
        dvfl_kernels.temporal_context(z, g, [torch.randn(4, 1, 3)], 3)
    with pytest.raises(ValueError, match="m_t: expected shape"):
        dvfl_kernels.modulate(z, z, z[:, :1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(teacher_logits=torch.randn(3, 6)), r"teacher_logits: expected shape \(3, 5\)"),
        (dict(student_logits=torch.randn(3, 0), teacher_logits=torch.randn(3, 0)), r"K >= 1"),
        (dict(student_logits=torch.randn(0, 5), teacher_logits=torch.randn(0, 5), target=torch.zeros(0, dtype=torch.long)), r"B >= 1"),
        (dict(target=torch.tensor([0, 5, 1])), r"target: class labels must lie in \[0, 5\)"),
        (dict(target=torch.tensor([0, -1, 1])), r"target: class labels must lie"),
        (dict(target=torch.tensor([0, 1])), r"target: class labels must have shape \(3,\)"),
        (dict(target=torch.full((3, 5), 0.3)), r"target: soft targets must be distributions"),
        (dict(target=torch.tensor([0.0, 1.0, 2.0])), r"target: soft targets must have shape"),
        (dict(temperature=0.0), r"temperature: expected a finite value in \(0"),
        (dict(temperature=-1.0), r"temperature"),
        (dict(alpha=1.5), r"alpha: expected a finite value in \[0"),
        (dict(alpha=float("nan")), r"alpha"),
        (dict(label_smoothing=1.0), r"label_smoothing"),
        (dict(teacher_logits=torch.randn(3, 5, dtype=torch.float64)), r"teacher_logits has dtype"),
        (dict(reduction="avg"), r"reduction: expected one of"),
        (dict(target=torch.tensor([True, False, True])), r"target: expected integer class labels"),
    ],
)
def test_kd_ce_loss_bad_input(kwargs, match):
    args = dict(
        student_logits=torch.randn(3, 5), teacher_logits=torch.randn(3, 5), target=torch.tensor([0, 4, 1]),
        alpha=0.3, temperature=10.0, label_smoothing=0.0, reduction="mean",
    )
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        dvfl_kernels.kd_ce_loss(**args, backend="reference")


def test_backend_selection_errors_and_fallback_warning(monkeypatch):
    z, g, w = _spatial_args()
    with pytest.raises(ValueError, match="backend: expected 'auto' or one of"):
        dvfl_kernels.spatial_context(z, g, w, backend="fast")
    if not torch.cuda.is_available():
        with pytest.raises(dvfl_kernels.BackendUnavailableError, match="backend 'cuda' is not available"):
            dvfl_kernels.spatial_context(z, g, w, backend="cuda")
    # On CPU "auto" runs the C++ kernels where they are built, silently.
    if "cpu" in dvfl_kernels.available_backends("spatial_context"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(dvfl_kernels.spatial_context(z, g, w), dvfl_kernels.spatial_context(z, g, w, backend="cpu"))
    # A preferred backend that is missing (here: the CPU loss kernel) warns once, then runs the reference.
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 4])
    monkeypatch.setitem(ops.IMPLEMENTATIONS, "kd_ce_loss", {"reference": reference.kd_ce_loss})
    monkeypatch.setattr(ops.RUNTIME, "warned", set())
    with pytest.warns(UserWarning, match="kd_ce_loss: backend 'auto' wanted 'cpu'.*using the plain-PyTorch reference"):
        got = dvfl_kernels.kd_ce_loss(s, t, y, 0.3, 10.0)
    assert torch.equal(got[0], reference.kd_ce_loss(s, t, y, 0.3, 10.0)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per op and device, not per call
        dvfl_kernels.kd_ce_loss(s, t, y, 0.3, 10.0)
