"""Run configuration as data: nested dicts from YAML, merged over DEFAULTS, overridden from the CLI.

A YAML file may name parent files under ``_base_`` (paths relative to it); parents are merged first,
then the file itself, then ``--opts KEY VALUE ...`` (dotted keys, values parsed as YAML). Unknown keys
are errors that name the key and the file, so a typo never silently trains with a default. Every value
is checked and coerced by the type of its default (or by KINDS), so ``base_lr: 3e-4`` (a string to
PyYAML's YAML 1.1) is the number it looks like, and ``epochs: ten`` is an error naming the key.
"""
from __future__ import annotations

import copy
import inspect
import math
import os

import torch
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
        # decode each video once and keep its frames in memory, up to this many MiB per dataset (0: off;
        # with num_workers 0 only: the cache lives in the process that decodes)
        "decoded_cache_mb": 0,
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
    "kd": {
        "alpha": 0.3,
        "temperature": 10.0,
        # a folder of teacher logits (dvflnet cache-teacher builds it): read instead of running the teacher
        "teacher_cache": None,
        # None: the cache stores every logit (fp16). k: with more than k classes, the top k and one folded
        # bucket (smaller; the KD gradient is off by ~2% at T = 1 but ~45% at T = 10: README, teacher cache)
        "cache_topk": None,
    },
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
        # "nothing": no parameter decays, what the public training code effectively does (its
        # optimizer builder exempts every name, see VideoFocalNet.no_weight_decay) and so what the
        # paper's numbers were trained with; "weights": the recipe as written, weight_decay on every
        # weight with >= 2 dims (biases, norms and layerscale gammas exempt).
        "weight_decay_on": "nothing",
        "momentum": 0.9,
        "clip_grad": 5.0,
        # consecutive optimizer steps with a non-finite loss or gradient that are skipped (and logged)
        # before the run stops; 0 stops at the first
        "max_nonfinite_steps": 5,
        "label_smoothing": 0.1,
        "mixup": True,
        # with mixup: the epoch (0-based) it starts at; the epochs before train on whole clips (with
        # label smoothing). A model from a random start finds its features sooner on whole clips.
        "mixup_start_epoch": 0,
        "cutmix_prob": 0.5,
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "amp": "auto",  # "auto" (bf16 on CUDA, off on CPU), "bf16", "fp16", "off"
        "eval_every": 1,  # epochs; 0: no evaluation while training
        "eval_views": [1, 1],  # clips x crops while training
        "keep_last": 3,
        # checkpoint at every Nth epoch end, the last one and every evaluated one (the demo's students
        # run 480 epochs of 5 steps: a checkpoint each would cost more than a tenth of their time)
        "save_every_epochs": 1,
        "save_every_steps": 0,  # also checkpoint every N optimizer steps (0: at epoch ends only)
        "log_every": 10,
        "progress": True,
        "tensorboard": False,  # also log the scalars to <output>/tensorboard (pip install "dvfl[tensorboard]")
    },
    "eval": {"views": [[1, 1], [4, 3]], "batch_size": 4, "checkpoint": None},
}


# The type of every key whose default does not show it (None defaults, lists); the others take the
# type of their default. "?" allows null; "[2]" a pair; "[2][]" a non-empty list of pairs.
KINDS = {
    "device": "str?", "resume": "str?", "data.labels_csv": "str?", "data.num_classes": "int?",
    "data.crop_area": "float[2]", "model.drop_path_rate": "float?", "model.pretrained": "str?",
    "model.kwargs": "kwargs", "teacher.name": "str?", "teacher.checkpoint": "str?", "kd.teacher_cache": "str?", "kd.cache_topk": "int?",
    "teacher.kwargs": "kwargs",
    "train.eval_views": "int[2]", "eval.views": "int[2][]", "eval.checkpoint": "str?",
}
# VideoFocalNet arguments that other keys set (so model.kwargs must not)
_KWARGS_SET_ELSEWHERE = {"num_classes": "data.num_classes", "num_frames": "data.num_frames", "img_size": "data.size",
                         "backend": "model.backend", "drop_path_rate": "model.drop_path_rate", "norm_layer": None}


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


def _kind_of(name: str, default) -> str:
    if name in KINDS:
        return KINDS[name]
    return {bool: "bool", int: "int", float: "float", str: "str"}[type(default)]


