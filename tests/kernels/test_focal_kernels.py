"""Every fast focal-modulation backend (the C++ CPU kernels, Triton, the CUDA C++ kernels) against
the float64 reference:
forward and every gradient over a shape sweep (odd H and W, H or W below the kernel, T in {1, 2, 8},
C not a multiple of 16, N = 1, 1-3 levels, normalize on/off), strided views padded with NaN,
fp32 / bf16 / fp16, poisoned outputs, deterministic weight gradients, opcheck, torch.compile, the
golden fixtures and a training run. Without a GPU the Triton kernels run in Triton's interpreter
(conftest sets TRITON_INTERPRET=1), so the shapes stay small, and the "cuda" cases skip (that
backend needs CUDA tensors and a build with CUDA)."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dvfl_kernels
from dvfl_kernels import ops, reference
from dvfl_kernels.runtime import RUNTIME
from dvflnet.models import VideoFocalNet
from helpers import GOLDEN_DIR, WEIGHT_UPDATES, assert_close, update_bias_in_place, kernel_device, strided_view as _strided_view

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def _available(backend: str) -> bool:
    """Built here, and with a device to run on (the CUDA C++ kernels need a GPU)."""
    return backend in ops.available_backends("spatial_context")


@pytest.fixture(params=["cpu", "triton", "cuda"])
def backend(request):
    if not _available(request.param):
        pytest.skip(f"{request.param}: {ops.LOAD_ERRORS.get(request.param, 'no GPU here')}")
    return request.param


@pytest.fixture(autouse=True)
def poisoned_empty(monkeypatch):
    """Every uninitialised float tensor starts as NaN, so any element a kernel fails to write shows."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", empty)


def strided_view(t: torch.Tensor) -> torch.Tensor:
    """A NaN-padded channel slice of a wider buffer whose gradient is kept on the view itself."""
    view = _strided_view(t)
    view.retain_grad()
    return view


def _inputs(n, h, w, c, levels, kind, dtype, generator):
    """float64 z, g (as slices of one wider projection output) and weights; fast-path copies in
    `dtype` as NaN-padded strided views."""
    f = torch.randn(n, h, w, 2 * c + levels + 1, dtype=torch.float64, generator=generator)
    z, g = f[..., :c], f[..., c : c + levels + 1]
    if kind == "spatial":
        weights = [torch.randn(c, 1, 2 * l + 3, 2 * l + 3, dtype=torch.float64, generator=generator) / (2 * l + 3) for l in range(1, levels + 1)]
    else:
        weights = [torch.randn(c, c, 2 * l + 1, dtype=torch.float64, generator=generator) / (c * (2 * l + 1)) ** 0.5 for l in range(1, levels + 1)]
    return z, g, weights


def _check_context(backend, kind, n, h, w, c, levels, normalize, num_frames=1, dtype=torch.float32, weight_dtype=torch.float32, seed=0):
    DEVICE = kernel_device(backend)
    generator = torch.Generator().manual_seed(seed)
    z, g, weights = _inputs(n, h, w, c, levels, kind, dtype, generator)
    z_ref, g_ref = z.clone().requires_grad_(), g.clone().requires_grad_()
    w_ref = [wt.clone().requires_grad_() for wt in weights]
    z_fast, g_fast = strided_view(z.to(DEVICE, dtype)), strided_view(g.to(DEVICE, dtype))
    w_fast = [wt.to(DEVICE, weight_dtype).requires_grad_() for wt in weights]
    if kind == "spatial":
        ref = reference.spatial_context(z_ref, g_ref, w_ref, normalize)
        out = dvfl_kernels.spatial_context(z_fast, g_fast, w_fast, normalize, backend=backend)
    else:
        ref = reference.temporal_context(z_ref, g_ref, w_ref, num_frames, normalize)
        out = dvfl_kernels.temporal_context(z_fast, g_fast, w_fast, num_frames, normalize, backend=backend)
    assert out.dtype == dtype and out.shape == ref.shape
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=generator)
    ref.backward(upstream)
    out.backward(upstream.to(DEVICE, dtype))
    tol = TOLERANCE[dtype]
    what = f"{kind} N={n} H={h} W={w} C={c} L={levels} T={num_frames} norm={normalize} {dtype}"
    assert_close(out, ref, tol, what + " output")
    assert_close(z_fast.grad, z_ref.grad, tol, what + " dz")
    assert_close(g_fast.grad, g_ref.grad, tol, what + " dg")
    for level, (fast, slow) in enumerate(zip(w_fast, w_ref)):
        assert fast.grad.dtype == weight_dtype
        assert_close(fast.grad, slow.grad, tol, what + f" dweight[{level}]")


