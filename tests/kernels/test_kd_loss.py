"""The fused KL + CE loss: every built backend (C++ CPU, CUDA C++, Triton — interpreted on CPU
without a GPU) against the reference in float64, forward and gradient, across shapes, parameters,
dtypes and extreme logits; opcheck, gradcheck, torch.compile, validation, DistillationLoss."""
from __future__ import annotations

import random

import pytest
import torch

import dvfl_kernels
from dvfl_kernels import ops, reference
from dvflnet.losses import DistillationLoss
from helpers import assert_close, assert_close_to_rounding, interpreted, kernel_device, poison_allocator


def _backend_params():
    params = []
    for name in ("cpu", "triton", "cuda"):
        device = kernel_device(name)
        missing = name not in dvfl_kernels.available_backends("kd_ce_loss") or (device == "cuda" and not torch.cuda.is_available())
        reason = ops.LOAD_ERRORS.get(name, "needs a CUDA device")
        params.append(pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{name}: {reason}"), id=name))
    return params


BACKENDS = _backend_params()


def _inputs(b, k, soft, device, dtype=torch.float32, scale=4.0):
    s = (torch.randn(b, k, device=device) * scale).to(dtype)
    t = (torch.randn(b, k, device=device) * scale).to(dtype)
    target = torch.softmax(torch.randn(b, k, device=device), -1) if soft else torch.randint(0, k, (b,), device=device)
    return s, t, target


def _kd_term_size(s, t, temp):
    """Per row, the size of the terms T^2 p_t (log p_t - log p_s) that KD sums: where student and
    teacher nearly agree (T = 15, two classes) KD is a small difference of O(1) log-probabilities."""
    log_pt, log_ps = (torch.log_softmax(x.detach().double().cpu() / temp, -1) for x in (t, s))
    p_t = log_pt.exp()
    return temp**2 * torch.where(p_t > 0, p_t * (log_pt.abs() + log_ps.abs()), 0.0).sum(-1)


def _grad_term_size(s, t, target, upstream, alpha, temp, eps):
    """Per element, the size of the parts of u (alpha T (p_s - p_t) + (1 - alpha) (softmax(s) - y))."""
    s64, t64 = s.detach().double().cpu(), t.detach().double().cpu()
    k = s64.shape[-1]
    y = target.detach().double().cpu() if target.is_floating_point() else torch.nn.functional.one_hot(target.cpu(), k).double()
    y = (1 - eps) * y + eps / k
    parts = alpha * temp * (torch.softmax(s64 / temp, -1) + torch.softmax(t64 / temp, -1)) + (1 - alpha) * (torch.softmax(s64, -1) + y)
    return parts * upstream.detach().double().cpu().abs()[:, None]


def _check_against_reference(backend, s, t, target, alpha, temp, eps, tol, grad_tol=None, kd_tol=None):
    """Compare losses (per row) and the student gradient with the float64 reference."""
    s_in = s.clone().requires_grad_()
    before = [x.clone() for x in (s, t, target)]
    poison_allocator(s.device)
    got = dvfl_kernels.kd_ce_loss(s_in, t, target, alpha, temp, eps, reduction="none", backend=backend)
    s64 = s.double().requires_grad_()
    want = reference.kd_ce_loss(s64, t.double(), target.double() if target.is_floating_point() else target, alpha, temp, eps, "none")
    for name, a, w in zip(("total", "kd", "ce"), got, want):
        assert a.dtype == (torch.float64 if s.dtype == torch.float64 else torch.float32)
        if name == "kd" and a.dtype == torch.float32:
            assert_close_to_rounding(a, w, kd_tol or tol, _kd_term_size(s, t, temp), f"{backend} {name}")
        else:
            assert_close(a, w, kd_tol if (name == "kd" and kd_tol) else tol, f"{backend} {name}")
    upstream = torch.rand(s.shape[0], device=s.device, dtype=torch.float64) * 3 - 1  # not all ones
    (g_got,) = torch.autograd.grad(got[0], s_in, upstream.to(got[0].dtype))
    (g_want,) = torch.autograd.grad(want[0], s64, upstream)
    assert g_got.dtype == s.dtype and g_got.shape == s.shape
    if s.dtype == torch.float32:
        assert_close_to_rounding(g_got, g_want, grad_tol or tol, _grad_term_size(s, t, target, upstream, alpha, temp, eps), f"{backend} grad")
    else:
        assert_close(g_got, g_want, grad_tol or tol, f"{backend} grad")
    for x, x0 in zip((s, t, target), before):
        assert torch.equal(x, x0), "an input was modified"


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_against_reference(backend):
    device = kernel_device(backend)
    rng = random.Random()
    # a row is one program: under Triton's interpreter 64 rows repeat 8 rows' work at 8 times the cost
    for b in (1, 3, 8) if interpreted(backend) else (1, 3, 8, 64):
        for k in (1, 2, 51, 101, 174, 400, 1000, 5000):
            soft = rng.random() < 0.5
            alpha, temp, eps = rng.choice([0.0, 0.3, 1.0]), rng.choice([1.0, 5.0, 10.0, 15.0]), rng.choice([0.0, 0.1])
            s, t, target = _inputs(b, k, soft, device)
            _check_against_reference(backend, s, t, target, alpha, temp, eps, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_grid_against_reference(backend):
    device = kernel_device(backend)
    for soft in (False, True):
        for eps in (0.0, 0.1):
            for alpha in (0.0, 0.3, 1.0):
                for temp in (1.0, 5.0, 10.0, 15.0):
                    s, t, target = _inputs(8, 101, soft, device)
                    _check_against_reference(backend, s, t, target, alpha, temp, eps, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_computed_in_float32(backend, dtype):
    device = kernel_device(backend)
    for soft in (False, True):
        s, t, target = _inputs(16, 400, soft, device, dtype=dtype)
        # against float64 on the same (rounded) values: the losses are float32-accurate; the
        # gradient is returned in the logits' dtype
        _check_against_reference(backend, s, t, target, 0.3, 10.0, 0.1, 1e-5, grad_tol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits_and_teacher_minus_inf(backend):
    device = kernel_device(backend)
    for temp in (1.0, 10.0):
        s, t, target = _inputs(6, 5000, False, device, scale=1.0)
        s = s * 1e4
        t = t * 1e4
        t[:, ::3] = float("-inf")  # classes the teacher rules out
        t[0, :2048] = float("-inf")  # a whole leading block ruled out (the Triton block size)
        # float32 logits near 1e4 are 1e-3 apart, so a float32 kernel resolves the KL of two
        # near-one-hot distributions only to ~1e-4 of its size; total and CE stay at 1e-5.
        _check_against_reference(backend, s, t, target, 0.3, temp, 0.1, 1e-5, kd_tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_inputs_get_the_references_answer(backend, dtype):
    """A teacher row of all -inf has kd = 0 and passes no KD gradient (reference.kd_ce_loss's
    definition); float64 logits give float64 losses; temperatures beyond MAX_KD_TEMPERATURE, where
    float32 cannot resolve T^2 KL, are refused by every backend alike."""
    device = kernel_device(backend)
    for soft in (False, True):
        s, t, target = _inputs(5, 37, soft, device, dtype=dtype)
        t[1] = float("-inf")
        t[3] = float("-inf")
        _check_against_reference(backend, s, t, target, 0.3, 10.0, 0.1, 1e-5 if dtype == torch.float32 else 1e-9)
        total, kd, ce = dvfl_kernels.kd_ce_loss(s, t, target, 0.3, 10.0, reduction="none", backend=backend)
        assert kd[1] == 0 and kd[3] == 0 and total.dtype == kd.dtype == ce.dtype == dtype
    for temperature in (100.0 + 1e-9, 1e4, float("inf")):
        with pytest.raises(ValueError, match=r"temperature: expected a finite value in \(0.0, 100.0\]"):
            dvfl_kernels.kd_ce_loss(s, t, target, 0.3, temperature, backend=backend)
    dvfl_kernels.kd_ce_loss(s, t, target, 0.3, 100.0, backend=backend)  # the limit itself is allowed


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_reductions_and_no_grad(backend):
    device = kernel_device(backend)
    wide = torch.randn(8, 130, device=device)
    s, t = wide[:, 3:104], torch.randn(101, 8, device=device).T  # row-strided, and class-strided
    target = torch.randint(0, 101, (16,), device=device)[::2]
    _check_against_reference(backend, s, t, target, 0.3, 10.0, 0.0, 1e-5)
    for reduction in ("mean", "sum"):
        got = dvfl_kernels.kd_ce_loss(s, t, target, 0.3, 10.0, 0.1, reduction=reduction, backend=backend)
        want = reference.kd_ce_loss(s.double(), t.double(), target, 0.3, 10.0, 0.1, reduction)
        for a, w in zip(got, want):
            assert a.dim() == 0
            assert_close(a, w, 1e-5, reduction)
    with torch.no_grad():
        total, kd, ce = dvfl_kernels.kd_ce_loss(s.clone().requires_grad_(), t, target, 0.3, 10.0, backend=backend)
    assert not total.requires_grad and torch.isfinite(total)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kd_and_ce_are_detached_and_teacher_gets_no_grad(backend):
    device = kernel_device(backend)
    s, t, target = _inputs(4, 10, False, device)
    s.requires_grad_()
    t.requires_grad_()
    total, kd, ce = dvfl_kernels.kd_ce_loss(s, t, target, 0.3, 10.0, backend=backend)
    assert total.requires_grad and not kd.requires_grad and not ce.requires_grad
    total.backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_mark_invalid_rows_with_nan(backend):
    """What the fused kernels do for rows the Python checks would reject (on GPUs no check syncs)."""
    device = kernel_device(backend)
    op = torch.ops.dvfl.kd_ce_loss_rows_triton if backend == "triton" else torch.ops.dvfl.kd_ce_loss_rows
    s, t, _ = _inputs(3, 7, False, device)
    labels = torch.tensor([0, 7, -1], device=device)
    losses, grad = op(s, t, labels, 0.3, 10.0, 0.0, True)
    assert torch.isfinite(losses[:, 0]).all() and torch.isnan(losses[[0, 2], 1:]).all()
    assert torch.isfinite(grad[0]).all() and torch.isnan(grad[1:]).all()
    soft = torch.softmax(torch.randn(3, 7, device=device), -1)
    soft[1] *= 1.01  # sums to 1.01
    moved = soft[2, 0].item() + 0.25
    soft[2, 0] = -0.25  # a negative entry (whatever the random draw), still summing to 1
    soft[2, 1] += moved
    losses, _ = op(s, t, soft, 0.3, 10.0, 0.0, False)
    assert torch.isfinite(losses[:, 0]).all() and torch.isnan(losses[[0, 2], 1:]).all()


def _op_samples(device):
    s, t, target = _inputs(5, 33, False, device)
    soft = torch.softmax(torch.randn(5, 33, device=device), -1)
    return [
        (s.clone().requires_grad_(), t, target, 0.3, 10.0, 0.1, True),
        (s, t, soft, 0.5, 2.0, 0.0, False),
        (s.clone().requires_grad_(), t, soft, 1.0, 1.0, 0.1, True),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    device = kernel_device(backend)
    op = torch.ops.dvfl.kd_ce_loss_rows_triton.default if backend == "triton" else torch.ops.dvfl.kd_ce_loss_rows.default
    for args in _op_samples(device):
        torch.library.opcheck(op, args)


def test_gradcheck_float64_cpu():
    if "cpu" not in dvfl_kernels.available_backends("kd_ce_loss"):
        pytest.skip(ops.LOAD_ERRORS.get("cpu", "no cpu backend"))
    s = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, dtype=torch.float64)
    for target in (torch.tensor([0, 5, 2]), torch.softmax(torch.randn(3, 6, dtype=torch.float64), -1)):
        for reduction in ("mean", "none"):
            assert torch.autograd.gradcheck(
                lambda x: dvfl_kernels.kd_ce_loss(x, t, target, 0.3, 5.0, 0.1, reduction=reduction, backend="cpu")[0], (s,)
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    device = kernel_device(backend)
    torch._dynamo.reset()
    criterion = DistillationLoss(alpha=0.3, temperature=10.0, label_smoothing=0.1, backend=backend)

    def step(s, t, y):
        return criterion(s, t, y)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    s, t, target = _inputs(8, 101, False, device)
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    eager, graph = step(s1, t, target), compiled(s2, t, target)
    assert_close(graph, eager, 1e-6, "compiled loss")
    eager.backward()
    graph.backward()
    assert_close(s2.grad, s1.grad, 1e-6, "compiled grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_named_for_every_backend(backend):
    device = kernel_device(backend)
    s, t, target = _inputs(3, 5, False, device)
    cases = [
        (dict(target=torch.tensor([0, 9, 1], device=device)), r"target: class labels must lie in \[0, 5\)"),
        (dict(teacher_logits=t[:, :4]), r"teacher_logits: expected shape \(3, 5\)"),
        (dict(temperature=0.0), r"temperature"),
        (dict(alpha=-0.1), r"alpha"),
        (dict(target=torch.full((3, 5), 0.3, device=device)), r"soft targets must be distributions"),
        (dict(target=torch.full((3, 5), 0.2, device=device, dtype=torch.bfloat16)), r"soft targets must be float32 or float64"),
    ]
    if device == "cuda":
        cases = cases[1:]  # label values on CUDA are flagged by the kernel (NaN rows), not raised
        cases.pop(3)
    for overrides, match in cases:
        args = dict(student_logits=s, teacher_logits=t, target=target, alpha=0.3, temperature=10.0) | overrides
        with pytest.raises((ValueError, TypeError), match=match):
            dvfl_kernels.kd_ce_loss(**args, backend=backend)


def test_distillation_loss_module_parts():
    s, t, target = _inputs(4, 12, True, "cpu")
    criterion = DistillationLoss(alpha=0.3, temperature=10.0)
    total = criterion(s, t, target)
    want = reference.kd_ce_loss(s, t, target, 0.3, 10.0)
    assert_close(total, want[0], 1e-5, "total")
    assert_close(criterion.last_parts["kd"], want[1], 1e-5, "kd")
    assert_close(criterion.last_parts["ce"], want[2], 1e-5, "ce")
    assert "alpha=0.3" in repr(criterion)


def test_unavailable_backend_is_named():
    if torch.cuda.is_available():
        pytest.skip("the cuda backend runs here")
    s, t, target = _inputs(2, 3, False, "cpu")
    with pytest.raises(dvfl_kernels.BackendUnavailableError, match="backend 'cuda' is not available"):
        dvfl_kernels.kd_ce_loss(s, t, target, 0.3, 10.0, backend="cuda")


def test_cpu_baseline_build_matches_reference():
    """The non-AVX2 build of the CPU kernel, forced by DVFL_CPU_CAPABILITY=base in a fresh process."""
    if "cpu" not in dvfl_kernels.available_backends("kd_ce_loss"):
        pytest.skip(ops.LOAD_ERRORS.get("cpu", "no cpu backend"))
    import os
    import subprocess
    import sys

    script = (
        "import torch, dvfl_kernels as K\n"
        "from dvfl_kernels import reference\n"
        "s = torch.randn(16, 1000) * 4; t = torch.randn(16, 1000) * 4; y = torch.randint(0, 1000, (16,))\n"
        "s1 = s.clone().requires_grad_(); s2 = s.double().requires_grad_()\n"
        "a = K.kd_ce_loss(s1, t, y, 0.3, 10.0, 0.1, reduction='none', backend='cpu')\n"
        "w = reference.kd_ce_loss(s2, t.double(), y, 0.3, 10.0, 0.1, 'none')\n"
        "g1, = torch.autograd.grad(a[0].sum(), s1); g2, = torch.autograd.grad(w[0].sum(), s2)\n"
        "errs = [((x.double() - z).norm() / z.norm()).item() for x, z in zip(list(a) + [g1], list(w) + [g2])]\n"
        "print(max(errs))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=os.environ | {"DVFL_CPU_CAPABILITY": "base"})
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def test_mixed_devices_are_named():
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="teacher_logits is on meta but student_logits is on cpu"):
        dvfl_kernels.kd_ce_loss(s, t.to("meta"), y, 0.3, 10.0)
    with pytest.raises(ValueError, match="target is on meta but student_logits is on cpu"):
        dvfl_kernels.kd_ce_loss(s, t, y.to("meta"), 0.3, 10.0)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["plus-inf", "nan"])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_a_teacher_row_that_is_no_distribution_gives_nan_kd_and_gradient(backend, bad):
    """Issue 28, item 4: a teacher row holding +inf or NaN is never scored: on every backend its kd and
    total are NaN and its student gradient row is NaN, while its ce and every other row match the
    reference's finite answer."""
    device = "cpu" if backend == "reference" else kernel_device(backend)
    s, t, target = _inputs(4, 9, False, device)
    t[2, 5] = bad
    student = s.clone().requires_grad_()
    total, kd, ce = dvfl_kernels.kd_ce_loss(student, t, target, 0.3, 10.0, 0.1, backend=backend, reduction="none")
    total.nansum().backward()  # (kd and ce are detached reports)
    assert torch.isnan(total[2]) and torch.isnan(kd[2]) and torch.isfinite(ce).all()
    assert torch.isnan(student.grad[2]).all() and torch.isfinite(student.grad[[0, 1, 3]]).all()
    keep = [0, 1, 3]
    ref = s.detach().double()[keep].requires_grad_()
    ref_total, _, _ = reference.kd_ce_loss(ref, t.double()[keep], target[keep], 0.3, 10.0, 0.1, reduction="none")
    ref_total.sum().backward()
    assert_close(total[keep], ref_total, 1e-5, "total")
    assert_close(ce, reference.kd_ce_loss(s.double(), t.double(), target, 0.3, 10.0, 0.1, reduction="none")[2], 1e-5, "ce")
    assert_close(student.grad[keep], ref.grad, 1e-5, "grad")
