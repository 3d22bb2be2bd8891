"""Int8 inference on CPU for any dvfl model: post-training static quantization.

    from dvflnet.models import create_model, quantize_int8
    model = create_model("vfl_net_nano", num_classes=101, pretrained="best.pt").eval()
    int8 = quantize_int8(model, calibration_batches)       # an iterable of (B, T, 3, H, W) clips
    with torch.inference_mode():
        logits = int8(clips)

The model's GEMMs (f with f_temporal, h, h_temporal, fc1, fc2 in every block, and the dense temporal
taps) run in int8 where that is measured faster per shape
(dvfl_kernels/cpu_int8.py: weights per output channel, activations per tensor from the calibration
ranges, bias / GELU / residual fused). The focal kernels, LayerNorm, the patch embeddings and the
head stay in float: measured, they hold most of the error for little of the time (docs/int8.md).
The int8 model is a copy: later changes to the source model's weights do not reach it.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from dvfl_kernels import _prepared, cpu_int8

from .video_focalnet import VideoFocalNet

# The checkpoint section's layout; a reader refuses other versions by name.
FORMAT = 1
# The parts of a block that can run in int8 (``part_of``): the GEMMs by their layer's name, and the
# dense taps of the temporal context.
PARTS = ("f", "h", "h_temporal", "proj", "fc1", "fc2", "temporal_taps")
# Parts kept in float by default.
DEFAULT_FLOAT_PARTS = ()
# proj's input, the modulator q * h(A_s) * h_t(A_t), is a product of three terms with outlier channels:
# quantized per tensor as it is, it made most of the int8 model's logit error on the demo's students
# (docs/int8.md). Smoothed (SmoothQuant, this alpha), its outliers move into proj's weight columns; 1 / s
# folds into the q rows of f (and their bias), so the smoothing costs nothing at run time.
SMOOTHING_ALPHA = 0.5


class Int8Model(nn.Module):
    """A dvfl model whose GEMMs run in int8 on CPU (inference only).

    Args:
        model: the float model (copied: the copy, in eval mode on backend "auto" with the smoothing
            applied, is the source of the int8 weights and runs the float parts).
        ranges: ``calibrate``'s: {"gemms": GEMM name -> (low, high) of its input over the calibration
            clips, "temporal_taps": temporal context name -> each level's (low, high), "smoothing":
            proj name -> its per-input-channel SmoothQuant factors}.
        measured: each GEMM and temporal context in int8 only where that is measured faster than
            float for its shape on this machine (once per shape; the verdicts are the engine's, see
            docs/kernels.md); False: every one the ranges name in int8.
    """

    def __init__(self, model: VideoFocalNet, ranges: dict, measured: bool = True):
        super().__init__()
        if not isinstance(model, VideoFocalNet):
            raise TypeError(f"model: expected a dvfl VideoFocalNet, got {type(model).__name__}")
        self.ranges = _checked_ranges(ranges)
        self.model = _own_copy(model)  # its own: the smoothing below rescales weights
        if self.model.backend == "reference":
            self.model.set_backend("auto")  # the reference backend runs F.linear, which the int8 plan does not see
        _apply_smoothing(self.model, self.ranges["smoothing"])
        self.plan = cpu_int8.Int8Plan(*_plan_inputs(self.model, self.ranges), measured=bool(measured))

    @property
    def measured(self) -> bool:
        """Whether each GEMM runs in int8 only where measured faster for its shape (else always)."""
        return self.plan.measured

    @measured.setter
    def measured(self, value: bool) -> None:
        self.plan.measured = bool(value)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def num_frames(self) -> int:
        return self.model.num_frames

    # torch.compile runs this forward eagerly, in int8: traced, the GEMM calls would step aside for
    # inductor's own (float) ones and the model would silently run in float.
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of clips (B, T, C, H, W) on CPU, as the float model's forward."""
        if _prepared.tracing():
            raise RuntimeError("the int8 model cannot be traced or exported as a program (its GEMMs are oneDNN "
                               "calls made per call); export it as ONNX with QDQ pairs (dvflnet export) instead")
        if isinstance(x, torch.Tensor) and x.device.type != "cpu":
            raise ValueError(f"x: the int8 model runs on CPU; got a tensor on {x.device}")
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("x: the clips hold NaN or inf; an int8 GEMM cannot carry them (its inputs saturate)")
        with torch.no_grad(), cpu_int8.running(self.plan):
            return self.model(x)

    def _apply(self, fn, recurse=True):
        probe = fn(torch.empty(0))
        if probe.device.type != "cpu":
            raise ValueError(f"the int8 model runs on CPU only; it cannot move to {probe.device}")
        if probe.dtype != torch.float32:
            raise ValueError(f"the int8 model keeps its float parts in float32; it cannot become {probe.dtype} "
                             "(use torch.autocast for bfloat16)")
        return super()._apply(fn, recurse)

    def int8_state(self) -> dict:
        """What a checkpoint needs besides the float weights: the format, the variant's shape, the ranges."""
        return {"format": FORMAT, "architecture": architecture(self.model), "ranges": copy.deepcopy(self.ranges)}

    @classmethod
    def from_state(cls, model: VideoFocalNet, state: dict, source: str = "checkpoint", measured: bool = True) -> "Int8Model":
        """The int8 model of `model` (weights loaded) from ``int8_state()``; a state made for another
        variant or format is an error naming both."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{source}: its int8 section has format {found!r}; this dvfl reads format {FORMAT}")
        mine, theirs = architecture(model), state.get("architecture")
        if mine != theirs:
            raise ValueError(f"{source}: its int8 section was calibrated for a model of {theirs}, but it is being "
                             f"loaded into one of {mine}")
        return cls(model, state.get("ranges"), measured)


def architecture(model: VideoFocalNet) -> dict:
    """What decides a model's GEMM names and shapes (two models with equal values take the same ranges)."""
    return {"widths": list(model.embed_dim), "depths": [len(layer.blocks) for layer in model.layers],
            "focal_levels": [m.focal_level for m in _modulations(model)], "num_classes": model.num_classes}