# (N, H, W, C, levels): odd sizes, H or W below the largest kernel (5, 7, 9), N = 1, C not a multiple of 16
SPATIAL_CASES = [
    (2, 5, 7, 20, 2),
    (1, 3, 2, 5, 2),
    (1, 1, 1, 3, 1),
    (3, 9, 4, 33, 1),
    (1, 6, 11, 7, 3),
]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("case", SPATIAL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_spatial_context_matches_float64_reference(backend, case, normalize):
    _check_context(backend, "spatial", *case, normalize=normalize)


# (B, T, H, W, C, levels)
TEMPORAL_CASES = [
    (2, 2, 3, 5, 20, 2),
    (1, 1, 2, 3, 5, 2),
    (1, 8, 2, 3, 17, 3),
    (3, 8, 1, 2, 24, 1),
    (2, 2, 1, 1, 40, 2),
]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("case", TEMPORAL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_temporal_context_matches_float64_reference(backend, case, normalize):
    clips, frames, h, w, c, levels = case
    _check_context(backend, "temporal", clips * frames, h, w, c, levels, normalize, num_frames=frames)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_half_precision_inputs(backend, kind, dtype):
    """bf16 / fp16 activations with fp32 weights (what autocast hands the op), fp32 accumulation."""
    frames = 2 if kind == "temporal" else 1
    _check_context(backend, kind, 2 * frames, 5, 6, 24, 2, False, num_frames=frames, dtype=dtype)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["spatial", "temporal"]),
    clips=st.integers(1, 2), frames=st.sampled_from([1, 2, 3]), h=st.integers(1, 6), w=st.integers(1, 6),
    c=st.integers(1, 24), levels=st.integers(1, 2), normalize=st.booleans(), seed=st.integers(0, 2**16),
)
def test_shape_sweep(backend, kind, clips, frames, h, w, c, levels, normalize, seed):
    if not _available(backend):
        pytest.skip(f"{backend}: not available")
    if kind == "spatial":
        _check_context(backend, kind, clips * frames, h, w, c, levels, normalize, seed=seed)
    else:
        _check_context(backend, kind, clips * frames, h, w, c, levels, normalize, num_frames=frames, seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_modulate(backend, dtype):
    DEVICE = kernel_device(backend)
    generator = torch.Generator().manual_seed(1)
    full = torch.randn(3, 5, 7, 3 * 21, dtype=torch.float64, generator=generator)
    parts = [full[..., i * 21 : (i + 1) * 21] for i in range(3)]  # strided slices, as in the model
    ref_inputs = [p.clone().requires_grad_() for p in parts]
    fast_inputs = [strided_view(p.to(DEVICE, dtype)) for p in parts]
    ref = reference.modulate(*ref_inputs)
    out = dvfl_kernels.modulate(*fast_inputs, backend=backend)
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=generator)
    ref.backward(upstream)
    out.backward(upstream.to(DEVICE, dtype))
    assert_close(out, ref, TOLERANCE[dtype], "modulate")
    for name, fast, slow in zip(("q", "m_s", "m_t"), fast_inputs, ref_inputs):
        assert_close(fast.grad, slow.grad, TOLERANCE[dtype], f"d{name}")


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_weight_gradients_are_deterministic(backend, kind):
    """Per-tile partials reduced in a fixed order: two runs give bit-identical gradients."""
    DEVICE = kernel_device(backend)
    generator = torch.Generator().manual_seed(2)
    z, g, weights = _inputs(2, 9, 9, 40, 2, kind, torch.float32, generator)  # 2 pixel tiles x 2 channel blocks
    grads = []
    for _ in range(2):
        w_fast = [wt.float().to(DEVICE).requires_grad_() for wt in weights]
        args = (z.float().to(DEVICE), g.float().to(DEVICE), w_fast)
        out = (dvfl_kernels.spatial_context(*args, backend=backend) if kind == "spatial"
               else dvfl_kernels.temporal_context(*args, 2, backend=backend))
        out.backward(torch.ones_like(out))
        grads.append([wt.grad for wt in w_fast])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_frozen_weights_get_no_gradient_and_the_inputs_the_same_one(backend, kind):
    """Weights that need no gradient (a frozen stage): the backward op is asked for none (its list is
    [dz, dg]) and the inputs' gradients equal those of a run whose weights train, and the float64
    reference's."""
    from dvfl_kernels.focal import op_name

    device = kernel_device(backend)
    generator = torch.Generator().manual_seed(6)
    z, g, weights = _inputs(4, 5, 7, 9, 2, kind, torch.float32, generator)
    upstream = torch.randn(z.shape, dtype=torch.float64, generator=generator)
    grads = {}
    for which, train_weights, dtype in ((backend, True, torch.float32), (backend, False, torch.float32),
                                        ("reference", False, torch.float64)):
        zz, gg = (t.to(kernel_device(which), dtype).requires_grad_() for t in (z, g))
        ws = [wt.to(kernel_device(which), dtype).requires_grad_(train_weights) for wt in weights]
        out = (dvfl_kernels.spatial_context(zz, gg, ws, backend=which) if kind == "spatial"
               else dvfl_kernels.temporal_context(zz, gg, ws, 2, backend=which))
        out.backward(upstream.to(out.device, out.dtype))
        grads[which, train_weights] = (zz.grad, gg.grad, [wt.grad for wt in ws])
    trained, frozen, reference_grads = grads[backend, True], grads[backend, False], grads["reference", False]
    assert all(wt is None for wt in frozen[2]) and all(wt is not None for wt in trained[2])
    for name, a, b, ref in zip(("dz", "dg"), frozen, trained, reference_grads):
        assert_close(a, b, 1e-6, f"{name}, frozen against trained weights")
        assert_close(a, ref, 1e-5, f"{name}, frozen weights against the reference")
    # the backward op itself, asked with and without weight gradients; on small inputs, as opcheck runs
    # it many times (under Triton's interpreter each run costs seconds on the inputs above)
    family = "triton" if backend == "triton" else "cpp"
    forward = getattr(torch.ops.dvfl, op_name(f"{kind}_context", family))
    backward = getattr(torch.ops.dvfl, op_name(f"{kind}_context", family, backward=True))
    z, g, weights = _inputs(2, 2, 3, 2, 2, kind, torch.float32, generator)
    upstream = torch.randn(z.shape, generator=generator).to(device)
    args = [t.float().to(device) for t in (z, g)] + [[wt.float().to(device) for wt in weights]] + ([2] if kind == "temporal" else [])
    _, pre, mean = forward(*args, False, True)
    for weights_grad, count in ((False, 2), (True, 2 + len(weights))):
        assert len(backward(upstream, *args, pre, mean, False, weights_grad)) == count
        torch.library.opcheck(backward.default, (upstream, *args, pre, mean, False, weights_grad))


