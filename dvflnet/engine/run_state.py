"""The state of a run on disk: its checkpoints (atomic, exact resume, a best-model file, a limit on how
many are kept), which one to resume from, the lock that keeps two runs out of one folder, and the
JSON-lines log.

A checkpoint holds model, optimizer, scheduler, AMP scaler, epoch, step, best metric, every RNG state
and the config, and is loaded with weights_only=True (it contains tensors, numbers, strings, lists and
dicts only). Resuming takes the newest checkpoint that loads: a truncated or corrupt one is reported
by name and set aside (renamed *.corrupt), never silently skipped or left to rotate good ones away.
"""
from __future__ import annotations

import json
import math
import os
import random
import socket
import sys
import time
import warnings
from dataclasses import MISSING, dataclass, fields

import numpy as np
import torch

from ..atomic import clean_temporary_files, save_torch
from ..models import CheckpointError, read_checkpoint
from .schema import ConfigError, RunConfig



@dataclass
class TrainingCheckpoint:
    """What a training checkpoint holds. On disk it is a dict of these names (tensors, numbers, strings,
    lists and dicts only: weights_only=True loads it); a file without the fields that have no default
    is not one (e.g. a bare state dict)."""

    model: dict  # the model's state dict
    optimizer: dict
    scaler: dict  # the AMP GradScaler's
    epoch: int  # epochs finished
    batch_in_epoch: int  # micro-batches of the current epoch done (0 at an epoch's end)
    step: int  # optimizer steps done
    rng: list  # each process's RNG states (capture_rng_state), by rank
    scheduler: dict | None = None
    epoch_partial: dict | None = None  # a mid-epoch checkpoint's running sums (loss, clips, time)
    config: dict | None = None  # the run config as plain data (RunConfig.to_dict)
    best_metric: float | None = None

    def to_state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state, path: str) -> "TrainingCheckpoint":
        """The checkpoint of a loaded file; CheckpointError naming the file and what it lacks."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if not isinstance(state, dict) or k not in state]
        if missing:
            raise CheckpointError(f"{path}: not a dvflnet training checkpoint (missing {', '.join(missing)})")
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states as tensors and plain data."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[-2], tuple(python[:-2]), python[-1]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """`save(checkpoint, metric)` writes checkpoint_<step>.pt atomically (step: the optimizer step, so
    mid-epoch and epoch-end checkpoints sort together), keeps the newest `keep_last`, and copies the
    best (highest metric) to best.pt; `newest_valid()` / `load(path)` for resuming."""

    def __init__(self, folder: str, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last: expected >= 1, got {keep_last}")
        self.folder, self.keep_last = folder, keep_last
        self.best_metric: float | None = None

    def _numbered_files(self) -> list[tuple[int, str]]:
        if not os.path.isdir(self.folder):
            return []
        found = []
        for name in os.listdir(self.folder):
            if name.startswith("checkpoint_") and name.endswith(".pt"):
                try:
                    found.append((int(name[len("checkpoint_") : -3]), os.path.join(self.folder, name)))
                except ValueError:
                    continue
        return sorted(found)

    def save(self, checkpoint: TrainingCheckpoint, metric: float | None = None) -> str:
        path = os.path.join(self.folder, f"checkpoint_{checkpoint.step}.pt")
        is_best = metric is not None and (self.best_metric is None or metric > self.best_metric)
        if is_best:
            self.best_metric = metric
        state = dict(checkpoint.to_state(), best_metric=self.best_metric)
        save_torch(state, path)
        if is_best:
            save_torch(state, os.path.join(self.folder, "best.pt"))
        for _, old in self._numbered_files()[: -self.keep_last]:
            os.unlink(old)
        return path

    def latest(self) -> str | None:
        files = self._numbered_files()
        return files[-1][1] if files else None

    def has_checkpoints(self) -> bool:
        return bool(self._numbered_files())

    def load(self, path: str) -> TrainingCheckpoint:
        """A training checkpoint, checked: CheckpointError naming the file if it is unreadable or not one."""
        checkpoint = TrainingCheckpoint.from_state(read_checkpoint(path), path)
        self.best_metric = checkpoint.best_metric
        return checkpoint

    def newest_valid(self) -> tuple[str, TrainingCheckpoint] | None:
        """(path, state) of the newest checkpoint that loads. Each newer one that does not is reported
        and renamed <name>.corrupt (kept for inspection, out of the rotation)."""
        for _, path in reversed(self._numbered_files()):
            try:
                return path, self.load(path)
            except CheckpointError as err:
                os.replace(path, path + ".corrupt")
                warnings.warn(f"{err}; renamed it to {os.path.basename(path)}.corrupt and trying the previous checkpoint",
                              stacklevel=2)
        return None

    def clean_leftovers(self) -> list[str]:
        """Delete temporary files an interrupted write left behind; returns their names."""
        return [os.path.basename(p) for p in clean_temporary_files(self.folder)]


def nonfinite_tensors(state: dict) -> list[str]:
    """Names (dotted) of the floating tensors in a nested state dict that hold NaN or inf; one host
    sync per device (optimizer step counters may live on the CPU next to CUDA weights)."""
    named = []

    def collect(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                collect(value, f"{prefix}{key}.")
            elif isinstance(value, torch.Tensor) and value.is_floating_point():
                named.append((f"{prefix}{key}", value))

    collect(state, "")
    if not named:
        return []
    by_device: dict[torch.device, list[int]] = {}
    for index, (_, tensor) in enumerate(named):
        by_device.setdefault(tensor.device, []).append(index)
    finite = {}
    for indices in by_device.values():
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in indices]).tolist()
        finite.update(zip(indices, flags))
    return [name for index, (name, _) in enumerate(named) if not finite[index]]


class RunLockedError(RuntimeError):
    """Another live process is training into the same output folder."""


class RunLock:
    """`<folder>/.lock` holding the owner's pid and host, created atomically. A second run into the folder
    refuses while the owner lives; a lock whose process is gone (a killed run) is taken over."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".lock")
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._alive(holder):
                    raise RunLockedError(
                        f"{os.path.dirname(self.path)}: another run is writing here (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, started {holder.get('started')}); wait for it, stop it, or choose "
                        f"another output (if you are sure it is gone, delete {self.path})") from None
                warnings.warn(f"{self.path}: taking over the lock of a run that is no longer running ({holder})", stacklevel=2)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            return self
        raise RunLockedError(f"{self.path}: could not take the lock (another process keeps creating it)")

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None  # half-written or unreadable: its writer died before finishing

    def _alive(self, holder: dict) -> bool:
        if holder.get("host") != self.owner["host"]:
            return True  # cannot check another machine's processes: assume it lives
        try:
            os.kill(int(holder["pid"]), 0)
        except PermissionError:
            return True  # a live process of another user
        except (ProcessLookupError, KeyError, TypeError, ValueError):
            return False  # gone, or a lock without a usable pid
        return True

    def release(self) -> None:
        if self._holder() == self.owner:
            os.unlink(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def interactive() -> bool:
    """Progress bars on a terminal; plain lines where output goes to a file, a pipe or CI."""
    return sys.stderr.isatty()


class JsonLog:
    """Append one JSON object per line (rank 0 only); flushed so a crash keeps what was logged.

    Strict JSON: a non-finite number is written as null and its key listed under "nonfinite".
    With `tensorboard` (a folder), every numeric value of a record is also a TensorBoard scalar,
    "<event>/<key>" at the record's optimizer step (train.tensorboard)."""

    def __init__(self, path: str | None, tensorboard: str | None = None):
        self.path = path
        self.file = open(path, "a") if path else None
        self.board = None
        if path and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(tensorboard)

    def write(self, **record) -> None:
        if self.file:
            bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                record = {**{k: None if k in bad else v for k, v in record.items()}, "nonfinite": bad}
            self.file.write(json.dumps(record, allow_nan=False) + "\n")
            self.file.flush()
        if self.board is not None and "step" in record:
            for key, value in record.items():
                if key not in ("event", "step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.board.add_scalar(f"{record.get('event', 'log')}/{key}", value, record["step"])
            self.board.flush()

    def truncate_after(self, step: int) -> None:
        """Keep the records up to optimizer step `step` (a resume from there replays what follows) and
        drop any line a kill cut short."""
        if not self.path or not os.path.isfile(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= step:
                    kept.append(json.dumps(record, allow_nan=False) + "\n")
        self.file.close()
        tmp = self.path + ".rewrite"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)
        self.file = open(self.path, "a")

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.board is not None:
            self.board.close()


_ARCHITECTURE_KEYS = (("model", "name"), ("model", "kwargs"), ("data", "num_classes"), ("data", "num_frames"))


def architecture_differences(saved: dict | None, cfg: RunConfig) -> list[str]:
    """'key: checkpoint X, config Y' for each setting that shapes the model and differs (`saved`: the
    config a checkpoint holds, as plain data)."""
    if not isinstance(saved, dict):
        return []
    diffs = []
    for section, key in _ARCHITECTURE_KEYS:
        old, new = (saved.get(section) or {}).get(key), getattr(getattr(cfg, section), key)
        if old != new:
            diffs.append(f"{section}.{key}: checkpoint {old!r}, config {new!r}")
    return diffs


def find_resume(cfg: RunConfig, manager: CheckpointManager) -> tuple[str, TrainingCheckpoint] | None:
    """(path, state) to resume from: cfg.resume "auto" (the newest checkpoint that loads), a path, or
    null (fresh start, refused where an earlier run's checkpoints would be mixed with this one's)."""
    if cfg.resume == "auto":
        found = manager.newest_valid()
    elif cfg.resume:
        found = cfg.resume, manager.load(cfg.resume)
    else:
        if manager.has_checkpoints():
            raise ConfigError(f"resume: null (a fresh start), but {cfg.output} holds checkpoints of an earlier run; "
                              "resume it (resume: auto) or choose another output")
        return None
    if found is not None:
        diffs = architecture_differences(found[1].config, cfg)
        if diffs:
            raise ConfigError(f"{found[0]}: saved with another model than this config builds: {'; '.join(diffs)}")
    return found