def _modulations(model: nn.Module):
    from .video_focalnet import SpatioTemporalFocalModulation

    return [m for m in model.modules() if isinstance(m, SpatioTemporalFocalModulation)]


def part_of(name: str) -> str:
    """The part (``PARTS``) of a GEMM or temporal-context name as ``calibrate`` records it."""
    first = name.split("+")[0].split(".")
    return "temporal_taps" if "focal_layers_temporal" in first else first[-1]


def select_parts(ranges: dict, parts) -> dict:
    """`ranges` with only the GEMMs and temporal contexts of `parts` (the others then run in float)."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"parts: unknown {unknown}; expected some of {list(PARTS)}")
    return {"gemms": {n: r for n, r in ranges["gemms"].items() if part_of(n) in parts},
            "temporal_taps": {n: r for n, r in ranges["temporal_taps"].items() if part_of(n) in parts},
            "smoothing": {n: f for n, f in ranges.get("smoothing", {}).items() if part_of(n) in parts}}


def _checked_ranges(ranges) -> dict:
    """The ranges as plain floats; anything else (a damaged checkpoint) is an error naming the entry."""
    if not isinstance(ranges, dict) or set(ranges) != {"gemms", "temporal_taps", "smoothing"}:
        raise ValueError("int8 ranges: expected {'gemms': ..., 'temporal_taps': ..., 'smoothing': ...} as calibrate() "
                         "returns them")

    def factors(name, values):
        if not (isinstance(values, (list, tuple)) and values
                and all(isinstance(v, (int, float)) and 0 < v < float("inf") for v in values)):
            raise ValueError(f"int8 ranges: smoothing of {name}: expected positive finite factors")
        return [float(v) for v in values]

    def pair(name, r):
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, (int, float)) for v in r)
                and all(abs(v) < float("inf") for v in r) and r[0] <= r[1]):
            raise ValueError(f"int8 ranges: {name}: expected a finite (low, high) with low <= high, got {r!r}")
        return [float(r[0]), float(r[1])]

    return {"gemms": {name: pair(name, r) for name, r in ranges["gemms"].items()},
            "temporal_taps": {name: [pair(f"{name} level {i}", r) for i, r in enumerate(levels)]
                              for name, levels in ranges["temporal_taps"].items()},
            "smoothing": {name: factors(name, values) for name, values in ranges["smoothing"].items()}}


def _own_copy(model: VideoFocalNet) -> VideoFocalNet:
    """An eval-mode copy with ordinary tensors, also when made inside torch.inference_mode() or from a
    model built there: the CPU engine runs its fast paths (int8 included) only on weights that have a
    version counter, which inference tensors lack."""
    with torch.inference_mode(False):
        copied = copy.deepcopy(model).eval()
        for tensor in (*copied.parameters(), *copied.buffers()):
            if tensor.is_inference():
                tensor.data = tensor.data.clone()
    return copied


def _smoothable(model: nn.Module, name: str):
    """The focal modulation whose proj `name` is, where its input may be smoothed (no LayerNorm between
    the modulator and proj), else None."""
    from .video_focalnet import SpatioTemporalFocalModulation

    owner, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return None
    ok = leaf == "proj" and isinstance(module, SpatioTemporalFocalModulation) and not module.use_postln_in_modulation
    return module if ok else None


def _apply_smoothing(model: nn.Module, smoothing: dict) -> None:
    """x / s into the q rows of f (weight and bias), W * s into proj's columns: the same function."""
    for name, values in smoothing.items():
        module = _smoothable(model, name)
        if module is None:
            raise ValueError(f"int8 ranges: smoothing names {name!r}, which is no smoothable proj of this model")
        s = torch.tensor(values, dtype=torch.float32)
        if s.numel() != module.dim:
            raise ValueError(f"int8 ranges: smoothing of {name}: {s.numel()} factors for {module.dim} channels")
        with torch.no_grad():
            module.f.weight[: module.dim] /= s[:, None]
            if module.f.bias is not None:
                module.f.bias[: module.dim] /= s
            module.proj.weight *= s[None, :]