@pytest.mark.parametrize("kind", ["spatial", "temporal", "modulate"])
def test_gradient_of_a_sum_and_permuted_inputs(backend, kind):
    """The upstream gradient of out.sum() has stride 0 everywhere; a permuted input has channel
    stride != 1: both are copied to channel-dense once, and the results stay exact."""
    generator = torch.Generator().manual_seed(5)
    z, g, weights = _inputs(2, 3, 4, 6, 2, "spatial" if kind == "spatial" else "temporal", torch.float32, generator)
    z_cl = z.transpose(-1, -2).contiguous().transpose(-1, -2)  # channel stride != 1
    results = []
    for which, dtype in ((backend, torch.float32), ("reference", torch.float64)):
        inputs = [t.to(kernel_device(which), dtype).requires_grad_() for t in (z_cl, g, *weights)]
        zz, gg, *ws = inputs
        if kind == "spatial":
            out = dvfl_kernels.spatial_context(zz, gg, ws, backend=which)
        elif kind == "temporal":
            out = dvfl_kernels.temporal_context(zz, gg, ws, 2, backend=which)
        else:
            out = dvfl_kernels.modulate(zz, zz * 2, zz.flip(0), backend=which)
        out.sum().backward()
        results.append([out] + [t.grad for t in inputs if t.grad is not None])
    for fast, slow in zip(*results):
        assert_close(fast, slow, 1e-5, kind)


