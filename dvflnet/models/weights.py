"""Loading weights: raw state dicts, the public training code's checkpoints, and 2D FocalNet seeds.

Checkpoint files are read with ``torch.load(weights_only=True)``: no pickled code ever runs. The
public Video-FocalNets / DVFL-Net checkpoints pickle a yacs ``CfgNode`` config next to the weights;
it is rebuilt as a plain OrderedDict without importing or executing yacs.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded (unsafe pickle, wrong layout, head of another size, ...)."""


class _YacsConfigAsDict:
    """Stand-in for the yacs CfgNode pickled in public checkpoints: the unpickler rebuilds each
    CfgNode as an OrderedDict (its data, none of its code; nested configs stay nested)."""

    def __new__(cls, *args):
        return OrderedDict()


def _numpy_safe_globals() -> list:
    # Training scripts sometimes store numpy scalars (e.g. the best accuracy); these rebuild data only.
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray.scalar, np.dtype] + [type(np.dtype(t)) for t in ("f4", "f8", "i4", "i8")]


_SAFE_GLOBALS = [(_YacsConfigAsDict, "yacs.config.CfgNode"), *_numpy_safe_globals()]
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def read_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """Unpickle a checkpoint file safely (tensors, containers, numbers, yacs configs only)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint: {path} is a folder; expected a checkpoint file (e.g. {os.path.join(path, 'best.pt')})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch wraps the unpickler's own reason between a generic paragraph and a documentation link
        text = str(err)
        paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.startswith("Check the documentation")]
        reason = paragraphs[-1].split("WeightsUnpickler error:", 1)[-1] if paragraphs else text
        first_line = " ".join(reason.split())[:200]
        if "global" in text.lower():
            raise CheckpointError(
                f"{path}: refusing to unpickle it: it references code that a weights-only load does not run "
                f"({first_line})"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line})") from None
    except Exception as err:  # truncated zip, text, random bytes: torch.load raises many kinds
        detail = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {detail})") from None


def extract_state_dict(obj) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict with wrapper prefixes stripped, training config or None) from a loaded object."""
    config = None
    if isinstance(obj, dict):
        config = obj.get("config") if isinstance(obj.get("config"), dict) else None
        for key in ("model", "state_dict", "model_state", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            "checkpoint: expected a state dict of tensors, or a dict holding one under 'model'/'state_dict'"
        )
    state = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state, config


@dataclass
class LoadReport:
    source: str
    kind: str  # "video": a Video-FocalNet checkpoint; "image": a 2D FocalNet seeding the spatial parts
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model weights left as initialised
    unexpected: list[str] = field(default_factory=list)  # checkpoint entries not used
    mismatched: list[str] = field(default_factory=list)  # same name, other shape: left as initialised
    config: dict | None = None

    def __str__(self) -> str:
        lines = [
            f"{self.source} ({self.kind} checkpoint): loaded {len(self.loaded)} tensors, "
            f"left {len(self.missing)} fresh, skipped {len(self.unexpected)} unused and "
            f"{len(self.mismatched)} of another shape"
        ]
        for title, names in (("fresh", self.missing), ("unused", self.unexpected), ("other shape", self.mismatched)):
            if names:
                shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
                lines.append(f"  {title}: {shown}")
        return "\n".join(lines)


_HEAD_KEYS = ("head.weight", "head.bias")


def _is_image_checkpoint(model_state: dict, state: dict) -> bool:
    """A 2D FocalNet: the model has temporal layers and the checkpoint has none of them."""
    has_temporal = any("_temporal" in k for k in model_state)
    return has_temporal and not any("_temporal" in k for k in state)


def load_checkpoint(
    model: nn.Module,
    checkpoint,
    strict: bool = True,
    reset_head: bool = False,
    map_location="cpu",
    source: str | None = None,
) -> LoadReport:
    """Load weights into `model` and report what was loaded.

    checkpoint: a path, or an already loaded object (state dict or ``{"model": ...}``).
    - A Video-FocalNet checkpoint loads strictly (every key, every shape). A head of another size
      raises, unless ``reset_head=True``, which keeps the model's fresh head.
    - A 2D (ImageNet) FocalNet checkpoint seeds the spatial parts: every tensor whose name and
      shape match is loaded (a model with fewer blocks per stage takes the first ones); temporal
      layers and the head stay fresh. The report lists all of it.
    """
    source = source or (os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<state dict>")
    obj = read_checkpoint(checkpoint, map_location) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state, config = extract_state_dict(obj)
    model_state = model.state_dict()

    if _is_image_checkpoint(model_state, state):
        report = LoadReport(source, "image", config=config)
        usable = {}
        for key, value in state.items():
            if key not in model_state:
                report.unexpected.append(key)
            elif key in _HEAD_KEYS or value.shape != model_state[key].shape:
                report.mismatched.append(key)
            else:
                usable[key] = value
        model.load_state_dict(usable, strict=False)
        report.loaded = sorted(usable)
        report.missing = sorted(k for k in model_state if k not in usable)
        return report

    report = LoadReport(source, "video", config=config)
    if "head.weight" in state and "head.weight" in model_state and state["head.weight"].shape[0] != model_state["head.weight"].shape[0]:
        if not reset_head:
            raise CheckpointError(
                f"{source}: the checkpoint's head has {state['head.weight'].shape[0]} classes but the model's has "
                f"{model_state['head.weight'].shape[0]}; build the model with num_classes="
                f"{state['head.weight'].shape[0]}, or pass reset_head=True to keep a fresh head"
            )
        report.mismatched = [k for k in _HEAD_KEYS if k in state]
        state = {k: v for k, v in state.items() if k not in _HEAD_KEYS}
    for key, value in state.items():
        if key in model_state and value.shape != model_state[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(model_state[key].shape)} in the model (another variant or configuration?)"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    report.missing = sorted(k for k in missing)
    report.unexpected = sorted(unexpected)
    report.loaded = sorted(k for k in state if k in model_state)
    unexplained_missing = [k for k in report.missing if k not in report.mismatched]
    if strict and (unexplained_missing or report.unexpected):
        def listed(names: list[str]) -> str:
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            return f"{len(names)} ({', '.join(names[:10])}{more})" if names else "none"

        raise CheckpointError(
            f"{source}: checkpoint does not match the model: missing {listed(unexplained_missing)}, "
            f"unexpected {listed(report.unexpected)} (another variant or configuration?)"
        )
    return report