def _plan_inputs(model: VideoFocalNet, ranges: dict) -> tuple[dict, dict]:
    """(GEMM name -> (weights, biases, range), temporal context name -> (weights, ranges)) for every
    named range; a name that is no parameter of this model is an error naming it."""
    params = dict(model.named_parameters())

    def weights_of(name: str) -> list[torch.Tensor]:
        names = [n + ".weight" for n in name.split("+")]
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"int8 ranges: {name!r} names no weight of this model (no parameter {missing[0]})")
        return [params[n] for n in names]

    gemms = {name: (weights_of(name), [params.get(n + ".bias") for n in name.split("+")], tuple(r))
             for name, r in ranges["gemms"].items()}
    taps = {}
    for name, levels in ranges["temporal_taps"].items():
        weights = weights_of(name)
        if len(levels) != len(weights):
            raise ValueError(f"int8 ranges: {name!r}: {len(levels)} level ranges for {len(weights)} levels")
        taps[name] = (weights, [tuple(r) for r in levels])
    return gemms, taps


def _check_batch(index: int, batch) -> torch.Tensor:
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        batch = batch[0]  # (clips, labels) as a DataLoader yields them
    if not isinstance(batch, torch.Tensor) or batch.dim() != 5:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(f"calibration: batch {index}: expected clips (B, T, 3, H, W), got {shape}")
    if not batch.is_floating_point():
        raise ValueError(f"calibration: batch {index}: expected floating-point clips, got {batch.dtype}")
    if not torch.isfinite(batch).all():
        raise ValueError(f"calibration: batch {index}: holds NaN or inf")
    return batch.float()


