"""Loading a run configuration: nested dicts from YAML, merged over DEFAULTS, overridden from the CLI.

A YAML file may name parent files under ``_base_`` (paths relative to it); parents are merged first,
then the file itself, then ``--opts KEY VALUE ...`` (dotted keys, values parsed as YAML). Unknown keys
are errors that name the key and the file, so a typo never silently trains with a default. Every value
is checked and coerced by its setting's type in the schema (schema.py), so ``base_lr: 3e-4`` (a
string to PyYAML's YAML 1.1) is the number it looks like, and ``epochs: ten`` is an error naming the
key. The loader knows no setting by name: the schema declares them.
"""
from __future__ import annotations

import copy
import inspect
import math
import os
import types
import typing

import torch
import yaml

from . import schema
from .schema import KWARGS_SET_ELSEWHERE, SECTIONS, ConfigError, RunConfig, shown

# The defaults as the nested dict the loader fills (and config.json holds).
DEFAULTS: dict = RunConfig().to_dict()


def _hints(cls) -> dict[str, object]:
    """dotted name -> the setting's type, for every setting of the schema."""
    out = {}
    for name, hint in typing.get_type_hints(cls, vars(schema)).items():
        section = SECTIONS.get(name) if cls is RunConfig else None
        if section is not None:
            out.update({f"{name}.{key}": value for key, value in _hints(section).items()})
        else:
            out[name] = hint
    return out


HINTS = _hints(RunConfig)
_SCALAR_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


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


def coerce_value(name: str, value, where: str, hint=None):
    """`value` for setting `name` (dotted) checked against its type in the schema and converted (ints,
    floats, pairs as lists, ...)."""
    hint = HINTS[name] if hint is None else hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        if args == (str, str):  # the engine's verdicts: measured call -> the name chosen
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ConfigError(f"{where}: {name}: expected a mapping of measured calls to the names chosen "
                                  f"(a run's config.json writes it), got {shown(value)}")
            return dict(value)
        return check_model_kwargs(value, name, where)
    if origin in (types.UnionType, typing.Union):  # X | None
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return coerce_value(name, value, where, hint)
    if value is None:
        raise ConfigError(f"{where}: {name}: expected a value, got null")
    if origin is tuple and args[-1] is Ellipsis:  # a non-empty list of pairs
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{where}: {name}: expected a non-empty list of pairs, got {value!r}")
        return [coerce_value(f"{name}[{i}]", item, where, args[0]) for i, item in enumerate(value)]
    if origin is tuple:  # a pair
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: {name}: expected a pair [a, b], got {value!r}")
        return [_scalar(_SCALAR_KINDS[arg], item, name, where) for arg, item in zip(args, value)]
    return _scalar(_SCALAR_KINDS[hint], value, name, where)


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
        if key in KWARGS_SET_ELSEWHERE:
            other = KWARGS_SET_ELSEWHERE[key]
            raise ConfigError(f"{where}: {name}.{key}: not settable here" + (f"; use {other}" if other else ""))
        if key not in params:
            known = sorted(set(params) - set(KWARGS_SET_ELSEWHERE))
            raise ConfigError(f"{where}: unknown key {name}.{key} (VideoFocalNet arguments: {', '.join(known)})")
        default = params[key].default
        if isinstance(default, (tuple, list)):  # per-stage lists of ints
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{where}: {name}.{key}: expected a list of integers, got {value!r}")
            out[key] = [_scalar("int", v, f"{name}.{key}", where) for v in value]
        else:
            out[key] = _scalar(_SCALAR_KINDS[type(default)], value, f"{name}.{key}", where)
    return out


def merge_config(base: dict, update: dict, where: str, prefix: str = "") -> dict:
    if not isinstance(update, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the top level'}: expected a mapping, got {update!r}")
    for key, value in update.items():
        name = prefix + key
        if key not in base:
            raise ConfigError(f"{where}: unknown key {name!r} (known here: {', '.join(sorted(base))})")
        if name in SECTIONS:
            merge_config(base[key], value, where, name + ".")
        else:
            base[key] = coerce_value(name, copy.deepcopy(value), where)
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


def set_by_path(cfg: dict, dotted: str, value, where: str = "--opts") -> None:
    """cfg[a][b][c] = value for dotted "a.b.c", checked and coerced like a file's value."""
    keys = dotted.split(".")
    node = cfg
    for depth, key in enumerate(keys[:-1]):
        if typing.get_origin(HINTS.get(".".join(keys[: depth + 1]))) is dict:  # into model.kwargs / teacher.kwargs
            parent = ".".join(keys[: depth + 1])
            node[key] = check_model_kwargs({**node[key], ".".join(keys[depth + 1 :]): value}, parent, where)
            return
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"{where}: unknown key {'.'.join(keys[: depth + 1])!r}")
        node = node[key]
    if keys[-1] not in node:
        raise ConfigError(f"{where}: unknown key {dotted!r} (known here: {', '.join(sorted(node))})")
    if dotted in SECTIONS:
        merge_config(node[keys[-1]], value, where, dotted + ".")
    else:
        node[keys[-1]] = coerce_value(dotted, value, where)


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


def check_config(cfg: dict | RunConfig, distill: bool = False) -> RunConfig:
    """The frozen run config of `cfg` (the loader's dict, or a RunConfig), checked for everything a run
    needs before any work starts (``RunConfig.check``)."""
    run = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
    run.check(distill)
    return run