def _scalar(kind: str, value, name: str, where: str):
    def bad(expected: str):
        return ConfigError(f"{where}: {name}: expected {expected}, got {shown(value)}")

    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind == "str":
        if isinstance(value, str) and "\x00" not in value:
            return value
        raise bad("a string without NUL bytes" if isinstance(value, str) else "a string")
    if isinstance(value, bool):  # True is an int to Python, never a number in a config
        raise bad("an integer" if kind == "int" else "a number")
    if isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 (no dot, no sign) and 1_000 as strings
            value = float(value.strip().replace("_", "")) if kind == "float" else int(value.strip())
        except ValueError:
            raise bad("an integer" if kind == "int" else "a number") from None
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        raise bad("an integer")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    raise bad("a finite number")


def coerce_value(name: str, default, value, where: str):
    """`value` for key `name` (dotted) checked against its kind and converted (ints, floats, ...)."""
    kind = _kind_of(name, default)
    if kind == "kwargs":
        return check_model_kwargs(value, name, where)
    if value is None:
        if kind.endswith("?"):
            return None
        raise ConfigError(f"{where}: {name}: expected a value, got null")
    kind = kind.rstrip("?")
    if kind.endswith("[2][]"):
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{where}: {name}: expected a non-empty list of pairs, got {value!r}")
        return [_pair(kind[:-2], item, f"{name}[{i}]", where) for i, item in enumerate(value)]
    if kind.endswith("[2]"):
        return _pair(kind, value, name, where)
    return _scalar(kind, value, name, where)


def _pair(kind: str, value, name: str, where: str) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{where}: {name}: expected a pair [a, b], got {value!r}")
    return [_scalar(kind[: -len("[2]")], item, name, where) for item in value]


def check_model_kwargs(kwargs, name: str, where: str) -> dict:
    """model.kwargs / teacher.kwargs: VideoFocalNet arguments only, each of its default's type."""
    from ..models import VideoFocalNet

    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: {name}: expected a mapping of VideoFocalNet arguments, got {kwargs!r}")
    params = inspect.signature(VideoFocalNet).parameters
    out = {}
    for key, value in kwargs.items():
        if key in _KWARGS_SET_ELSEWHERE:
            other = _KWARGS_SET_ELSEWHERE[key]
            raise ConfigError(f"{where}: {name}.{key}: not settable here" + (f"; use {other}" if other else ""))
        if key not in params:
            known = sorted(set(params) - set(_KWARGS_SET_ELSEWHERE))
            raise ConfigError(f"{where}: unknown key {name}.{key} (VideoFocalNet arguments: {', '.join(known)})")
        default = params[key].default
        if isinstance(default, (tuple, list)):  # per-stage lists of ints
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{where}: {name}.{key}: expected a list of integers, got {value!r}")
            out[key] = [_scalar("int", v, f"{name}.{key}", where) for v in value]
        else:
            out[key] = _scalar(_kind_of("", default), value, f"{name}.{key}", where)
    return out


def merge_config(base: dict, update: dict, where: str, prefix: str = "") -> dict:
    if not isinstance(update, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the top level'}: expected a mapping, got {update!r}")
    for key, value in update.items():
        name = prefix + key
        if key not in base:
            raise ConfigError(f"{where}: unknown key {name!r} (known here: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and name not in KINDS:
            merge_config(base[key], value, where, name + ".")
        else:
            base[key] = coerce_value(name, base[key], copy.deepcopy(value), where)
    return base


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """[(file, mapping)] with the _base_ parents first."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _base_ includes form a cycle: {' -> '.join(seen + (path,))}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config: no such file: {path}")
    data = read_yaml_file(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: _base_: expected a file name or a list of file names, got {shown(bases)}")
    layers = []
    for base in bases:
        layers += _read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,))
    return layers + [(path, data)]


def read_yaml_file(path: str) -> dict:
    """A YAML file's top-level mapping; anything else is one ConfigError naming the file (and the line
    and column of a syntax error)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}:{_yaml_where(err)} not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _yaml_where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"{mark.line + 1}:{mark.column + 1}:" if mark is not None else ""


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message in one line (a tag it refuses, e.g. !!python/object, reads as such)."""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    text = "; ".join(p for p in parts if p) or str(err).splitlines()[0]
    return " ".join(text.split())


def shown(value, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a 200 KB value must not make a 200 KB message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def set_by_path(cfg: dict, dotted: str, value, where: str = "--opts") -> None:
    """cfg[a][b][c] = value for dotted "a.b.c", checked and coerced like a file's value."""
    keys = dotted.split(".")
    node = cfg
    for depth, key in enumerate(keys[:-1]):
        if ".".join(keys[: depth + 1]) in KINDS:  # into model.kwargs / teacher.kwargs
            parent = ".".join(keys[: depth + 1])
            node[key] = check_model_kwargs({**node[key], ".".join(keys[depth + 1 :]): value}, parent, where)
            return
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"{where}: unknown key {'.'.join(keys[: depth + 1])!r}")
        node = node[key]
    if keys[-1] not in node:
        raise ConfigError(f"{where}: unknown key {dotted!r} (known here: {', '.join(sorted(node))})")
    if isinstance(node[keys[-1]], dict) and dotted not in KINDS:
        merge_config(node[keys[-1]], value, where, dotted + ".")
    else:
        node[keys[-1]] = coerce_value(dotted, node[keys[-1]], value, where)


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
    pairs = []
    for key, text in zip(opts[::2], opts[1::2]):
        try:
            pairs.append((key, yaml.safe_load(text)))
        except yaml.YAMLError as err:
            raise ConfigError(f"--opts {key}: {shown(text)} is not a valid YAML value: {_yaml_problem(err)}") from None
    return pairs