def test_inputs_are_not_written(backend):
    generator = torch.Generator().manual_seed(3)
    z, g, weights = _inputs(2, 4, 4, 8, 2, "temporal", torch.float32, generator)
    z, g, weights = z.float(), g.float(), [wt.float().requires_grad_() for wt in weights]
    before = [t.clone() for t in (z, g, *weights)]
    dvfl_kernels.temporal_context(z, g, weights, 2, backend=backend).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, (z, g, *weights)))


def test_opcheck(backend):
    """Each backend's own ops (the C++ family for cpu / cuda, dvfl::*_triton for triton): schema, fake
    kernel, autograd registration and torch.compile's checks."""
    from dvfl_kernels.focal import op_name

    family = "triton" if backend == "triton" else "cpp"
    op = lambda name: getattr(torch.ops.dvfl, op_name(name, family)).default  # noqa: E731
    device = kernel_device(backend)
    generator = torch.Generator().manual_seed(4)
    z, g, weights = _inputs(2, 3, 4, 6, 2, "spatial", torch.float32, generator)
    leaf = lambda t: t.float().to(device).requires_grad_()  # noqa: E731
    torch.library.opcheck(op("spatial_context"), (leaf(z), leaf(g), [leaf(wt) for wt in weights], False, True))
    z, g, weights = _inputs(4, 2, 3, 6, 2, "temporal", torch.float32, generator)
    torch.library.opcheck(op("temporal_context"), (leaf(z), leaf(g), [leaf(wt) for wt in weights], 2, True, True))
    q, s, t = (leaf(torch.randn(2, 3, 4, 5)) for _ in range(3))
    torch.library.opcheck(op("modulate"), (q, s, t))


def _bad_op_calls(device):
    """(op, arguments, the argument the error must name) for calls of the raw ops that the public functions
    would have refused: each shape here would otherwise be read past, or give a wrong answer."""
    generator = torch.Generator().manual_seed(7)
    t = lambda *shape: torch.randn(*shape, generator=generator).to(device)  # noqa: E731
    spatial_w = [t(4, 1, 3, 3), t(4, 1, 5, 5)]
    temporal_w = [t(4, 4, 3), t(4, 4, 5)]
    z, g = t(4, 3, 5, 4), t(4, 3, 5, 3)
    saved_pre, saved_mean = t(2, 4, 3, 5, 4), t(4, 4)  # what the spatial forward saves (float32)
    return [
        ("spatial_context", (z, t(4, 3, 5, 2), spatial_w, False, True), "g"),  # one gate too few
        ("spatial_context", (z, g, [spatial_w[0], t(3, 1, 5, 5)], False, True), r"weights\[1\]"),
        ("spatial_context", (z, g, [spatial_w[0], t(4, 1, 4, 4)], False, True), r"weights\[1\]"),  # even k
        ("spatial_context", (t(4, 3, 5), g, spatial_w, False, True), "z"),
        ("spatial_context_backward", (t(4, 3, 5, 3), z, g, spatial_w, saved_pre, saved_mean, False, True), "grad"),
        ("spatial_context_backward", (t(*z.shape), z, g, spatial_w, t(0, 4, 3, 5, 4), saved_mean, False, True), "pre"),
        ("spatial_context_backward", (t(*z.shape), z, g, spatial_w, saved_pre, t(4, 3), False, True), "mean"),
        ("temporal_context", (z, g, temporal_w, 3, False, True), "(z_t|num_frames)"),  # 3 does not divide N = 4
        ("temporal_context", (z, g, temporal_w, 0, False, True), "(z_t|num_frames)"),
        ("temporal_context", (z, g, [temporal_w[0], t(4, 2, 5)], 2, False, True), r"weights\[1\]"),
        ("temporal_context", (z, g.double(), temporal_w, 2, False, True), "g_t"),
        ("temporal_context_backward", (t(*z.shape), z, g, temporal_w, 2, saved_pre, t(4, 3, 5, 4), False, True), "mean"),
        ("modulate", (z, t(*z.shape), t(4, 3, 5, 5)), "m_t"),
        ("modulate_backward", (t(4, 3, 5), z, t(*z.shape), t(*z.shape)), "grad"),
    ]


