"""The run configuration's schema: one frozen dataclass per section, each setting declared once.

A setting is one line: its type (the annotation), its default, its range or choices, and a line of
doc (``setting(...)``). Relations between settings are methods of the section that owns them
(``check``). The loader (config.py) reads YAML and ``--opts`` into the nested dict of
``RunConfig().to_dict()``, coercing each value by its annotation; ``RunConfig.from_dict`` turns that
dict into the frozen config a run reads as attributes, and ``check`` refuses a run that cannot work
before any work starts. The YAML keys are the field names.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


def setting(default, doc: str, *, low=None, high=None, low_open: bool = False, high_open: bool = False,
            choices: tuple | None = None):
    """A config field: its default, a one-line doc, and the range ([low, high], open where said) or the
    choices its values must fall in (checked by ``check_range`` / the section's ``check``)."""
    metadata = {"doc": doc, "low": low, "high": high, "low_open": low_open, "high_open": high_open, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


def shown(value, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a 200 KB value must not make a 200 KB message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def check_range(name: str, value, low=None, high=None, low_open=False, high_open=False) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # NaN compares false with every bound
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}{')' if high_open else ']'}"
        raise ConfigError(f"{name}: expected a value in {interval}, got {value!r}")


class Section:
    """What every section does: its fields' own ranges and choices, checked in declaration order."""

    def check_fields(self, prefix: str) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{prefix}.{f.name}: expected one of {', '.join(meta['choices'])}, got {value!r}")
            if meta.get("low") is not None or meta.get("high") is not None:
                check_range(f"{prefix}.{f.name}", value, meta["low"], meta["high"], meta["low_open"], meta["high_open"])


@dataclass(frozen=True)
class DataConfig(Section):
    root: str = setting("", "the folder the CSVs' video paths are relative to")
    train_csv: str = setting("", "the training list: 'path,label' lines")
    val_csv: str = setting("", "the validation list")
    labels_csv: str | None = setting(None, "'id,name' lines; names the classes in the per-class report")
    num_classes: int | None = setting(None, "classes of the dataset (required)")
    num_frames: int = setting(8, "frames per clip", low=1)
    frame_interval: int = setting(4, "frames between two sampled ones", low=1)
    size: int = setting(224, "the crop side the model sees", low=1)
    short_side: int = setting(256, "training: the short side resized to, then a random resized crop", low=1)
    crop_area: tuple[float, float] = setting((0.08, 1.0), "random resized crop: the fraction of the frame's area")
    test_short_side: int = setting(224, "test views: the short side resized to, then centre / three crops", low=1)
    flip: float = setting(0.5, "horizontal flip probability (0 for SSv2: left / right is part of the class)",
                          low=0.0, high=1.0)
    bad_video: str = setting("fail", "a video that does not decode: fail, or skip it (train only: warn, count)",
                             choices=("fail", "skip"))
    num_workers: int = setting(4, "data-loader processes", low=0)
    decoded_cache_mb: int = setting(0, "decode each video once and keep its frames, up to this many MiB per dataset "
                                       "(0: off; needs num_workers 0)", low=0)

    def check(self) -> None:
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 1:
            raise ConfigError(f"data.num_classes: expected a positive integer, got {self.num_classes!r}")
        self.check_fields("data")
        if self.decoded_cache_mb and self.num_workers:
            raise ConfigError(f"data.decoded_cache_mb: {self.decoded_cache_mb} needs data.num_workers 0 (the cache lives "
                              f"in the process that decodes; loader workers, {self.num_workers} here, would rebuild it "
                              "every epoch)")
        low, high = self.crop_area
        if not 0.0 < low <= high <= 1.0:
            raise ConfigError(f"data.crop_area: expected [a, b] with 0 < a <= b <= 1, got {list(self.crop_area)}")
        if self.test_short_side < self.size:
            raise ConfigError(f"data.test_short_side: expected at least data.size ({self.size}: the test crops are "
                              f"{self.size}x{self.size} cut from frames of that short side), got {self.test_short_side}")
        if self.labels_csv:
            from ..data.dataset import read_class_names

            names = read_class_names(self.labels_csv)
            if len(names) != self.num_classes:
                raise ConfigError(f"data.labels_csv: {self.labels_csv} names {len(names)} classes, "
                                  f"data.num_classes is {self.num_classes}")


@dataclass(frozen=True)
class ModelConfig(Section):
    name: str = setting("vfl_net_nano", "the variant (dvflnet.models.list_models())")
    drop_path_rate: float | None = setting(None, "stochastic depth (None: the variant's default)", low=0.0, high=1.0,
                                           high_open=True)
    pretrained: str | None = setting(None, "a video checkpoint, or a 2D FocalNet one seeding the spatial parts")
    backend: str = setting("auto", "the dvfl_kernels backend of the focal modulation")
    compile: bool = setting(False, "torch.compile the training forward")
    kwargs: dict[str, Any] = setting({}, "any other VideoFocalNet argument (embed_dim, depths, focal_levels, ...)")

    def check(self, section: str = "model") -> None:
        from dvfl_kernels import available_backends

        self.check_fields(section)
        _check_variant(section, self.name)
        available = available_backends("spatial_context")
        if self.backend not in ("auto", "reference", *available):
            raise ConfigError(f"model.backend: expected auto, reference or an available backend "
                              f"({', '.join(available)}), got {self.backend!r}")


@dataclass(frozen=True)
class TeacherConfig(Section):
    name: str | None = setting(None, "distillation: the teacher's variant (loaded whole, head included; frozen)")
    checkpoint: str | None = setting(None, "distillation: the trained teacher's checkpoint")
    kwargs: dict[str, Any] = setting({}, "the teacher's other VideoFocalNet arguments")


@dataclass(frozen=True)
class KdConfig(Section):
    alpha: float = setting(0.3, "the KD term's weight (1 - alpha: cross-entropy)", low=0.0, high=1.0)
    temperature: float = setting(10.0, "the distillation temperature")
    teacher_cache: str | None = setting(None, "a folder of teacher logits (dvflnet cache-teacher), read instead of "
                                              "running the teacher")
    cache_topk: int | None = setting(None, "the cache keeps the top k logits and one folded bucket (None: all, fp16)",
                                     low=1)

    def check(self) -> None:
        from dvfl_kernels import MAX_KD_TEMPERATURE

        self.check_fields("kd")
        check_range("kd.temperature", self.temperature, 0.0, MAX_KD_TEMPERATURE, low_open=True)


@dataclass(frozen=True)
class TrainConfig(Section):
    epochs: int = setting(120, "training epochs", low=1)
    warmup_epochs: int = setting(20, "linear warm-up epochs (at most epochs)", low=0)
    batch_size: int = setting(8, "clips per process per micro-batch", low=1)
    accumulation: int = setting(1, "micro-batches per optimizer step", low=1)
    base_lr: float = setting(0.1, "the learning rate at reference_batch clips per step (scaled linearly)", low=0,
                             low_open=True)
    warmup_lr: float = setting(1e-3, "the warm-up's first learning rate (scaled likewise)", low=0)
    min_lr: float = setting(1e-3, "the cosine schedule's last learning rate (scaled likewise)", low=0)
    reference_batch: int = setting(512, "the global batch base_lr is given for", low=1)
    optimizer: str = setting("sgd", "sgd (the recipe), or adamw for short runs from a random start",
                             choices=("sgd", "adamw"))
    weight_decay: float = setting(1e-4, "weight decay", low=0)
    # "nothing": no parameter decays, what the public training code effectively does (its optimizer builder
    # exempts every name, see VideoFocalNet.no_weight_decay) and so what the paper's numbers were trained
    # with; "weights": the recipe as written, on every weight with >= 2 dims (biases, norms, gammas exempt).
    weight_decay_on: str = setting("nothing", "which parameters decay: nothing (the public code) or weights",
                                   choices=("nothing", "weights"))
    momentum: float = setting(0.9, "SGD momentum", low=0.0, high=1.0, high_open=True)
    clip_grad: float = setting(5.0, "gradient norm clip", low=0.0, low_open=True)
    max_nonfinite_steps: int = setting(5, "consecutive non-finite steps skipped (and logged) before the run stops",
                                       low=0)
    label_smoothing: float = setting(0.1, "label smoothing", low=0.0, high=1.0, high_open=True)
    mixup: bool = setting(True, "mixup / cutmix")
    mixup_start_epoch: int = setting(0, "with mixup: the (0-based) epoch it starts at; whole clips before", low=0)
    cutmix_prob: float = setting(0.5, "cutmix instead of mixup, per micro-batch", low=0.0, high=1.0)
    mixup_alpha: float = setting(0.8, "mixup's Beta(alpha, alpha)", low=0.0, low_open=True)
    cutmix_alpha: float = setting(1.0, "cutmix's Beta(alpha, alpha)", low=0.0, low_open=True)
    amp: str = setting("auto", "mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16, off",
                       choices=("auto", "bf16", "fp16", "off"))
    eval_every: int = setting(1, "epochs between evaluations; 0: none while training", low=0)
    eval_views: tuple[int, int] = setting((1, 1), "clips x crops of the evaluation while training")
    keep_last: int = setting(3, "checkpoints kept", low=1)
    save_every_epochs: int = setting(1, "checkpoint every Nth epoch end (and the last and every evaluated one)",
                                     low=1)
    save_every_steps: int = setting(0, "also checkpoint every N optimizer steps (0: at epoch ends only)", low=0)
    log_every: int = setting(10, "optimizer steps between log lines", low=1)
    progress: bool = setting(True, "a progress bar (a plain line per log step when not a terminal)")
    tensorboard: bool = setting(False, 'also log the scalars to <output>/tensorboard (pip install "dvfl[tensorboard]")')

    def check(self) -> None:
        if self.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise ConfigError('train.tensorboard: true needs the tensorboard package: pip install "dvfl[tensorboard]" '
                                  "(it pulls no torch)")
        self.check_fields("train")
        check_range("train.warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_range("train.mixup_start_epoch", self.mixup_start_epoch, 0, self.epochs - 1)
        check_views("train.eval_views", self.eval_views)


@dataclass(frozen=True)
class EvalConfig(Section):
    views: tuple[tuple[int, int], ...] = setting(((1, 1), (4, 3)), "the test views: [clips, crops] pairs")
    batch_size: int = setting(4, "clips per evaluation batch", low=1)
    checkpoint: str | None = setting(None, "what `evaluate` scores (default: output/best.pt)")

    def check(self) -> None:
        for i, views in enumerate(self.views):
            check_views(f"eval.views[{i}]", views)
        self.check_fields("eval")


def check_views(name: str, views) -> None:
    if views[0] < 1 or views[1] not in (1, 3):
        raise ConfigError(f"{name}: expected [clips >= 1, crops 1 or 3], got {list(views)}")


def _check_variant(key: str, name: str) -> None:
    from ..models.registry import resolve_name

    try:
        resolve_name(name)
    except ValueError as err:
        raise ConfigError(f"{key}.name: {err}") from None


# VideoFocalNet arguments that other keys set (so model.kwargs must not)
KWARGS_SET_ELSEWHERE = {"num_classes": "data.num_classes", "num_frames": "data.num_frames", "img_size": "data.size",
                        "backend": "model.backend", "drop_path_rate": "model.drop_path_rate", "norm_layer": None}
# Settings holding file paths: saved absolute with a run (predict / evaluate from another folder find them)
PATH_SETTINGS = (("data", "root"), ("data", "train_csv"), ("data", "val_csv"), ("data", "labels_csv"),
                 ("model", "pretrained"), ("teacher", "checkpoint"), ("kd", "teacher_cache"))


@dataclass(frozen=True)
class RunConfig(Section):
    seed: int = setting(0, "the run's seed", low=0)
    output: str = setting("runs/default", "the run's folder")
    device: str | None = setting(None, "cuda, cpu, cuda:N, or None: CUDA when available")
    resume: str | None = setting("auto", "auto: the newest checkpoint in output if any; a path; or null (fresh start)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    kd: KdConfig = field(default_factory=KdConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # the CPU engine's measured choices a run used (dvfl_kernels.runtime): a run writes them into its
    # config.json, and a run given that file makes the same choices instead of measuring
    verdicts: dict[str, str] = setting({}, "the CPU engine's choices a run used (written into its config.json)")

    @classmethod
    def from_dict(cls, cfg: dict) -> RunConfig:
        """The frozen config of a nested dict (the loader's, or DEFAULTS changed in code); lists become
        tuples. Unknown keys are errors naming them."""
        return _build(cls, cfg, "")

    def to_dict(self) -> dict:
        """Plain data (lists, dicts), as config.json and checkpoints store it."""
        return plain_data(dataclasses.asdict(self))

    @functools.cached_property
    def torch_device(self):
        """`device` parsed and checked against this machine (config.parse_device), once per config:
        a torch.device, or None (CUDA when available). ConfigError where this machine lacks it."""
        from .config import parse_device

        return parse_device(self.device)

    def updated(self, **changes) -> RunConfig:
        """A copy with `changes`: a top-level setting by name (``output="runs/x"``), a section's settings
        as a mapping (``eval={"checkpoint": path}``; the others keep their values)."""
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), **value) if name in SECTIONS
                                            else value for name, value in changes.items()})

    def with_absolute_paths(self) -> RunConfig:
        """The config as saved with the run: its file paths absolute."""
        sections = {}
        for section, key in PATH_SETTINGS:
            value = getattr(getattr(self, section), key)
            if value:
                sections.setdefault(section, {})[key] = os.path.abspath(value)
        return self.updated(**sections)

    def check(self, distill: bool = False) -> None:
        """Everything a run needs before any work starts (types were checked when the config was read).
        A value's checks do not depend on the command: a train run's kd section is checked as distill's."""

        if not isinstance(self.output, str) or not self.output:
            raise ConfigError(f"output: expected a folder path, got {shown(self.output)}")
        if os.path.exists(self.output) and not os.path.isdir(self.output):
            raise ConfigError(f"output: {self.output} is a file; expected a folder for the run")
        check_range("seed", self.seed, 0)
        self.train.check()
        self.data.check()
        self.eval.check()
        self.model.check()
        if distill and self.teacher.name:
            _check_variant("teacher", self.teacher.name)
        self._check_models(distill)
        _ = self.torch_device  # a device this machine lacks stops the run here, before any work
        self.kd.check()
        if distill and not (self.teacher.name and self.teacher.checkpoint):
            raise ConfigError("teacher.name and teacher.checkpoint: distillation needs both (the trained teacher)")

    def _check_models(self, distill: bool) -> None:
        """The model's own arguments (the checks of the Python API, VideoFocalNet) and the frame size
        against its stride, for the student and (distilling) the teacher."""
        from ..models.registry import MODEL_CONFIGS, resolve_name
        from ..models.video_focalnet import VideoFocalNet, check_model_args

        runs = [("model", self.model.name, self.model.kwargs, self.model.drop_path_rate)]
        if distill and self.teacher.name:
            runs.append(("teacher", self.teacher.name, self.teacher.kwargs, None))
        defaults = {name: p.default for name, p in inspect.signature(VideoFocalNet).parameters.items()}
        for section, name, kwargs, drop_path in runs:
            args = {**defaults, **MODEL_CONFIGS[resolve_name(name)], **kwargs, "num_classes": self.data.num_classes,
                    "num_frames": self.data.num_frames}
            if drop_path is not None:
                args["drop_path_rate"] = drop_path
            try:
                check_model_args(**{k: args[k] for k in inspect.signature(check_model_args).parameters})
            except ValueError as err:
                raise ConfigError(f"{section}: {err} (from {section}.name {name!r}, {section}.kwargs and data)") from None
            stride = args["patch_size"] * 2 ** (len(args["depths"]) - 1)
            if self.data.size % stride:
                raise ConfigError(f"data.size: expected a multiple of {stride} ({section} {name}: patch_size "
                                  f"{args['patch_size']} x 2^{len(args['depths']) - 1} patch merges), got {self.data.size}")


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'}: expected a mapping, got {shown(values)}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {prefix + unknown[0]!r} (known here: {', '.join(sorted(known))})")
    built = {}
    for name, value in values.items():
        section = SECTIONS.get(prefix + name)
        if section is not None:
            built[name] = _build(section, value, f"{prefix}{name}.")
        else:
            built[name] = _frozen(value)
    return cls(**built)


def _frozen(value):
    """Lists as tuples (pairs, lists of pairs); mappings and scalars as they are."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def plain_data(value):
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    return value


# dotted name -> the section class it holds ("data" -> DataConfig)
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(RunConfig)
                             if isinstance(f.default_factory, type) and issubclass(f.default_factory, Section)}
