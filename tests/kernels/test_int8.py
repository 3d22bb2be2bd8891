"""Int8 inference (issue 40): each int8 op against its float64 fake-quant simulation within one
quantization step, the int8 model against the fp32 reference with a stated tolerance, calibration's
determinism and errors, checkpoints of another variant, and grad modes / thread counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dvfl_kernels
from dvfl_kernels import cpu_int8
from dvfl_kernels.ops import HAS_EXTENSION
from dvfl_kernels.runtime import RUNTIME
from helpers import assert_close

from dvflnet.models import Int8Model, VideoFocalNet, calibrate, quantize_int8
from dvflnet.models.int8 import PARTS, part_of, select_parts

pytestmark = pytest.mark.skipif(not HAS_EXTENSION or not hasattr(torch.ops.onednn, "qlinear_pointwise"),
                                reason="int8 needs the C++ extension and ATen's oneDNN int8 ops")

# The int8 model of a tiny random model against its fp32 logits: max |difference| / max |fp32 logit|.
# Measured 0.4-3% over these configs; the nano with random weights 0.6%, the demo's trained students
# 0.7-1.0% (bench/int8_accuracy.py).
MODEL_TOLERANCE = 0.08


def _reference_quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """float64 quantization (the simulation's), NaN -> 0."""
    q = torch.clamp(torch.round(x.double() * (1.0 / scale)) + zero_point, 0, 255)
    return torch.nan_to_num(q, nan=0.0)


@pytest.mark.parametrize("shape", [(1,), (15,), (16,), (17,), (3, 5, 7), (257, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_u8_within_one_step_with_saturation_and_nan(shape, dtype):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    flat = x.view(-1)
    flat[:: 5] = 1e6  # saturates high
    flat[1:: 7] = -1e6  # saturates low
    flat[2:: 11] = float("nan")
    scale, zero_point = 0.0371, 117
    out = torch.ops.dvfl.quantize_u8(x, scale, zero_point)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    want = _reference_quantize(x.float(), scale, zero_point)
    assert (out.double() - want).abs().max() <= 1  # one step: float32 vs float64 rounding at ties
    assert out[x.float() == 1e6].eq(255).all() and out[x.float() == -1e6].eq(0).all()
    nan = torch.isnan(x.float())
    assert out[nan].eq(0).all()


def test_quantize_u8_reads_a_strided_view_and_checks_its_arguments():
    wide = torch.randn(9, 40)
    view = wide[:, 3:30]
    out = torch.ops.dvfl.quantize_u8(view, 0.05, 128)
    assert torch.equal(out, torch.ops.dvfl.quantize_u8(view.contiguous(), 0.05, 128))
    with pytest.raises(RuntimeError, match="scale: expected a finite value > 0"):
        torch.ops.dvfl.quantize_u8(view, 0.0, 128)
    with pytest.raises(RuntimeError, match="zero_point: expected 0..255"):
        torch.ops.dvfl.quantize_u8(view, 0.1, 256)
    with pytest.raises(RuntimeError, match="x: expected float32 or bfloat16"):
        torch.ops.dvfl.quantize_u8(view.double(), 0.1, 0)


def test_the_int8_ops_pass_opcheck():
    x = torch.randn(6, 10)
    torch.library.opcheck(torch.ops.dvfl.quantize_u8.default, (x, 0.02, 3))


def _weights_with_zero_and_outlier_rows(n: int, k: int, gen) -> torch.Tensor:
    w = torch.randn(n, k, generator=gen)
    w[0] = 0.0  # an all-zero output channel: scale 1, all zeros
    if n > 2:
        w[1] *= 100.0  # an outlier channel: its own scale, the others unaffected
    return w


@pytest.mark.parametrize("rows,k,n", [(1, 5, 3), (7, 17, 19), (33, 96, 40), (130, 64, 255)])
@pytest.mark.parametrize("epilogue", ["none", "gelu", "residual"])
def test_int8_gemm_is_its_fake_quant_simulation(rows, k, n, epilogue):
    gen = torch.Generator().manual_seed(rows * k + n)
    x = torch.randn(rows, k, generator=gen)
    x[0, 0] = 50.0  # beyond the calibrated range: saturates at the top
    x[-1, -1] = -50.0  # and at the bottom
    w = _weights_with_zero_and_outlier_rows(n, k, gen)
    b = torch.randn(n, generator=gen)
    residual = torch.randn(rows, n, generator=gen) if epilogue == "residual" else None
    activation = "gelu" if epilogue == "gelu" else "none"
    low, high = -3.0, 4.0
    gemm = cpu_int8.Int8Gemm.build([w], [b], (low, high), rows_hint=rows)
    before = None if residual is None else residual.clone()
    got = gemm(x, activation, residual, torch.float32)
    assert torch.isfinite(got).all()
    assert residual is None or torch.equal(residual, before)  # the caller's tensor is read, never written
    scale, zero_point = cpu_int8.activation_params(low, high)
    want = cpu_int8.fake_quant_gemm(x, w, b, scale, zero_point, activation, residual)
    # one input step on every element (the float32 and float64 roundings may differ at ties) bounds the
    # difference by scale * the row's L1 norm, plus float32 rounding of the sum
    q_w, s_w = cpu_int8.quantize_weight(w)
    l1 = (q_w.double().abs() * s_w.double()[:, None]).sum(1)
    bound = scale * l1 + 1e-5 * (want.abs() + 1)
    assert ((got.double() - want).abs() <= bound).all()
    assert (got[:, 0].double() - want[:, 0]).abs().max() <= 1e-5 * (want[:, 0].abs().max() + 1)  # the zero row: bias only


def test_products_at_the_ends_of_both_grids_sum_exactly():
    """uint8 255 against weights at +-weight_qmax(): every sum exact on this CPU (without VNNI oneDNN
    adds u8 x s8 products in saturating int16 pairs; 127-step weights there came out halved)."""
    k = 96
    w = torch.ones(4, k)
    w[1] = -1.0
    w[2, ::2] = -1.0
    w[3, :k // 2] = -1.0
    gemm = cpu_int8.Int8Gemm.build([w], [None], (0.0, 255.0), rows_hint=5)  # input grid: scale 1, zero point 0
    x = torch.full((5, k), 255.0)
    assert_close(gemm(x, "none", None, torch.float32), x.double() @ w.double().T, 1e-6, "worst-case sums")


def test_weight_quantization_is_per_channel_symmetric():
    w = torch.tensor([[0.0, 0.0], [1.0, -2.0], [300.0, 1.0]])
    q, s = cpu_int8.quantize_weight(w)
    assert q.dtype == torch.int8 and torch.equal(q[0], torch.zeros(2, dtype=torch.int8))
    qmax = cpu_int8.weight_qmax()
    assert s[0] == 1.0 and torch.allclose(s[1:], torch.tensor([2.0, 300.0]) / qmax)
    assert q[2, 0] == qmax and q[1, 1] == -qmax
    assert cpu_int8.activation_params(0.0, 0.0) == (1.0, 0)
    scale, zp = cpu_int8.activation_params(0.5, 2.0)  # 0 is always on the grid
    assert zp == 0 and scale == pytest.approx(2.0 / 255)


@pytest.mark.parametrize("b,t,h,w,c,levels", [(1, 1, 1, 1, 3, 1), (1, 4, 3, 5, 8, 2), (2, 3, 2, 3, 16, 2),
                                              (1, 8, 4, 4, 12, 3)])
@pytest.mark.parametrize("normalize", [False, True])
def test_int8_temporal_taps_are_their_fake_quant_simulation(b, t, h, w, c, levels, normalize):
    gen = torch.Generator().manual_seed(b * t * h * w * c + levels)
    n = b * t
    z = torch.randn(n, h, w, c + 2, generator=gen)[..., 1:-1]  # a channel slice, as the model passes it
    g = torch.randn(n, h, w, levels + 1, generator=gen)
    weights = [torch.randn(c, c, 2 * lvl + 3, generator=gen) / c for lvl in range(levels)]
    weights[0][0] = 0.0  # an all-zero output channel
    recorder = cpu_int8.Calibration({id(wt): f"l{i}" for i, wt in enumerate(weights)})
    recorder.temporal(z, g, weights, t, normalize)
    ranges = list(recorder.tap_ranges.values())[0]
    taps = cpu_int8.Int8Taps.build(weights, ranges, rows_hint=n * h * w)
    got = taps(z, g, t, normalize)
    want = cpu_int8.fake_quant_temporal_context(z, g, weights, ranges, t, normalize)
    assert got.shape == (n, h, w, c) and torch.isfinite(got).all()
    # one input step per element and level, through that level's taps (GELU and the gates are 1-Lipschitz
    # up to a constant of 1.13 and |g|)
    step = 0.0
    for wt, r in zip(weights, ranges):
        scale, _ = cpu_int8.activation_params(*r)
        step = 1.13 * (step + scale) * wt.abs().sum((1, 2)).max().item()
    bound = step * g.abs().max().item() * (levels + 1) + 1e-4
    assert (got.double() - want).abs().max() <= bound


def test_the_int8_temporal_op_names_the_argument_it_refuses():
    """Called directly (torch.ops.dvfl.temporal_context_int8), a clip count that num_frames does not
    divide or gates of the wrong shape are errors naming them, not a wrong answer."""
    gen = torch.Generator().manual_seed(3)
    z, g = torch.randn(4, 2, 3, 8, generator=gen), torch.randn(4, 2, 3, 3, generator=gen)
    weights = [torch.randn(8, 8, 3, generator=gen), torch.randn(8, 8, 5, generator=gen)]
    taps = cpu_int8.Int8Taps.build(weights, [(-3.0, 3.0), (-1.0, 1.0)], rows_hint=24)
    assert taps(z, g, 2, False).shape == z.shape
    with pytest.raises(ValueError, match=r"z_t: the batch dimension N=4 must be clips x num_frames, but num_frames=3"):
        taps(z, g, 3, False)
    with pytest.raises(ValueError, match=r"g_t: expected shape \[4, 2, 3, 3\]"):
        taps(z, g[..., :2], 2, False)


def _tiny(**options) -> VideoFocalNet:
    torch.manual_seed(0)
    return VideoFocalNet(img_size=32, embed_dim=16, depths=[1, 2, 1, 1], num_classes=7, num_frames=4,
                         drop_path_rate=0.0, **options).eval()


def _clips(count: int, seed: int, frames: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, frames, 3, 32, 32, generator=gen) for _ in range(count)]


@pytest.mark.parametrize("options", [{}, {"tubelet_size": 2}, {"normalize_modulator": True}, {"focal_levels": [3] * 4}])
def test_the_int8_model_is_the_fp32_model_within_its_tolerance(options):
    model = _tiny(**options)
    int8 = quantize_int8(model, _clips(3, 1), float_parts=(), measured=False)
    # per block: the GEMMs f+f_temporal, h, h_temporal, proj, fc1, fc2 and the temporal taps
    assert len(int8.plan) == sum(len(layer.blocks) for layer in model.layers) * 7
    for x in (_clips(1, 7)[0], _clips(1, 8)[0][:1], torch.randn(1, 1 if not options.get("tubelet_size") else 2, 3, 32, 32)):
        with torch.inference_mode():
            want, got = model(x), int8(x)
        assert torch.isfinite(got).all()
        assert (got - want).abs().max() <= MODEL_TOLERANCE * want.abs().max()


def test_each_part_alone_runs_in_int8_and_the_rest_in_float():
    model = _tiny()
    ranges = calibrate(model, _clips(2, 3))
    x = _clips(1, 4)[0]
    with torch.inference_mode():
        want = model(x)
        for part in PARTS:
            selected = select_parts(ranges, [part])
            assert all(part_of(n) == part for kind in selected.values() for n in kind)
            got = Int8Model(model, selected, measured=False)(x)
            assert not torch.equal(got, want), part  # the part did run in int8
            assert (got - want).abs().max() <= MODEL_TOLERANCE * want.abs().max(), part
        assert torch.equal(Int8Model(model, select_parts(ranges, []), measured=False)(x), want)  # nothing in int8: the float model


def test_calibration_is_deterministic_and_leaves_the_source_model_alone():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert calibrate(model, _clips(2, 5)) == calibrate(model, _clips(2, 5))
    int8 = quantize_int8(model, _clips(2, 5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.head.weight.add_(1.0)  # the int8 model is a copy
    x = _clips(1, 6)[0]
    assert not torch.equal(int8(x), model(x))
    assert any(part_of(n) == "proj" for n in int8.ranges["gemms"]) and int8.ranges["smoothing"]  # smoothed proj in int8
    assert calibrate(model, _clips(3, 5), clips=2) == calibrate(model, _clips(1, 5))  # --clips stops early


@pytest.mark.parametrize("calibration,match", [
    ([], "no clips"),
    ([torch.randn(2, 3, 32, 32)], r"batch 0: expected clips \(B, T, 3, H, W\)"),
    ([torch.randn(1, 4, 3, 32, 32), torch.full((1, 4, 3, 32, 32), float("nan"))], "batch 1: holds NaN or inf"),
    ([torch.zeros(1, 4, 3, 32, 32, dtype=torch.long)], "batch 0: expected floating-point clips"),
])
def test_a_bad_calibration_set_is_an_error_naming_it(calibration, match):
    with pytest.raises(ValueError, match=match):
        quantize_int8(_tiny(), calibration)


def test_bad_arguments_are_errors_naming_them():
    model = _tiny()
    with pytest.raises(ValueError, match="clips: expected an integer >= 1"):
        quantize_int8(model, _clips(1, 1), clips=0)
    with pytest.raises(ValueError, match="parts: unknown"):
        quantize_int8(model, _clips(1, 1), float_parts=("attention",))
    with pytest.raises(TypeError, match="model: expected a dvfl VideoFocalNet"):
        quantize_int8(torch.nn.Linear(3, 3), _clips(1, 1))
    int8 = quantize_int8(model, _clips(1, 1))
    with pytest.raises(ValueError, match="x: the clips hold NaN or inf"):
        int8(torch.full((1, 4, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="runs on CPU only"):
        int8.to("meta")
    with pytest.raises(ValueError, match="float parts in float32"):
        int8.half()


def test_a_checkpoint_of_another_variant_is_an_error_naming_both():
    source = _tiny()
    int8 = quantize_int8(source, _clips(1, 2))
    state = int8.int8_state()
    other = VideoFocalNet(img_size=32, embed_dim=24, depths=[1, 1, 1, 1], num_classes=7, num_frames=4).eval()
    with pytest.raises(ValueError, match=r"calibrated for a model of \{'widths': \[16, .*loaded into one of \{'widths': \[24"):
        Int8Model.from_state(other, state, source="nano-int8.pt")
    with pytest.raises(ValueError, match="format 99"):
        Int8Model.from_state(_tiny(), dict(state, format=99))
    broken = dict(state, ranges={"gemms": {"layers.0.blocks.0.mlp.fc1": [1.0, float("nan")]}, "temporal_taps": {},
                                 "smoothing": {}})
    with pytest.raises(ValueError, match="fc1: expected a finite"):
        Int8Model.from_state(_tiny(), broken)
    rebuilt = Int8Model.from_state(_tiny(), state, measured=False)
    int8.measured = False
    x = _clips(1, 3)[0]
    assert torch.equal(rebuilt(x), int8(x))  # the same weights and ranges give the same int8 model


def test_grad_modes_and_thread_counts_give_the_same_outputs():
    int8 = quantize_int8(_tiny(), _clips(2, 9))  # measured: each shape's int8-or-float verdict is kept per process
    x = _clips(1, 10)[0]
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            first = int8(x)
        with torch.no_grad():
            assert torch.equal(int8(x), first)
        assert torch.equal(int8(x), first) and not int8(x).requires_grad  # no gradient is ever built
        for count in (1, 2):
            torch.set_num_threads(count)
            with torch.inference_mode():
                torch.testing.assert_close(int8(x), first, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_under_torch_compile_the_int8_model_still_runs_in_int8():
    int8 = quantize_int8(_tiny(), _clips(1, 2), measured=False)
    x = _clips(1, 3)[0]
    compiled = torch.compile(int8, backend="eager")(x)
    assert torch.equal(compiled, int8(x)) and not torch.equal(compiled, int8.model(x))
    with pytest.raises(RuntimeError, match="cannot be traced"):
        torch.jit.trace(int8, (x,), check_trace=False)


def test_hooks_on_a_linear_run_it_in_float_and_count_it():
    """A forward hook (a FLOP counter, a feature extractor) sees its layer called: that layer runs float."""
    model = _tiny()
    int8 = quantize_int8(model, _clips(1, 2))
    seen = []
    handle = int8.model.layers[0].blocks[0].modulation.f.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        out = int8(_clips(1, 3)[0])
    finally:
        handle.remove()
    assert seen and torch.isfinite(out).all()


def test_measured_int8_runs_each_shape_the_way_its_verdict_says(monkeypatch):
    """With measured=True a GEMM runs in int8 exactly where the shape's stored verdict is "int8"."""
    from dvfl_kernels import _probe

    model = _tiny()
    ranges = calibrate(model, _clips(2, 3))
    x = _clips(1, 4)[0]
    with torch.inference_mode():
        always = Int8Model(model, ranges, measured=False)
        # float: the int8 model's own float copy (proj's smoothing rescales it, so rounding differs from `model`)
        for verdict, want in (("int8", always(x)), ("float", always.model(x))):
            monkeypatch.setattr(RUNTIME, "verdicts", {})
            monkeypatch.setattr(_probe, "fastest", lambda key, candidates, *a, **k: verdict if key[0] == "int8 or float"
                                else next(iter(candidates)))
            assert torch.equal(Int8Model(model, ranges)(x), want)


def test_linear_outside_an_int8_forward_is_unchanged():
    x, w, b = torch.randn(5, 8), torch.randn(4, 8), torch.randn(4)
    with torch.no_grad():
        torch.testing.assert_close(dvfl_kernels.linear(x, w, b), F.linear(x, w, b))


def test_smoothing_keeps_the_float_function_and_moves_outliers_into_the_weights():
    model = _tiny()
    ranges = calibrate(model, _clips(2, 11))
    assert set(ranges["smoothing"]) == {n for n in ranges["gemms"] if part_of(n) == "proj"}
    smoothed_only = Int8Model(model, {"gemms": {}, "temporal_taps": {}, "smoothing": ranges["smoothing"]})
    x = _clips(1, 12)[0]
    with torch.inference_mode():
        torch.testing.assert_close(smoothed_only(x), model(x), rtol=1e-4, atol=1e-5)  # x / s into f, W * s into proj
    s = cpu_int8.smoothing_factors(torch.tensor([4.0, 0.0, 1.0]), torch.tensor([[1.0, 1.0, 0.0], [0.25, 2.0, 0.0]]))
    assert torch.allclose(s, torch.tensor([2.0, 1.0, 1.0]))  # sqrt(4) / sqrt(1); a zero column or input keeps 1
    with pytest.raises(ValueError, match="no smoothable proj"):
        Int8Model(model, {"gemms": {}, "temporal_taps": {}, "smoothing": {"layers.0.blocks.0.mlp.fc1": [1.0] * 16}})
    with pytest.raises(ValueError, match="16 channels"):
        Int8Model(model, {"gemms": {}, "temporal_taps": {}, "smoothing": {"layers.0.blocks.0.modulation.proj": [1.0]}})


def test_an_int8_model_made_inside_inference_mode_still_runs_in_int8():
    with torch.inference_mode():
        model = _tiny()  # its parameters are inference tensors
        int8 = quantize_int8(model, _clips(1, 2), measured=False)
        x = _clips(1, 3)[0]
        assert not torch.equal(int8(x), int8.model(x))


@pytest.mark.parametrize("rows,k,hidden,n", [(1, 8, 12, 8), (37, 24, 40, 24), (300, 16, 64, 16)])
def test_the_int8_mlp_pair_is_its_fake_quant_simulation(rows, k, hidden, n):
    """fc1 writes uint8 on fc2's grid (the requantizing epilogue): the same as fc1 in int8, its GELU output
    quantized for fc2, fc2 in int8, within one step of each grid."""
    gen = torch.Generator().manual_seed(rows + k + hidden)
    x, residual = torch.randn(rows, k, generator=gen), torch.randn(rows, n, generator=gen)
    w1, b1 = _weights_with_zero_and_outlier_rows(hidden, k, gen), torch.randn(hidden, generator=gen)
    w2, b2 = torch.randn(n, hidden, generator=gen) / 4, torch.randn(n, generator=gen)
    r1, r2 = (-2.5, 3.0), (-0.2, 6.0)
    plan = cpu_int8.Int8Plan({"fc1": ([w1], [b1], r1), "fc2": ([w2], [b2], r2)}, measured=False)
    before = residual.clone()
    with torch.no_grad(), cpu_int8.running(plan):
        got = dvfl_kernels.mlp(x, w1, b1, w2, b2, residual=residual)
        separate = dvfl_kernels.linear(dvfl_kernels.linear(x, w1, b1, activation="gelu"), w2, b2, residual=residual)
    assert torch.equal(residual, before) and torch.isfinite(got).all()
    (s1, z1), (s2, z2) = cpu_int8.activation_params(*r1), cpu_int8.activation_params(*r2)
    hidden_want = cpu_int8.fake_quant_gemm(x, w1, b1, s1, z1, "gelu")
    want = cpu_int8.fake_quant_gemm(hidden_want, w2, b2, s2, z2, residual=residual)

    def l1(w):
        q_w, s_w = cpu_int8.quantize_weight(w)
        return (q_w.double().abs() * s_w.double()[:, None]).sum(1).max().item()

    bound = (s2 + 1.13 * s1 * l1(w1)) * l1(w2) + 1e-4
    assert (got.double() - want).abs().max() <= bound
    assert (got - separate).abs().max() <= s2 * l1(w2) + 1e-4  # the pair and two int8 calls: one step of fc2's grid
    with torch.no_grad():
        torch.testing.assert_close(dvfl_kernels.mlp(x, w1, b1, w2, b2, residual=residual),
                                   residual + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2))  # no plan: float
