"""Training checkpoints: atomic writes, exact resume, a best-model file and a limit on how many are kept.

A checkpoint holds model, optimizer, scheduler, AMP scaler, epoch, step, best metric, every RNG state
and the config, and is loaded with weights_only=True (it contains tensors, numbers, strings, lists and
dicts only).
"""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch


def save_atomic(obj, path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves a
    half-written checkpoint under `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    """`save(state, step, metric)` writes checkpoint_<step>.pt atomically (step: the optimizer step, so
    mid-epoch and epoch-end checkpoints sort together), keeps the newest `keep_last`, and copies the
    best (highest metric) to best.pt; `latest()` / `load(path)` for resuming."""

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

    def save(self, state: dict, step: int, metric: float | None = None) -> str:
        path = os.path.join(self.folder, f"checkpoint_{step}.pt")
        is_best = metric is not None and (self.best_metric is None or metric > self.best_metric)
        if is_best:
            self.best_metric = metric
        state = dict(state, best_metric=self.best_metric)
        save_atomic(state, path)
        if is_best:
            save_atomic(state, os.path.join(self.folder, "best.pt"))
        for _, old in self._numbered_files()[: -self.keep_last]:
            os.unlink(old)
        return path

    def latest(self) -> str | None:
        files = self._numbered_files()
        return files[-1][1] if files else None

    def load(self, path: str) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.best_metric = state.get("best_metric")
        return state
