"""Run configuration as data: nested dicts from YAML, merged over DEFAULTS, overridden from the CLI.

A YAML file may name parent files under ``_base_`` (paths relative to it); parents are merged first,
then the file itself, then ``--opts KEY VALUE ...`` (dotted keys, values parsed as YAML). Unknown keys
are errors that name the key and the file, so a typo never silently trains with a default.
"""
from __future__ import annotations

import copy
import os

import yaml

DEFAULTS: dict = {
    "seed": 0,
    "output": "runs/default",
    "device": None,  # "cuda", "cpu", or None: CUDA when available
    "resume": "auto",  # "auto": the newest checkpoint in `output` if any; a path; or null (fresh start)
    "data": {
        "root": "",
        "train_csv": "",
        "val_csv": "",
        "labels_csv": None,  # "id,name" lines; names the classes in the per-class report
        "num_classes": None,
        "num_frames": 8,
        "frame_interval": 4,
        "size": 224,
        "short_side": 256,  # training: resize the short side, then random resized crop
        "crop_area": [0.08, 1.0],  # random resized crop: fraction of the frame's area
        "test_short_side": 224,  # test views: resize the short side, then centre / three crops
        "flip": 0.5,  # 0 for SSv2 (left/right is part of the class)
        "bad_video": "fail",  # or "skip" (train only): warn, count, and take the next video
        "num_workers": 4,
    },
    "model": {
        "name": "vfl_net_nano",
        "drop_path_rate": None,  # None: the variant's default
        "pretrained": None,  # a video checkpoint, or a 2D FocalNet one seeding the spatial parts
        "backend": "auto",
        "compile": False,  # torch.compile the training forward
        "kwargs": {},  # any other VideoFocalNet argument (embed_dim, depths, focal_levels, ...)
    },
    "teacher": {  # distillation only: loaded whole (head included), frozen, eval mode
        "name": None,
        "checkpoint": None,
        "kwargs": {},
    },
    "kd": {"alpha": 0.3, "temperature": 10.0},
    "train": {
        "epochs": 120,
        "warmup_epochs": 20,
        "batch_size": 8,  # clips per process per micro-batch
        "accumulation": 1,  # micro-batches per optimizer step
        "base_lr": 0.1,  # x global batch / reference_batch
        "warmup_lr": 1e-3,
        "min_lr": 1e-3,
        "reference_batch": 512,
        "optimizer": "sgd",  # the recipe; "adamw" for short runs from a random start
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "clip_grad": 5.0,
        "label_smoothing": 0.1,
        "mixup": True,
        "cutmix_prob": 0.5,
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "amp": "auto",  # "auto" (bf16 on CUDA, off on CPU), "bf16", "fp16", "off"
        "eval_every": 1,  # epochs; 0: no evaluation while training
        "eval_views": [1, 1],  # clips x crops while training
        "keep_last": 3,
        "save_every_steps": 0,  # also checkpoint every N optimizer steps (0: at epoch ends only)
        "log_every": 10,
        "progress": True,
    },
    "eval": {"views": [[1, 1], [4, 3]], "batch_size": 4, "checkpoint": None},
}


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


def merge_config(base: dict, update: dict, where: str, prefix: str = "") -> dict:
    for key, value in update.items():
        name = prefix + key
        if key not in base:
            raise ConfigError(f"{where}: unknown key {name!r} (known here: {', '.join(sorted(base))})")
        # free-form mappings (model / teacher kwargs) take any keys
        if isinstance(base[key], dict) and isinstance(value, dict) and key != "kwargs":
            merge_config(base[key], value, where, name + ".")
        else:
            base[key] = copy.deepcopy(value)
    return base


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """[(file, mapping)] with the _base_ parents first."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _base_ includes form a cycle: {' -> '.join(seen + (path,))}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config: no such file: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    layers = []
    for base in [bases] if isinstance(bases, str) else bases:
        layers += _read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,))
    return layers + [(path, data)]


def set_by_path(cfg: dict, dotted: str, value, where: str = "--opts") -> None:
    keys = dotted.split(".")
    node = cfg
    for depth, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"{where}: unknown key {'.'.join(keys[: depth + 1])!r}")
        node = node[key]
    if keys[-1] not in node and not (len(keys) >= 2 and keys[-2] == "kwargs"):
        raise ConfigError(f"{where}: unknown key {dotted!r} (known here: {', '.join(sorted(node))})")
    node[keys[-1]] = value


def load_config(path: str | None = None, opts: list[str] | None = None) -> dict:
    """DEFAULTS <- YAML file (and its _base_ parents) <- opts (KEY VALUE pairs)."""
    cfg = copy.deepcopy(DEFAULTS)
    for where, data in _read_yaml(path) if path else []:
        merge_config(cfg, data, where)
    for key, value in parse_opts(opts):
        set_by_path(cfg, key, value)
    return cfg


def parse_opts(opts: list[str] | None) -> list[tuple[str, object]]:
    """["train.epochs", "30", ...] -> [("train.epochs", 30), ...] (values parsed as YAML)."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"--opts: expected KEY VALUE pairs, got an odd count: {opts}")
    return [(key, yaml.safe_load(text)) for key, text in zip(opts[::2], opts[1::2])]


def check_config(cfg: dict, distill: bool = False) -> None:
    """The checks a run needs before any work starts."""
    data, train = cfg["data"], cfg["train"]
    if not isinstance(data["num_classes"], int) or data["num_classes"] < 1:
        raise ConfigError(f"data.num_classes: expected a positive integer, got {data['num_classes']!r}")
    for key in ("batch_size", "accumulation", "epochs", "num_frames"):
        section = data if key == "num_frames" else train
        if not isinstance(section[key], int) or section[key] < 1:
            raise ConfigError(f"{'data' if section is data else 'train'}.{key}: expected an integer >= 1, got {section[key]!r}")
    if not 0 <= train["warmup_epochs"] <= train["epochs"]:
        raise ConfigError(f"train.warmup_epochs: expected 0..epochs ({train['epochs']}), got {train['warmup_epochs']}")
    if train["optimizer"] not in ("sgd", "adamw"):
        raise ConfigError(f"train.optimizer: expected sgd or adamw, got {train['optimizer']!r}")
    if train["amp"] not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp: expected auto, bf16, fp16 or off, got {train['amp']!r}")
    if distill and not (cfg["teacher"]["name"] and cfg["teacher"]["checkpoint"]):
        raise ConfigError("teacher.name and teacher.checkpoint: distillation needs both (the trained teacher)")
    if distill and not 0.0 <= cfg["kd"]["alpha"] <= 1.0:
        raise ConfigError(f"kd.alpha: expected a value in [0, 1], got {cfg['kd']['alpha']}")