def parse_device(device: str | None) -> torch.device | None:
    """The config's device as a torch.device that this machine has (None: choose CUDA when available)."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: {device!r} is not a device string (expected cpu, cuda or cuda:N)") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type != "cuda":
        raise ConfigError(f"device: {device!r}: dvflnet runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but this machine has no usable CUDA device")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def _check_range(name: str, value, low=None, high=None, low_open=False, high_open=False) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # NaN compares false with every bound
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}{')' if high_open else ']'}"
        raise ConfigError(f"{name}: expected a value in {interval}, got {value!r}")


def _check_relations(cfg: dict, distill: bool) -> None:
    """Values that are valid alone but not together: the model's own arguments (the checks of the
    Python API, VideoFocalNet), the frame size against the model's stride and the test crop, the class
    names against the class count."""
    from ..models.registry import MODEL_CONFIGS, resolve_name
    from ..models.video_focalnet import check_model_args

    data, model = cfg["data"], cfg["model"]
    runs = [("model", model["name"], model["kwargs"], model["drop_path_rate"])]
    if distill and cfg["teacher"]["name"]:
        runs.append(("teacher", cfg["teacher"]["name"], cfg["teacher"]["kwargs"], None))
    for section, name, kwargs, drop_path in runs:
        args = {**_model_defaults(), **MODEL_CONFIGS[resolve_name(name)], **kwargs, "num_classes": data["num_classes"],
                "num_frames": data["num_frames"]}
        if drop_path is not None:
            args["drop_path_rate"] = drop_path
        try:
            check_model_args(**{k: args[k] for k in inspect.signature(check_model_args).parameters})
        except ValueError as err:
            raise ConfigError(f"{section}: {err} (from {section}.name {name!r}, {section}.kwargs and data)") from None
        stride = args["patch_size"] * 2 ** (len(args["depths"]) - 1)
        if data["size"] % stride:
            raise ConfigError(f"data.size: expected a multiple of {stride} ({section} {name}: patch_size {args['patch_size']} "
                              f"x 2^{len(args['depths']) - 1} patch merges), got {data['size']}")
    if data["test_short_side"] < data["size"]:
        raise ConfigError(f"data.test_short_side: expected at least data.size ({data['size']}: the test crops are "
                          f"{data['size']}x{data['size']} cut from frames of that short side), got {data['test_short_side']}")
    if data["labels_csv"]:
        from ..data.dataset import read_class_names

        names = read_class_names(data["labels_csv"])
        if len(names) != data["num_classes"]:
            raise ConfigError(f"data.labels_csv: {data['labels_csv']} names {len(names)} classes, "
                              f"data.num_classes is {data['num_classes']}")


def _model_defaults() -> dict:
    """VideoFocalNet's keyword defaults."""
    from ..models import VideoFocalNet

    return {name: p.default for name, p in inspect.signature(VideoFocalNet).parameters.items()}


