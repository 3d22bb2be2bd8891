"""Scoring videos with a trained model: the Python API under ``dvflnet predict``.

    from dvflnet.tools.predict import Predictor
    predictor = Predictor.from_checkpoint("runs/ucf101_nano_kd/best.pt")   # its saved config says the rest
    result = predictor.predict("clip.mp4")                                 # {"path", "top5": [...], ...}
    timeline = predictor.predict("long.mp4", window_seconds=4, stride_seconds=2)["windows"]

A video is scored like evaluation scores it (``VideoCSVDataset`` in test mode: the same frame
sampling, resizing, crops and normalisation): the softmax of every view (clips x crops) is averaged.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass

import torch

from .. import interrupt
from ..data import AnnotationError, VideoReadError, read_class_names
from ..data.dataset import csv_rows, test_views
from ..data.video import VIDEO_EXTENSIONS, video_info, walk_videos
from ..engine.config import DEFAULTS, ConfigError, load_config, merge_config
from ..engine.evaluation import NonFiniteOutputError
from ..models import Int8Model, create_model, load_checkpoint, read_checkpoint
from ..models.registry import resolve_name
from ..models.weights import extract_state_dict

# Errors that belong to one video: reported in its result, and the other videos are still scored.
_PER_VIDEO_ERRORS = (VideoReadError, OSError, ValueError)
# A timeline of more windows than this (a forward each) is warned about and shows its progress.
MANY_WINDOWS = 100


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has a bf16 path here (AVX512-BF16 / AMX); without one bf16 is emulated, slower."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device, model: torch.nn.Module | None = None,
                      clip_shape: tuple[int, ...] | None = None) -> tuple[str, str]:
    """("bf16" | "fp32", why) for precision "auto" | "bf16" | "fp32" on `device`. On a CPU with a
    bf16 path, "auto" times `model` on a random batch of `clip_shape` both ways (once per machine,
    model and shape: the probe cache) and takes the faster: a bf16 instruction set does not make bf16
    faster everywhere (without AMX, on an Intel Xeon the nano's bf16 clip took 1.3x its fp32 time)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision: expected auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision, "as asked"
    if device.type == "cuda":
        return ("bf16", "CUDA with bf16") if torch.cuda.is_bf16_supported() else ("fp32", "this GPU has no bf16")
    if not cpu_has_native_bf16():
        return "fp32", "this CPU has no bf16 path (bf16 would be emulated, slower)"
    if model is None or clip_shape is None:
        return "bf16", "this CPU has a bf16 path (not measured: no model given)"
    from dvfl_kernels import _probe

    clip = torch.randn(clip_shape, generator=torch.Generator().manual_seed(0))

    def forward(bf16: bool):
        def call() -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(clip)
        return call

    key = ("predict precision", type(model).__name__, sum(p.numel() for p in model.parameters()), tuple(clip_shape),
           torch.get_num_threads())
    chosen = _probe.fastest(key, {"fp32": forward(False), "bf16": forward(True)})
    other = "fp32" if chosen == "bf16" else "bf16"
    return chosen, f"measured faster than {other} on this CPU for this model and clip shape"


def _checkpoint_run_config(checkpoint_config: dict | None, config: str | None, source: str) -> dict:
    """The run config: --config, else the one the trainer saved in the checkpoint, else DEFAULTS."""
    if config:
        return load_config(config)
    cfg = copy.deepcopy(DEFAULTS)
    if isinstance(checkpoint_config, dict) and {"model", "data"} <= set(checkpoint_config):
        saved = {k: checkpoint_config[k] for k in ("model", "data") if k in checkpoint_config}
        merge_config(cfg, saved, f"{source} (its saved config)")
    return cfg


def model_from_checkpoint(checkpoint: str, config: str | None = None, model: str | None = None,
                          num_classes: int | None = None, classes: str | None = None,
                          **model_kwargs) -> tuple[torch.nn.Module, dict, list[str] | None]:
    """(model with the weights, the run's data settings, class names or None) from a checkpoint as the
    trainer writes it (its saved config gives the model and data settings) or a raw state dict (then
    `model` names the variant and the class count comes from its head). An int8 checkpoint
    (``dvflnet quantize``) gives an ``Int8Model``. config: a run YAML used
    instead of the saved config; classes: a labels CSV (`<id>,<name>`); model_kwargs override."""
    obj = read_checkpoint(checkpoint)
    state, saved = extract_state_dict(obj)
    cfg = _checkpoint_run_config(saved, config, checkpoint)
    if model:
        if (config or isinstance(saved, dict) and "model" in saved) and resolve_name(model) != resolve_name(cfg["model"]["name"]):
            source = config or f"{checkpoint} (its saved config)"
            raise ConfigError(f"--model {model}: {source} is a {cfg['model']['name']}; drop --model, or give a "
                              f"checkpoint of {model}")
        cfg["model"]["name"] = model
    head = state.get("head.weight")
    found = head.shape[0] if head is not None else None
    names = read_class_names(classes) if classes else None
    for given in (num_classes, len(names) if names else None, cfg["data"]["num_classes"]):
        if given is not None and found is not None and given != found:
            raise ConfigError(f"{checkpoint}: its head has {found} classes, but {given} were given")
    num_classes = num_classes or found or cfg["data"]["num_classes"]
    if not num_classes:
        raise ConfigError(f"{checkpoint}: it has no head; give the class count (--num-classes or --classes)")
    data = cfg["data"]
    kwargs = {**cfg["model"]["kwargs"], **model_kwargs}
    kwargs.setdefault("backend", cfg["model"]["backend"])
    net = create_model(cfg["model"]["name"], num_classes=num_classes, num_frames=data["num_frames"],
                       img_size=data["size"], **kwargs)
    load_checkpoint(net, obj, strict=True, source=checkpoint)
    if isinstance(obj, dict) and "int8" in obj:  # written by `dvflnet quantize`
        net = Int8Model.from_state(net.eval(), obj["int8"], source=checkpoint)
    if names is None and data["labels_csv"]:
        try:
            names = read_class_names(data["labels_csv"])
        except (OSError, ValueError) as err:  # the run's labels file is not here: say so, show numbers
            warnings.warn(f"class names not loaded ({err}); classes are shown as numbers (--classes names them)", stacklevel=2)
    return net.eval(), data, names


@dataclass
class Predictor:
    """Scores videos with `model` (eval mode) over test views of `num_frames` frames."""

    model: torch.nn.Module
    class_names: list[str] | None = None
    num_frames: int = 8
    frame_interval: int = 4
    size: int = 224
    short_side: int = 224
    views: tuple[int, int] = (1, 1)  # clips x crops
    device: str | torch.device = "cpu"  # or "default": cuda where there is one, except for an int8 model
    precision: str = "auto"

    def __post_init__(self):
        if self.device == "default":  # int8 models run on CPU; any other on the GPU where there is one
            self.device = "cuda" if torch.cuda.is_available() and not isinstance(self.model, Int8Model) else "cpu"
        self.device = torch.device(self.device)
        self.model = self.model.eval().to(self.device)
        clips, crops = self.views
        if clips < 1 or crops not in (1, 3):
            raise ValueError(f"views: expected N clips x 1 or 3 crops (N >= 1), got {clips}x{crops}")
        self.precision, self.precision_reason = resolve_precision(
            self.precision, self.device, self.model, (clips * crops, self.num_frames, 3, self.size, self.size))
        num_classes = self.model.num_classes
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ValueError(f"class names: {len(self.class_names)} given for a model with {num_classes} classes")

    @classmethod
    def from_checkpoint(cls, checkpoint: str, config: str | None = None, model: str | None = None,
                        num_classes: int | None = None, classes: str | None = None, **kwargs) -> "Predictor":
        """See model_from_checkpoint; kwargs: views, device, precision."""
        net, data, names = model_from_checkpoint(checkpoint, config, model, num_classes, classes)
        return cls(net, names, data["num_frames"], data["frame_interval"], data["size"], data["test_short_side"], **kwargs)

    def name_of(self, label: int) -> str:
        return self.class_names[label] if self.class_names else str(label)

    @torch.inference_mode()
    def scores(self, path: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Class probabilities (K,) of the video (or of its frames [start, stop)), averaged over the views."""
        clips, crops = self.views
        views = test_views(path, self.num_frames, self.frame_interval, clips, crops, self.size, self.short_side, start, stop)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with autocast:
            logits = self.model(views.to(self.device))
        if not torch.isfinite(logits).all():
            raise NonFiniteOutputError(f"{path}: the model's outputs are not finite (NaN or inf); not scored (broken weights?)")
        return logits.float().softmax(-1).mean(0).cpu()

    def _top(self, probs: torch.Tensor, k: int) -> list[dict]:
        values, labels = probs.topk(min(k, probs.numel()))
        return [{"label": int(i), "name": self.name_of(int(i)), "prob": float(p)} for p, i in zip(values, labels)]

    def predict(self, path: str, top: int = 5, window_seconds: float | None = None,
                stride_seconds: float | None = None) -> dict:
        """{"path", "top5": [{"label", "name", "prob"}] (the `top` best), "views"} for the whole video, and
        with window_seconds a "windows" timeline: top-1 per window of that length, every stride_seconds
        (default: the window), the last window ending at the video's end."""
        path = os.fspath(path)
        if os.path.isdir(path):
            raise VideoReadError(path, f"a folder with no video files ({', '.join(VIDEO_EXTENSIONS)}) in it")
        result = {"path": path, "top5": self._top(self.scores(path), top), "views": f"{self.views[0]}x{self.views[1]}"}
        if window_seconds:
            result["windows"] = self.timeline(path, window_seconds, stride_seconds or window_seconds)
        return result

    def timeline(self, path: str, window_seconds: float, stride_seconds: float) -> list[dict]:
        """Top-1 per window (one forward of the views each); a window or stride under one frame of this
        video is an error, and more than MANY_WINDOWS windows get a warning and a progress bar."""
        for flag, value in (("--window-seconds", window_seconds), ("--stride-seconds", stride_seconds)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{flag}: expected a positive, finite number of seconds, got {value}")
        length, fps = video_info(path)
        for flag, value in (("--window-seconds", window_seconds), ("--stride-seconds", stride_seconds)):
            if value * fps < 1:
                raise ValueError(f"{flag}: {value} s is shorter than one frame of this video ({fps:g} frames/s)")
        window, stride = max(1, round(min(window_seconds * fps, length))), max(1, round(min(stride_seconds * fps, length)))
        starts = list(range(0, max(length - window, 0) + 1, stride))
        if starts[-1] + window < length:  # cover the tail
            starts.append(length - window)
        if len(starts) > MANY_WINDOWS:
            warnings.warn(f"{path}: {len(starts)} windows of {window_seconds:g} s every {stride_seconds:g} s, one forward "
                          f"each; a longer --stride-seconds gives fewer", stacklevel=2)
        out = []
        from tqdm import tqdm

        for start in tqdm(starts, desc=os.path.basename(path), unit="window", leave=False,
                          disable=len(starts) <= MANY_WINDOWS):
            stop = min(start + window, length)
            best = self._top(self.scores(path, start, stop), 1)[0]
            out.append({"start": start / fps, "end": stop / fps, **best})
        return out

    def predict_many(self, paths: list[str], into: list | None = None, **kwargs) -> list[dict]:
        """predict() per path; a video that cannot be scored gives {"path", "error"} and the rest go on.
        Results are appended to `into` (a new list by default) as they come, so an interrupted call
        leaves the finished ones there."""
        results = [] if into is None else into
        for path in paths:
            interrupt.check()
            try:
                results.append(self.predict(path, **kwargs))
            except _PER_VIDEO_ERRORS as err:
                results.append({"path": os.fspath(path), "error": str(err)})
        return results


def expand_inputs(inputs: list[str], root: str | None = None) -> list[str]:
    """Video files from files, folders (their video files, recursively, sorted) and CSVs (first column:
    a video path, relative to `root` or else to the CSV's folder; other columns ignored)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(d, f) for d, files in walk_videos(item) for f in files)
            paths += found or [item]  # an empty folder is reported in its own result, the others go on
        elif item.lower().endswith(".csv"):
            if not os.path.isfile(item):
                paths.append(item)  # reported in its result ("no such file")
                continue
            base = root if root is not None else os.path.dirname(os.path.abspath(item))
            rows = [fields for number, fields in csv_rows(item)]
            if rows and rows[0][0].lower() in ("path", "video"):
                rows = rows[1:]
            if not rows:
                raise AnnotationError(f"{item}: no videos listed")
            paths += [os.path.join(base, fields[0]) for fields in rows]
        else:
            paths.append(item)  # a file; a missing one is reported in its result
    return paths


def format_table(results: list[dict], top: int = 5) -> str:
    lines = []
    for result in results:
        if "error" in result:
            error = result["error"]  # messages about a file start with its path
            lines.append(error if error.startswith(result["path"]) else f"{result['path']}: {error}")
            continue
        lines.append(f"{result['path']}  ({result['views']} views)")
        for rank, entry in enumerate(result["top5"][:top], start=1):
            lines.append(f"  {rank}. {entry['name']:<30} {entry['prob'] * 100:6.2f}%  (label {entry['label']})")
        for window in result.get("windows", []):
            lines.append(f"    {window['start']:8.2f}-{window['end']:8.2f} s  {window['name']:<30} {window['prob'] * 100:6.2f}%")
    return "\n".join(lines)