def test_raw_ops_name_the_argument_they_refuse(backend):
    """The registered ops check their own arguments (a direct torch.ops.dvfl call skips the public
    functions' checks): an error naming the argument, never an out-of-bounds read or a wrong answer."""
    from dvfl_kernels.focal import op_name

    family = "triton" if backend == "triton" else "cpp"
    for op, args, name in _bad_op_calls(kernel_device(backend)):
        backward = op.endswith("_backward")
        fn = getattr(torch.ops.dvfl, op_name(op.removesuffix("_backward"), family, backward))
        with pytest.raises((ValueError, TypeError), match=rf"(^|: ){name}(?!\w)"):
            fn(*args)


def test_golden_layer_and_model(backend, golden_modulation):
    layer, fixture = golden_modulation
    with torch.no_grad():
        assert_close(layer(fixture["input"], backend=backend), fixture["output"], 1e-5, f"modulation layer ({backend})")
    fixture = torch.load(GOLDEN_DIR / "video_focalnet_small_config.pt", weights_only=True)
    model = VideoFocalNet(**fixture["config"], backend=backend).eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    with torch.no_grad():
        assert_close(model(fixture["input"][:1]), fixture["logits"][:1], 1e-5, f"logits ({backend})")


def test_compiled_layer_fullgraph(backend, golden_modulation):
    """The custom ops trace as single nodes: torch.compile(fullgraph=True) runs forward and backward."""
    layer, fixture = golden_modulation
    x = fixture["input"][:4].clone().requires_grad_()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x, backend=backend)
    out.sum().backward()
    reference_layer = copy.deepcopy(layer)
    x_ref = fixture["input"][:4].clone().requires_grad_()
    ref = reference_layer(x_ref, backend="reference")
    ref.sum().backward()
    assert_close(out, ref, 1e-5, "compiled layer")
    assert_close(x.grad, x_ref.grad, 1e-5, "compiled layer dx")


def test_inductor_compiled_layer_gradients(backend, golden_modulation):
    """Inductor (unlike aot_eager) trusts the fake kernels' output strides: every gradient of the
    compiled layer, weights included, must match eager and come back in the parameter's layout."""
    if backend == "triton":
        pytest.skip("inductor compiles the C++ kernels' graph here; Triton ones are compiled on a GPU")
    layer, fixture = golden_modulation
    compiled_layer = copy.deepcopy(layer)
    x = fixture["input"][:4]
    torch.compile(compiled_layer, fullgraph=True)(x, backend=backend).square().sum().backward()
    layer(x, backend=backend).square().sum().backward()
    for (name, p), q in zip(layer.named_parameters(), compiled_layer.parameters()):
        assert q.grad.stride() == q.stride(), name
        assert_close(q.grad, p.grad, 1e-5, f"inductor grad {name}")