def calibrate(model: VideoFocalNet, calibration: Iterable, clips: int | None = None) -> dict:
    """The input ranges of the model's GEMMs over the calibration clips (float forward, no gradient).

    Args:
        calibration: an iterable of clip batches (B, T, 3, H, W) (or (clips, labels) pairs).
        clips: stop after this many clips (None: all).
    Returns:
        {"gemms": GEMM name -> [low, high], "temporal_taps": temporal context name -> per level
        [low, high], "smoothing": proj name -> SmoothQuant factors (its range is the smoothed one)},
        what ``Int8Model`` takes; the same clips give the same ranges.
    """
    if clips is not None and (isinstance(clips, bool) or not isinstance(clips, int) or clips < 1):
        raise ValueError(f"clips: expected an integer >= 1 or None, got {clips!r}")
    if any(p.is_inference() for p in model.parameters()):
        model = _own_copy(model)  # made inside inference_mode: the engine (and so the recording) needs ordinary weights
    names = {id(p): n.removesuffix(".weight") for n, p in model.named_parameters()}
    smoothable = frozenset(name for name in names.values() if _smoothable(model, name) is not None)
    recorder = cpu_int8.Calibration(names, per_column=smoothable)
    backend, training = model.backend, model.training
    seen = 0
    try:
        model.eval()
        if backend == "reference":
            model.set_backend("auto")
        with torch.no_grad(), cpu_int8.running(recorder):
            for index, batch in enumerate(calibration):
                batch = _check_batch(index, batch)
                if clips is not None:
                    batch = batch[: clips - seen]
                model(batch)
                seen += batch.shape[0]
                if clips is not None and seen >= clips:
                    break
    finally:
        model.train(training)
        if backend == "reference":
            model.set_backend(backend)
    if seen == 0:
        raise ValueError("calibration: no clips (an empty iterable)")
    if not recorder.ranges:
        raise ValueError("calibration: the model ran no GEMM through dvfl's CPU engine (hooks on its linears, "
                         "or not on CPU); nothing to quantize")
    gemms, smoothing = dict(recorder.ranges), {}
    for name, (low, high) in recorder.channel_ranges.items():
        module = _smoothable(model, name)
        if module is None:
            continue
        s = cpu_int8.smoothing_factors(torch.maximum(low.abs(), high.abs()), module.proj.weight, SMOOTHING_ALPHA)
        smoothing[name] = s.tolist()
        gemms[name] = [(low / s).min().item(), (high / s).max().item()]  # the smoothed input's range
    return {"gemms": gemms, "temporal_taps": recorder.tap_ranges, "smoothing": smoothing}


def quantize_int8(model: VideoFocalNet, calibration: Iterable, clips: int | None = None,
                  float_parts=DEFAULT_FLOAT_PARTS, measured: bool = True) -> Int8Model:
    """An int8 copy of `model` for CPU inference, calibrated on `calibration`.

    Args:
        model: a dvfl VideoFocalNet (any variant), float32, on CPU; it is not changed.
        calibration: an iterable of clip batches (B, T, 3, H, W), normalised as the model's inputs
            (or (clips, labels) pairs, as a DataLoader yields); a few hundred clips at most.
        clips: use at most this many clips.
        float_parts: parts (``PARTS``) kept in float.
        measured: int8 only where measured faster per shape (``Int8Model``); False: always.
    Returns:
        ``Int8Model``: forward(clips) -> logits, as the float model's.
    """
    if not isinstance(model, VideoFocalNet):
        raise TypeError(f"model: expected a dvfl VideoFocalNet, got {type(model).__name__}")
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("model: expected float32 weights on CPU (call .float().cpu() first)")
    int8_parts = [p for p in PARTS if p not in set(float_parts)]
    select_parts({"gemms": {}, "temporal_taps": {}}, float_parts)  # names checked before the calibration runs
    return Int8Model(model, select_parts(calibrate(model, calibration, clips), int8_parts), measured)
