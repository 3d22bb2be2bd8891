"""The models: golden fixtures from the public code, state-dict layout of every variant, options,
modulator capture, gradient checkpointing and input validation."""
from __future__ import annotations

import re

import pytest
import torch

from dvflnet.models import (
    SpatioTemporalFocalModulation,
    VideoFocalNet,
    capture_modulators,
    create_model,
    list_models,
)
from helpers import GOLDEN_DIR, assert_close

TINY = dict(img_size=64, embed_dim=8, depths=[1, 1, 1, 1], num_classes=5, num_frames=4, drop_path_rate=0.0)


def test_golden_focal_modulation_layer(golden_modulation):
    layer, fixture = golden_modulation
    with torch.no_grad():
        out = layer(fixture["input"], backend="reference")
    assert_close(out, fixture["output"], 1e-5, "modulation layer")


def test_golden_video_focalnet():
    fixture = torch.load(GOLDEN_DIR / "video_focalnet_small_config.pt", weights_only=True)
    model = VideoFocalNet(**fixture["config"], backend="reference").eval()
    model.load_state_dict(fixture["state_dict"], strict=True)
    with torch.no_grad():
        logits = model(fixture["input"])
    assert_close(logits, fixture["logits"], 1e-5, "logits")


def _spec_table():
    text = (GOLDEN_DIR / "video_focalnet_state_dict.md").read_text()
    rows = {}
    for name, dim, depths, p101, p400 in re.findall(r"^\| (\w+) \| (\d+) \| (\[[^\]]+\]) \| ([\d,]+) \| ([\d,]+) \|", text, re.M):
        rows[name] = (int(dim), eval(depths), int(p101.replace(",", "")), int(p400.replace(",", "")))
    keys = re.findall(r"^(\S+) \(([\d, ]+)\)$", text, re.M)
    nano_keys = {k: tuple(int(x) for x in shape.split(",") if x.strip()) for k, shape in keys}
    return rows, nano_keys


SPEC_ROWS, SPEC_NANO_KEYS = _spec_table()
VARIANT_OF = {"nano": "vfl_net_nano", "tiny": "video_focalnet_tiny", "small": "video_focalnet_small", "base": "video_focalnet_base"}


def test_spec_parsed():
    assert set(SPEC_ROWS) == set(VARIANT_OF) and len(SPEC_NANO_KEYS) > 100


def test_nano_state_dict_keys_and_shapes_exactly():
    model = create_model("vfl_net_nano", num_classes=101)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == SPEC_NANO_KEYS


def test_parameters_are_registered_in_the_public_models_order():
    # Optimizer states saved by the public training code list tensors by position: the order of
    # named_parameters() / state_dict() must be the public model's (the spec table's) exactly.
    model = create_model("vfl_net_nano", num_classes=101)
    assert list(model.state_dict()) == list(SPEC_NANO_KEYS)
    assert [name for name, _ in model.named_parameters()] == list(SPEC_NANO_KEYS)


def _expected_keys(dim: int, depths: list[int]) -> dict:
    """The nano table (embed 96, one block per stage where it has one) generalised: blocks repeated
    per stage, widths scaled by dim/96 (a C-multiple scales; 2C+3 and C+3 keep their +3)."""

    def scale(v: int) -> int:
        if v % 96 == 0:
            return v * dim // 96
        if v > 3 and (v - 3) % 96 == 0:
            return (v - 3) * dim // 96 + 3
        return v  # kernel sizes, input channels, classes

    expected = {}
    for key, shape in SPEC_NANO_KEYS.items():
        new_shape = (shape[0],) + tuple(map(scale, shape[1:])) if key.startswith("head") else tuple(map(scale, shape))
        block = re.match(r"layers\.(\d)\.blocks\.(\d+)\.(.*)", key)
        if block is None:
            expected[key] = new_shape
        elif block.group(2) == "0":
            for b in range(depths[int(block.group(1))]):
                expected[f"layers.{block.group(1)}.blocks.{b}.{block.group(3)}"] = new_shape
    return expected