def test_training_matches_the_reference_backend(backend):
    """A few SGD steps of a small model: the fast backend's loss curve follows the reference's."""
    # two stages: under Triton's interpreter each launch costs seconds, and stages 3-4 only repeat 1-2
    config = dict(img_size=32, embed_dim=8, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3], num_classes=3,
                  num_frames=2, drop_path_rate=0.0)
    torch.manual_seed(0)
    device = kernel_device(backend)
    models = {"reference": VideoFocalNet(**config, backend="reference").to(device)}
    models[backend] = copy.deepcopy(models["reference"])
    models[backend].set_backend(backend)
    clips, labels = torch.randn(2, 2, 3, 32, 32).to(device), torch.tensor([0, 2]).to(device)
    curves = {}
    for name, model in models.items():
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        curves[name] = []
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(clips), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            curves[name].append(loss.item())
    assert curves[backend] == pytest.approx(curves["reference"], rel=1e-4), curves
    assert curves[backend][-1] < curves[backend][0]


# ---- the C++ CPU kernels: what only they run here ------------------------------------------------------
cpu_only = pytest.mark.skipif(not _available("cpu"), reason=f"cpu: {ops.LOAD_ERRORS.get('cpu')}")


@cpu_only
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=["fp32-weights", "bf16-weights"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_cpu_stage_like_shapes(kind, dtype, weight_dtype):
    """A stage-3-like shape (2 clips x 8 frames, 14 x 14, C = 96 + 3: full and partial channel blocks),
    float32 and bfloat16 activations, with float32 (autocast) or bfloat16 (model.to(bf16)) weights."""
    if dtype == torch.float32 and weight_dtype == torch.bfloat16:
        pytest.skip("bf16 weights come with bf16 activations")
    _check_context("cpu", kind, 16, 14, 14, 99, 2, True, num_frames=8, dtype=dtype, weight_dtype=weight_dtype)


@cpu_only
@pytest.mark.parametrize("capability", ["base", "avx2"])
@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_cpu_narrower_builds_match(kind, capability):
    """The baseline and the AVX2 + FMA builds of the kernels, forced in a child process, pass the same
    check (the AVX-512 one runs in this process where the CPU has it)."""
    if capability == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):  # torch's AVX2: with FMA
        pytest.skip("this CPU has no AVX2 + FMA")
    code = (
        "import sys; sys.path[:0] = ['tests', 'tests/kernels']; import test_focal_kernels as t; from dvfl_kernels import ops;"
        f"from dvfl_kernels import _C; assert _C.focal_cpu_capability() == '{capability}';"
        f"t._check_context('cpu', '{kind}', 4, 5, 7, 21, 2, False, num_frames=2);"
        f"t._check_context('cpu', '{kind}', 4, 5, 7, 21, 2, True, num_frames=2, dtype=t.torch.bfloat16)"
    )
    env = {**os.environ, "DVFL_CPU_CAPABILITY": capability}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@cpu_only
def test_cpu_spatial_weight_gradients_do_not_depend_on_thread_count():
    """Spatial weight gradients are per-row partials summed in row order: 1 and 2 threads agree bit for bit."""
    generator = torch.Generator().manual_seed(7)
    z, g, weights = _inputs(3, 9, 9, 40, 2, "spatial", torch.float32, generator)
    threads, grads = torch.get_num_threads(), []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            w_fast = [wt.float().requires_grad_() for wt in weights]
            dvfl_kernels.spatial_context(z.float(), g.float(), w_fast, backend="cpu").backward(torch.ones(3, 9, 9, 40))
            grads.append([wt.grad for wt in w_fast])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@cpu_only
