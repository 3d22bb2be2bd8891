"""Triton focal-modulation kernels against the float64 reference: forward and every gradient over a
shape sweep (odd H and W, H or W below the kernel, T in {1, 2, 8}, C not a multiple of 16, N = 1,
1-3 levels, normalize on/off), strided views padded with NaN, fp32 / bf16 / fp16, poisoned outputs,
deterministic weight gradients, opcheck, torch.compile, the golden fixtures and a training run.
Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so the
shapes stay small."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dvfl_kernels
from dvfl_kernels import ops, reference
from dvflnet.models import VideoFocalNet
from helpers import GOLDEN_DIR, assert_close, golden_modulation_layer, kernel_device, strided_view as _strided_view

pytestmark = pytest.mark.skipif(not ops.HAS_TRITON, reason=f"triton: {ops.LOAD_ERRORS.get('triton')}")
DEVICE = kernel_device("triton")
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


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


def _check_context(kind, n, h, w, c, levels, normalize, num_frames=1, dtype=torch.float32, weight_dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z, g, weights = _inputs(n, h, w, c, levels, kind, dtype, generator)
    z_ref, g_ref = z.clone().requires_grad_(), g.clone().requires_grad_()
    w_ref = [wt.clone().requires_grad_() for wt in weights]
    z_fast, g_fast = strided_view(z.to(DEVICE, dtype)), strided_view(g.to(DEVICE, dtype))
    w_fast = [wt.to(DEVICE, weight_dtype).requires_grad_() for wt in weights]
    if kind == "spatial":
        ref = reference.spatial_context(z_ref, g_ref, w_ref, normalize)
        out = dvfl_kernels.spatial_context(z_fast, g_fast, w_fast, normalize, backend="triton")
    else:
        ref = reference.temporal_context(z_ref, g_ref, w_ref, num_frames, normalize)
        out = dvfl_kernels.temporal_context(z_fast, g_fast, w_fast, num_frames, normalize, backend="triton")
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
def test_spatial_context_matches_float64_reference(case, normalize):
    _check_context("spatial", *case, normalize=normalize)


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
def test_temporal_context_matches_float64_reference(case, normalize):
    clips, frames, h, w, c, levels = case
    _check_context("temporal", clips * frames, h, w, c, levels, normalize, num_frames=frames)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_half_precision_inputs(kind, dtype):
    """bf16 / fp16 activations with fp32 weights (what autocast hands the op), fp32 accumulation."""
    frames = 2 if kind == "temporal" else 1
    _check_context(kind, 2 * frames, 5, 6, 24, 2, False, num_frames=frames, dtype=dtype)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["spatial", "temporal"]),
    clips=st.integers(1, 2), frames=st.sampled_from([1, 2, 3]), h=st.integers(1, 6), w=st.integers(1, 6),
    c=st.integers(1, 24), levels=st.integers(1, 2), normalize=st.booleans(), seed=st.integers(0, 2**16),
)
def test_shape_sweep(kind, clips, frames, h, w, c, levels, normalize, seed):
    if kind == "spatial":
        _check_context(kind, clips * frames, h, w, c, levels, normalize, seed=seed)
    else:
        _check_context(kind, clips * frames, h, w, c, levels, normalize, num_frames=frames, seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_modulate(dtype):
    generator = torch.Generator().manual_seed(1)
    full = torch.randn(3, 5, 7, 3 * 21, dtype=torch.float64, generator=generator)
    parts = [full[..., i * 21 : (i + 1) * 21] for i in range(3)]  # strided slices, as in the model
    ref_inputs = [p.clone().requires_grad_() for p in parts]
    fast_inputs = [strided_view(p.to(DEVICE, dtype)) for p in parts]
    ref = reference.modulate(*ref_inputs)
    out = dvfl_kernels.modulate(*fast_inputs, backend="triton")
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=generator)
    ref.backward(upstream)
    out.backward(upstream.to(DEVICE, dtype))
    assert_close(out, ref, TOLERANCE[dtype], "modulate")
    for name, fast, slow in zip(("q", "m_s", "m_t"), fast_inputs, ref_inputs):
        assert_close(fast.grad, slow.grad, TOLERANCE[dtype], f"d{name}")


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
def test_weight_gradients_are_deterministic(kind):
    """Per-tile partials reduced in a fixed order: two runs give bit-identical gradients."""
    generator = torch.Generator().manual_seed(2)
    z, g, weights = _inputs(2, 9, 9, 40, 2, kind, torch.float32, generator)  # 2 pixel tiles x 2 channel blocks
    grads = []
    for _ in range(2):
        w_fast = [wt.float().to(DEVICE).requires_grad_() for wt in weights]
        args = (z.float().to(DEVICE), g.float().to(DEVICE), w_fast)
        out = (dvfl_kernels.spatial_context(*args, backend="triton") if kind == "spatial"
               else dvfl_kernels.temporal_context(*args, 2, backend="triton"))
        out.backward(torch.ones_like(out))
        grads.append([wt.grad for wt in w_fast])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("kind", ["spatial", "temporal", "modulate"])
def test_gradient_of_a_sum_and_permuted_inputs(kind):
    """The upstream gradient of out.sum() has stride 0 everywhere; a permuted input has channel
    stride != 1: both are copied to channel-dense once, and the results stay exact."""
    generator = torch.Generator().manual_seed(5)
    z, g, weights = _inputs(2, 3, 4, 6, 2, "spatial" if kind == "spatial" else "temporal", torch.float32, generator)
    z_cl = z.transpose(-1, -2).contiguous().transpose(-1, -2)  # channel stride != 1
    results = []
    for backend, dtype in (("triton", torch.float32), ("reference", torch.float64)):
        inputs = [t.to(DEVICE if backend == "triton" else "cpu", dtype).requires_grad_() for t in (z_cl, g, *weights)]
        zz, gg, *ws = inputs
        if kind == "spatial":
            out = dvfl_kernels.spatial_context(zz, gg, ws, backend=backend)
        elif kind == "temporal":
            out = dvfl_kernels.temporal_context(zz, gg, ws, 2, backend=backend)
        else:
            out = dvfl_kernels.modulate(zz, zz * 2, zz.flip(0), backend=backend)
        out.sum().backward()
        results.append([out] + [t.grad for t in inputs if t.grad is not None])
    for fast, slow in zip(*results):
        assert_close(fast, slow, 1e-5, kind)


def test_inputs_are_not_written():
    generator = torch.Generator().manual_seed(3)
    z, g, weights = _inputs(2, 4, 4, 8, 2, "temporal", torch.float32, generator)
    z, g, weights = z.float(), g.float(), [wt.float().requires_grad_() for wt in weights]
    before = [t.clone() for t in (z, g, *weights)]
    dvfl_kernels.temporal_context(z, g, weights, 2, backend="triton").sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, (z, g, *weights)))


def test_opcheck():
    generator = torch.Generator().manual_seed(4)
    z, g, weights = _inputs(2, 3, 4, 6, 2, "spatial", torch.float32, generator)
    args = (z.float().requires_grad_(), g.float().requires_grad_(), [wt.float().requires_grad_() for wt in weights], False, True)
    torch.library.opcheck(torch.ops.dvfl.spatial_context.default, args)
    z, g, weights = _inputs(4, 2, 3, 6, 2, "temporal", torch.float32, generator)
    args = (z.float().requires_grad_(), g.float().requires_grad_(), [wt.float().requires_grad_() for wt in weights], 2, True, True)
    torch.library.opcheck(torch.ops.dvfl.temporal_context.default, args)
    q, s, t = (torch.randn(2, 3, 4, 5, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.dvfl.modulate.default, (q, s, t))


def test_golden_layer_and_model_on_triton():
    layer, fixture = golden_modulation_layer("triton")
    with torch.no_grad():
        assert_close(layer(fixture["input"]), fixture["output"], 1e-5, "modulation layer (triton)")
    fixture = torch.load(GOLDEN_DIR / "video_focalnet_small_config.pt", weights_only=True)
    model = VideoFocalNet(**fixture["config"], backend="triton").eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    with torch.no_grad():
        assert_close(model(fixture["input"][:1]), fixture["logits"][:1], 1e-5, "logits (triton)")


def test_compiled_layer_fullgraph():
    """The custom ops trace as single nodes: torch.compile(fullgraph=True) runs forward and backward."""
    layer, fixture = golden_modulation_layer("triton")
    x = fixture["input"][:4].clone().requires_grad_()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    reference_layer = copy.deepcopy(layer)
    reference_layer.backend = "reference"
    x_ref = fixture["input"][:4].clone().requires_grad_()
    ref = reference_layer(x_ref)
    ref.sum().backward()
    assert_close(out, ref, 1e-5, "compiled layer")
    assert_close(x.grad, x_ref.grad, 1e-5, "compiled layer dx")


def test_training_matches_the_reference_backend():
    """A few SGD steps of a small model: the triton backend's loss curve follows the reference's."""
    config = dict(img_size=32, embed_dim=8, depths=[1, 1, 1, 1], num_classes=3, num_frames=2, drop_path_rate=0.0)
    torch.manual_seed(0)
    models = {"reference": VideoFocalNet(**config, backend="reference")}
    models["triton"] = copy.deepcopy(models["reference"])
    models["triton"].set_backend("triton")
    clips, labels = torch.randn(2, 2, 3, 32, 32), torch.tensor([0, 2])
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
    assert curves["triton"] == pytest.approx(curves["reference"], rel=1e-4), curves
    assert curves["triton"][-1] < curves["triton"][0]