@pytest.mark.parametrize("variant", ["nano", "tiny", "small", "base"])
def test_every_variant_matches_spec(variant):
    dim, depths, p101, p400 = SPEC_ROWS[variant]
    model = create_model(VARIANT_OF[variant], num_classes=101)
    assert sum(p.numel() for p in model.parameters()) == p101
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _expected_keys(dim, depths)
    model.reset_classifier(400)
    assert sum(p.numel() for p in model.parameters()) == p400
    # strict loading of a state dict with exactly the spec's layout
    fresh = create_model(VARIANT_OF[variant], num_classes=400)
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_aliases_and_drop_path_defaults():
    assert {"videofocalnet_nano", "videofocalnet_base", "vfl_net_nano"} <= set(list_models())
    rates = {n: create_model(n, num_classes=2).layers[-1].blocks[-1].drop_path.drop_prob for n in
             ("videofocalnet_nano", "video_focalnet_tiny", "video_focalnet_small", "videofocalnet_base")}
    assert rates == pytest.approx({"videofocalnet_nano": 0.2, "video_focalnet_tiny": 0.2, "video_focalnet_small": 0.3, "videofocalnet_base": 0.5})
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")


OPTIONS = [
    dict(),
    dict(use_layerscale=True, layerscale_value=0.5),
    dict(use_postln=True),
    dict(use_postln_in_modulation=True),
    dict(normalize_modulator=True),
    dict(use_conv_embed=True),
    dict(tubelet_size=2),
    dict(focal_levels=[1, 2, 3, 1], focal_windows=[3, 5, 3, 1]),
    dict(patch_norm=False, num_classes=0),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_options_run_train_and_roundtrip(options):
    torch.manual_seed(0)
    model = VideoFocalNet(**(TINY | options), backend="reference")
    clips = torch.randn(2, 4, 3, 64, 64)
    out = model(clips)
    assert out.shape == (2, model.num_classes if model.num_classes else model.num_features)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    copy = VideoFocalNet(**(TINY | options), backend="reference")
    copy.load_state_dict(model.state_dict(), strict=True)
    model.eval(), copy.eval()
    with torch.no_grad():
        assert torch.equal(model(clips), copy(clips))


def test_option_semantics():
    clips = torch.randn(1, 4, 3, 64, 64)
    # layerscale 0 turns every block into the identity: the features equal stem + merges alone.
    a = VideoFocalNet(**TINY, use_layerscale=True, layerscale_value=0.0).eval()
    b = VideoFocalNet(**(TINY | dict(depths=[0, 0, 0, 0]))).eval()
    b.load_state_dict(a.state_dict(), strict=False)
    with torch.no_grad():
        assert_close(a(clips), b(clips), 1e-6, "layerscale 0")
    # tubelet 2 folds pairs of frames: 4 frames -> 2 per clip after the stem
    t = VideoFocalNet(**TINY, tubelet_size=2)
    assert t.num_frames == 2 and t.patch_embed.proj.weight.shape == (8, 3, 2, 4, 4)
    with pytest.raises(ValueError, match="not a multiple of tubelet_size=2"):
        t(torch.randn(1, 3, 3, 64, 64))
    # the model accepts other clip lengths than it was built for (the temporal ops are length-agnostic)
    m = VideoFocalNet(**TINY).eval()
    assert m(torch.randn(2, 6, 3, 64, 64)).shape == (2, 5)


def test_forward_features_public_frame_layout():
    m = VideoFocalNet(**TINY).eval()
    clips = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        per_frame = m.forward_features(clips.flatten(0, 1))
        assert per_frame.shape == (8, 64)
        assert_close(m.head(per_frame.view(2, 4, -1).mean(1)), m(clips), 1e-6, "public frame layout")


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    m = VideoFocalNet(**TINY)
    clips = torch.randn(2, 4, 3, 64, 64)
    m(clips).sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(clips).sum().backward()
    for g, p in zip(grads, m.parameters()):
        assert_close(p.grad, g, 1e-6, "checkpointed grad")


def test_capture_modulators_and_no_tensors_kept_on_modules():
    m = VideoFocalNet(**TINY).eval()
    clips = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad(), capture_modulators(m) as mods:
        m(clips)
    assert set(mods) == {n for n, x in m.named_modules() if isinstance(x, SpatioTemporalFocalModulation)}
    first = mods["layers.0.blocks.0.modulation"]
    assert first["spatial"].shape == first["temporal"].shape == (8, 16, 16, 8)
    # the captured modulators are the h / h_temporal outputs of that layer's input
    layer = m.layers[0].blocks[0].modulation
    x = m.layers[0].blocks[0].norm1(m.patch_embed(clips.flatten(0, 1)))
    _, z, g = layer.f(x).split((8, 8, 3), -1)
    import dvfl_kernels

    a_s = dvfl_kernels.spatial_context(z, g, [l[0].weight for l in layer.focal_layers], False)
    assert_close(first["spatial"], a_s @ layer.h.weight.flatten(1).T + layer.h.bias, 1e-5, "spatial modulator")
    # after the context the modules hold no sink, and no module ever holds a tensor attribute
    with torch.no_grad():
        m(clips)
    for module in m.modules():
        if isinstance(module, SpatioTemporalFocalModulation):
            assert module.modulator_sink is None
        tensors = [k for k, v in vars(module).items() if isinstance(v, torch.Tensor)]
        assert not tensors, f"{type(module).__name__} holds tensors {tensors}"


@pytest.mark.parametrize(
    "clips,match",
    [
        (torch.randn(4, 3, 64, 64), r"x: expected clips of shape \(B, T, C, H, W\)"),
        (torch.randn(1, 4, 1, 64, 64), r"x: expected 3 channels"),
        (torch.randn(1, 4, 3, 60, 64), r"H and W must be multiples of 32"),
        (torch.randint(0, 255, (1, 4, 3, 64, 64), dtype=torch.uint8), r"x: expected a floating-point tensor"),
    ],
)
def test_bad_inputs(clips, match):
    with pytest.raises((ValueError, TypeError), match=match):
        VideoFocalNet(**TINY)(clips)


def test_bad_frame_count_for_frames_layout():
    m = VideoFocalNet(**TINY)
    with pytest.raises(ValueError, match="not a whole number of 4-frame clips"):
        m.forward_features(torch.randn(6, 3, 64, 64))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradients_come_back_in_the_parameters_layout(backend):
    if backend not in ("reference", *__import__("dvfl_kernels").available_backends("spatial_context")):
        pytest.skip(f"{backend} is not built")
    model = create_model("vfl_net_nano", num_classes=3, embed_dim=8, num_frames=4, backend=backend, use_layerscale=True)
    model(torch.randn(2, 4, 3, 32, 32)).sum().backward()
    wrong = {n: (p.stride(), p.grad.stride()) for n, p in model.named_parameters() if p.grad.stride() != p.stride()}
    assert not wrong


def test_the_backend_is_held_by_the_root_and_each_call_names_it():
    """set_backend changes one attribute; a block handed another backend runs on that one."""
    model = VideoFocalNet(**TINY).eval()
    model.set_backend("reference")
    assert [name for name, m in model.named_modules() if "backend" in vars(m)] == [""]
    block, x = model.layers[0].blocks[0], torch.randn(4, 16, 16, 8, dtype=torch.float64)
    block.double()
    with torch.no_grad():
        reference = block(x, 4, "reference")
        assert_close(block(x, 4, "auto"), reference, 1e-12, "a block on auto")


def test_a_hook_on_the_modulation_sees_its_own_output():
    """A hook on a block's modulation module sees proj's output (no residual folded in)."""
    model = VideoFocalNet(**TINY).eval()
    seen = []
    modulation = model.layers[0].blocks[0].modulation
    handle = modulation.register_forward_hook(lambda m, i, o: seen.append(o))
    clips = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        model(clips)
        x = model.layers[0].blocks[0].norm1(model.patch_embed(clips.flatten(0, 1)))
        expected = modulation(x, 4, "reference")
    handle.remove()
    assert_close(seen[0], expected, 1e-5, "hooked modulation output")


def test_only_the_fusion_module_reads_torchs_hook_dicts():
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[2] / "dvflnet"
    readers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if re.search(r"_forward_(pre_)?hooks", p.read_text()))
    assert readers == ["models/fusion.py"]