@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_cpu_repeated_calls_give_the_same_bits(kind):
    """The same inputs give the same bits on every call, whatever addresses the buffers (and the stack
    arrays) get: a loop's peeled scalar iterations once rounded differently from its vector body
    (FMA contraction), so 1 call in ~200 of the temporal backward differed by an ulp (bit-exact resume)."""
    generator = torch.Generator().manual_seed(3)
    z, g, weights = _inputs(4, 8, 8, 8, 2, kind, torch.float32, generator)
    upstream = torch.randn(z.shape, generator=generator)

    def call():
        w = [wt.float().requires_grad_() for wt in weights]
        zz, gg = z.float().clone().requires_grad_(), g.float().clone().requires_grad_()
        out = (dvfl_kernels.spatial_context(zz, gg, w, backend="cpu") if kind == "spatial"
               else dvfl_kernels.temporal_context(zz, gg, w, 2, backend="cpu"))
        return [out.detach(), *torch.autograd.grad(out, [zz, gg, *w], upstream.clone())]

    first = call()
    for _ in range(600):
        assert all(torch.equal(a, b) for a, b in zip(first, call()))


@cpu_only
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_cpu_inference_saves_nothing(mode):
    generator = torch.Generator().manual_seed(8)
    z, g, weights = _inputs(4, 5, 6, 12, 2, "temporal", torch.float32, generator)
    z, g, weights = z.float(), g.float(), [wt.float() for wt in weights]
    with getattr(torch, mode)():
        out, pre, mean = torch.ops.dvfl.temporal_context(z, g, weights, 2, False, False)
    assert pre.shape[0] == 0 and mean.shape == (2, 5, 6, 12)
    assert_close(out, reference.temporal_context(z.double(), g.double(), [w.double() for w in weights], 2), 1e-5, mode)


@cpu_only
@pytest.mark.parametrize("cast", ["autocast", "bf16-weights"])
def test_cpu_bf16_model_logits_follow_fp32(cast):
    """A small model in bfloat16 on the cpu backend: logits within 1e-2 (relative) of its float32
    logits on the reference backend, and the same argmax."""
    torch.manual_seed(0)
    config = dict(img_size=64, embed_dim=24, depths=[1, 1, 2, 1], num_classes=10, num_frames=4, drop_path_rate=0.0)
    model = VideoFocalNet(**config, backend="reference").eval()
    clips = torch.randn(3, 4, 3, 64, 64)
    with torch.inference_mode():
        ref = model(clips)
        model.set_backend("cpu")
        if cast == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(clips)
        else:
            out = model.to(torch.bfloat16)(clips.to(torch.bfloat16))
    assert_close(out.float(), ref, 1e-2, cast)
    assert torch.equal(out.float().argmax(-1), ref.argmax(-1))


@cpu_only
def test_auto_runs_the_cpu_kernels_on_cpu():
    assert ops.select_backend("spatial_context", "auto", torch.device("cpu")) == ("cpu", ops.IMPLEMENTATIONS["spatial_context"]["cpu"])
    assert ops.select_backend("temporal_context", "auto", torch.device("cpu")) == ("cpu", ops.IMPLEMENTATIONS["temporal_context"]["cpu"])
    assert ops.select_backend("modulate", "auto", torch.device("cpu")) == ("cpu", ops.IMPLEMENTATIONS["modulate"]["cpu"])


@cpu_only
@pytest.mark.parametrize("hw, dtype, grad, probed", [
    ((9, 8), torch.bfloat16, False, True),  # bf16 inference: kernel or reference, as measured here
    ((7, 7), torch.bfloat16, False, True),
    ((9, 8), torch.bfloat16, True, False),
    ((9, 8), torch.float32, False, False),
])
def test_auto_temporal_runs_the_measured_choice(hw, dtype, grad, probed):
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(4, *hw, 8, generator=gen).to(dtype).requires_grad_(grad)
    g = torch.randn(4, *hw, 3, generator=gen).to(dtype)
    weights = [torch.randn(8, 8, k, generator=gen).to(dtype) for k in (3, 5)]
    RUNTIME.verdicts.clear()
    out = ops.temporal_context(z, g, weights, 2)
    keys = [k for k in RUNTIME.verdicts if k[0] == "temporal_context"]
    assert len(keys) == (1 if probed else 0)
    expected = "reference" if probed and RUNTIME.verdicts[keys[0]] == "reference" else "cpu"
    same = ops.temporal_context(z, g, weights, 2, backend=expected)
    other = ops.temporal_context(z, g, weights, 2, backend="cpu" if expected == "reference" else "reference")
    assert torch.equal(out, same)
    assert not torch.equal(out, other)  # the two paths round differently, so the test tells them apart
    for verdict, backend in (("reference", "reference"), ("kernel", "cpu")) if probed else ():
        RUNTIME.verdicts[keys[0]] = verdict  # a recorded verdict is what runs
        assert torch.equal(ops.temporal_context(z, g, weights, 2), ops.temporal_context(z, g, weights, 2, backend=backend))