def check_config(cfg: dict, distill: bool = False) -> None:
    """The checks a run needs before any work starts (types were checked when the config was read)."""
    from dvfl_kernels import available_backends
    from dvfl_kernels import MAX_KD_TEMPERATURE

    from ..models.registry import resolve_name

    data, train, model = cfg["data"], cfg["train"], cfg["model"]
    if not isinstance(cfg["output"], str) or not cfg["output"]:
        raise ConfigError(f"output: expected a folder path, got {shown(cfg['output'])}")
    if os.path.exists(cfg["output"]) and not os.path.isdir(cfg["output"]):
        raise ConfigError(f"output: {cfg['output']} is a file; expected a folder for the run")
    _check_range("seed", cfg["seed"], 0)
    if train["tensorboard"]:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError('train.tensorboard: true needs the tensorboard package: pip install "dvfl[tensorboard]" '
                              "(it pulls no torch)")
    if not isinstance(data["num_classes"], int) or data["num_classes"] < 1:
        raise ConfigError(f"data.num_classes: expected a positive integer, got {data['num_classes']!r}")
    for key in ("num_frames", "frame_interval", "size", "short_side", "test_short_side"):
        _check_range(f"data.{key}", data[key], 1)
    _check_range("data.num_workers", data["num_workers"], 0)
    _check_range("data.decoded_cache_mb", data["decoded_cache_mb"], 0)
    if data["decoded_cache_mb"] and data["num_workers"]:
        raise ConfigError(f"data.decoded_cache_mb: {data['decoded_cache_mb']} needs data.num_workers 0 (the cache lives in "
                          f"the process that decodes; loader workers, {data['num_workers']} here, would rebuild it every epoch)")
    _check_range("data.flip", data["flip"], 0.0, 1.0)
    low, high = data["crop_area"]
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"data.crop_area: expected [a, b] with 0 < a <= b <= 1, got {data['crop_area']}")
    for key, allowed in (("data.bad_video", ("fail", "skip")), ("train.optimizer", ("sgd", "adamw")),
                         ("train.amp", ("auto", "bf16", "fp16", "off")), ("train.weight_decay_on", ("nothing", "weights"))):
        section, name = key.split(".")
        if cfg[section][name] not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {cfg[section][name]!r}")
    for key in ("epochs", "batch_size", "accumulation", "reference_batch", "keep_last", "save_every_epochs", "log_every"):
        _check_range(f"train.{key}", train[key], 1)
    for key in ("eval_every", "save_every_steps", "weight_decay", "warmup_lr", "min_lr", "max_nonfinite_steps"):
        _check_range(f"train.{key}", train[key], 0)
    _check_range("train.warmup_epochs", train["warmup_epochs"], 0, train["epochs"])
    _check_range("train.base_lr", train["base_lr"], 0, low_open=True)
    _check_range("train.momentum", train["momentum"], 0.0, 1.0, high_open=True)
    _check_range("train.clip_grad", train["clip_grad"], 0.0, low_open=True)
    _check_range("train.label_smoothing", train["label_smoothing"], 0.0, 1.0, high_open=True)
    _check_range("train.mixup_start_epoch", train["mixup_start_epoch"], 0, train["epochs"] - 1)
    _check_range("train.cutmix_prob", train["cutmix_prob"], 0.0, 1.0)
    _check_range("train.mixup_alpha", train["mixup_alpha"], 0.0, low_open=True)
    _check_range("train.cutmix_alpha", train["cutmix_alpha"], 0.0, low_open=True)
    for name, views in [("train.eval_views", train["eval_views"])] + [(f"eval.views[{i}]", v) for i, v in enumerate(cfg["eval"]["views"])]:
        if views[0] < 1 or views[1] not in (1, 3):
            raise ConfigError(f"{name}: expected [clips >= 1, crops 1 or 3], got {views}")
    _check_range("eval.batch_size", cfg["eval"]["batch_size"], 1)
    if model["drop_path_rate"] is not None:
        _check_range("model.drop_path_rate", model["drop_path_rate"], 0.0, 1.0, high_open=True)
    names = [("model.name", model["name"])] + ([("teacher.name", cfg["teacher"]["name"])] if distill and cfg["teacher"]["name"] else [])
    for key, name in names:
        try:
            resolve_name(name)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
    _check_relations(cfg, distill)
    if model["backend"] not in ("auto", "reference", *available_backends("spatial_context")):
        raise ConfigError(f"model.backend: expected auto, reference or an available backend "
                          f"({', '.join(available_backends('spatial_context'))}), got {model['backend']!r}")
    parse_device(cfg["device"])
    # a value's checks do not depend on the command: a train run's kd section is checked as distill's
    _check_range("kd.alpha", cfg["kd"]["alpha"], 0.0, 1.0)
    _check_range("kd.temperature", cfg["kd"]["temperature"], 0.0, MAX_KD_TEMPERATURE, low_open=True)
    if cfg["kd"]["cache_topk"] is not None:
        _check_range("kd.cache_topk", cfg["kd"]["cache_topk"], 1)
    if distill and not (cfg["teacher"]["name"] and cfg["teacher"]["checkpoint"]):
        raise ConfigError("teacher.name and teacher.checkpoint: distillation needs both (the trained teacher)")