@cpu_only
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("dtype, weight_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                 (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64)])
@pytest.mark.parametrize("case", TEMPORAL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_cpu_temporal_inference_on_prepared_taps(case, dtype, weight_dtype, mode):
    """Without gradients the taps are prepared once per weight (cast, laid out as (k, C_out, C_in)):
    the same bits as the op on the weights themselves, on strided NaN-padded views, and the float64
    reference within the dtype's tolerance."""
    clips, frames, h, w, c, levels = case
    generator = torch.Generator().manual_seed(sum(case))
    z, g, weights = _inputs(clips * frames, h, w, c, levels, "temporal", dtype, generator)
    z_fast, g_fast = _strided_view(z.to(dtype)), _strided_view(g.to(dtype))
    w_fast = [wt.to(weight_dtype).requires_grad_() for wt in weights]  # parameters, as in a model
    dvfl_kernels.clear_prepared_weights()
    with getattr(torch, mode)():
        out = dvfl_kernels.temporal_context(z_fast, g_fast, w_fast, frames, backend="cpu")
        own = torch.ops.dvfl.temporal_context(z_fast, g_fast, w_fast, frames, False, False)[0]
    assert len(RUNTIME.prepared) == levels
    assert torch.equal(out, own)
    assert_close(out, reference.temporal_context(z, g, weights, frames), TOLERANCE.get(dtype, 1e-12), f"{case} {dtype}")
    dvfl_kernels.clear_prepared_weights()


@cpu_only
@pytest.mark.parametrize("update", [u for u in WEIGHT_UPDATES if u is not update_bias_in_place])
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_cpu_temporal_prepared_taps_are_never_stale(update, mode):
    """A temporal layer's weight changed between inference calls (in place, one element, through
    .data, load_state_dict, replaced, an optimizer step): the next call follows it."""
    torch.manual_seed(6)
    layer = torch.nn.Conv1d(12, 12, 3, bias=False)
    z, g = torch.randn(6, 5, 3, 12), torch.randn(6, 5, 3, 2)
    context = getattr(torch, mode)
    for _ in range(2):
        for when in ("before", update.__name__):
            with context():
                out = dvfl_kernels.temporal_context(z, g, [layer.weight], 3, backend="auto")
            expected = reference.temporal_context(z.double(), g.double(), [layer.weight.detach().double()], 3)
            assert_close(out, expected, 1e-5, when)
            if when == "before":
                update(layer)


def test_the_triton_backend_loads_without_the_cpp_extension():
    """The Triton ops are declared in Python: with dvfl_kernels._C unimportable, the triton backend is
    still there (interpreted here) and agrees with the reference."""
    code = (
        "import sys; sys.modules['dvfl_kernels._C'] = None\n"
        "import torch, dvfl_kernels\n"
        "from dvfl_kernels import reference\n"
        "assert 'cpu' not in dvfl_kernels.available_backends('spatial_context')\n"
        "assert 'triton' in dvfl_kernels.available_backends('spatial_context'), dvfl_kernels.ops.LOAD_ERRORS\n"
        "z, g = torch.randn(2, 5, 6, 8, dtype=torch.float64), torch.randn(2, 5, 6, 3, dtype=torch.float64)\n"
        "w = [torch.randn(8, 1, 3, 3, dtype=torch.float64), torch.randn(8, 1, 5, 5, dtype=torch.float64)]\n"
        "out = dvfl_kernels.spatial_context(z.float(), g.float(), [x.float() for x in w], backend='triton')\n"
        "ref = reference.spatial_context(z, g, w)\n"
        "assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
