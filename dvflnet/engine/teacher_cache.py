"""Teacher-output cache: offline distillation. Run the teacher once; distil any number of students.

A distillation run sees a fixed stream of micro-batches per epoch and rank: the sampler's permutation
of (seed, epoch), each clip's segment and augmentation drawn from (seed, epoch, index), mixup / cutmix
from (seed, rank, epoch, micro-batch). ``builders.epoch_batches`` produces that stream for training and
for this cache alike, so ``build_teacher_cache(cfg)`` runs the frozen teacher over exactly the clips
(mixed) that the student will see and stores the logits; a run with ``kd.teacher_cache: DIR`` reads
them instead of running the teacher, at any kd.alpha and kd.temperature.

Layout of DIR:
    key.json               what the logits depend on (``cache_key``); a run with another key is refused
    e0003-r001-c0000.pt    epoch 3, rank 1, chunk 0: up to CHUNK_BATCHES micro-batches
Every file is written atomically (temporary file + rename): a killed build leaves whole chunks only,
and building again computes the missing ones. Each DDP rank writes its own chunks.

A chunk holds ``indices`` (n, B), the dataset index of every clip (checked against the run's sampler
when read), and the logits, fp16:
    kd.cache_topk None (default), or K <= kd.cache_topk: ``logits`` (n, B, K), every logit;
    K > k = kd.cache_topk: the top k logits (``top_logits``, ``top_classes``) and the other K - k
        classes folded into one bucket: the mean and variance of their logits (``rest_mean``,
        ``rest_var``). Read back at temperature T, each folded class gets the logit mean + var / (2T):
        the bucket keeps the probability mass exp(mean/T + var/(2T^2)) per class that a Gaussian
        spread of logits has, whatever T the run uses. What it cannot keep is which folded class had
        which logit, and at the recipe's T = 10 the softened teacher spreads its mass over the folded
        classes: the KD gradient is then off by tens of percent, at T = 1 by a few
        (bench/teacher_cache_fold.py measures it; the README has the table). Dense is the default:
        400 classes (Kinetics-400) cost 800 bytes per clip and epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

import torch

from ..data.dataset import csv_rows
from ..models import CheckpointError
from ..atomic import clean_temporary_files, save_torch, write_json
from .builders import autocast, autocast_dtype, batches_per_epoch, build_teacher, epoch_batches, train_dataset
from .run_state import RunLock
from .schema import ConfigError, RunConfig, plain_data

FORMAT_VERSION = 1
# Micro-batches per chunk file: the unit of resumption (a killed build redoes at most one chunk per
# rank) and of reading (one chunk in memory at a time: 256 x B x K fp16 is a few MiB for K = 400).
CHUNK_BATCHES = 256
KEY_FILE = "key.json"


class TeacherCacheError(ConfigError):
    """A cache that does not fit the run (key mismatch), is incomplete, or is unreadable."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _dataset_digest(root: str, csv_path: str) -> str:
    """The training list and the size of every listed video: a changed list, label or re-encoded video
    changes it (contents are not read: hashing a large dataset's videos would cost more than the cache saves)."""
    digest = hashlib.sha256()
    for _, fields in csv_rows(csv_path):
        path = os.path.join(root, ",".join(fields[:-1]).strip())
        size = os.path.getsize(path) if os.path.isfile(path) else -1
        digest.update(json.dumps([fields, size]).encode())
    return digest.hexdigest()


def cache_key(cfg: RunConfig, world_size: int) -> dict:
    """Everything the cached logits depend on: the teacher (architecture and the checkpoint's bytes),
    the training data, the augmentation and mixup settings and their seed, the batch stream (batch
    size, accumulation, epochs, processes), the teacher's precision, and the storage format."""
    data, train, teacher = cfg.data, cfg.train, cfg.teacher
    return plain_data({
        "format": FORMAT_VERSION,
        "teacher": {"name": teacher.name, "kwargs": teacher.kwargs, "checkpoint_sha256": file_sha256(teacher.checkpoint)},
        "data": {"train_list_sha256": _dataset_digest(data.root, data.train_csv),
                 **{k: getattr(data, k) for k in ("num_classes", "num_frames", "frame_interval", "size", "short_side",
                                                  "crop_area", "flip", "bad_video")}},
        "augmentation": {"seed": cfg.seed, **{k: getattr(train, k) for k in ("mixup", "mixup_start_epoch", "cutmix_prob",
                                                                        "mixup_alpha", "cutmix_alpha")}},
        "batches": {"epochs": train.epochs, "batch_size": train.batch_size, "accumulation": train.accumulation,
                    "world_size": world_size},
        "precision": train.amp,
        "topk": cfg.kd.cache_topk,
    })


def _flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def key_differences(saved: dict, wanted: dict) -> list[str]:
    saved, wanted = _flatten(saved), _flatten(wanted)
    return [f"{k}: cache {saved.get(k)!r}, run {wanted.get(k)!r}" for k in sorted(set(saved) | set(wanted))
            if saved.get(k) != wanted.get(k)]


def read_key(folder: str) -> dict | None:
    path = os.path.join(folder, KEY_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as err:
        raise TeacherCacheError(f"{path}: not a readable cache key ({err})") from None


def check_key(folder: str, wanted: dict) -> None:
    saved = read_key(folder)
    if saved is None:
        raise TeacherCacheError(f"kd.teacher_cache: {folder} holds no cache ({KEY_FILE} missing); "
                                "build it first: dvflnet cache-teacher --config <the same config>")
    diffs = key_differences(saved, wanted)
    if diffs:
        raise TeacherCacheError(f"kd.teacher_cache: {folder} was built for another run; it differs in "
                                + "; ".join(diffs) + " (build a cache for this run in another folder)")


def chunk_path(folder: str, epoch: int, rank: int, chunk: int) -> str:
    return os.path.join(folder, f"e{epoch:04d}-r{rank:03d}-c{chunk:04d}.pt")


def epoch_indices(cfg: RunConfig, num_videos: int, info, epoch: int) -> torch.Tensor:
    """This rank's dataset indices for `epoch`, in training order (a sampler of its own: the run's
    may be mid-iteration)."""
    from .distributed import TrainSampler

    sampler = TrainSampler(num_videos, cfg.train.batch_size, info, cfg.seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(iter(sampler)), dtype=torch.long)


def compress(logits: torch.Tensor, topk: int | None) -> dict:
    """(..., K) logits -> the stored form: dense fp16 when topk is None or K <= topk, else top-k + a
    folded bucket."""
    logits = logits.float()
    if topk is None or logits.shape[-1] <= topk:
        return {"logits": logits.half()}
    top = logits.topk(topk, dim=-1)
    rest = logits.scatter(-1, top.indices, float("nan"))
    return {"top_logits": top.values.half(), "top_classes": top.indices.int(),
            "rest_mean": rest.nanmean(-1), "rest_var": (rest - rest.nanmean(-1, keepdim=True)).pow(2).nanmean(-1)}


def expand(stored: dict, num_classes: int, temperature: float) -> torch.Tensor:
    """The stored form -> dense fp32 logits (..., K) for a loss at `temperature`."""
    if "logits" in stored:
        return stored["logits"].float()
    fill = stored["rest_mean"] + stored["rest_var"] / (2 * temperature)
    dense = fill.unsqueeze(-1).expand(*fill.shape, num_classes).clone()
    return dense.scatter_(-1, stored["top_classes"].long(), stored["top_logits"].float())


class TeacherCache:
    """The reader a cached distillation run uses: ``logits(epoch, batch)`` -> (B, K) fp32 on `device`."""

    def __init__(self, cfg: RunConfig, info, num_videos: int):
        self.folder = cfg.kd.teacher_cache
        check_key(self.folder, cache_key(cfg, info.world_size))
        self.cfg, self.info, self.num_videos = cfg, info, num_videos
        self.num_classes, self.temperature = cfg.data.num_classes, cfg.kd.temperature
        self.batch_size = cfg.train.batch_size
        self._loaded: tuple[tuple[int, int], dict] | None = None

    def _chunk(self, epoch: int, chunk: int) -> dict:
        if self._loaded is None or self._loaded[0] != (epoch, chunk):
            path = chunk_path(self.folder, epoch, self.info.rank, chunk)
            if not os.path.isfile(path):
                raise TeacherCacheError(f"kd.teacher_cache: {path} is missing: the cache is incomplete "
                                        "(run dvflnet cache-teacher with the same config to finish it)")
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a damaged file: name it, never train on a guess
                raise CheckpointError(f"{path}: unreadable teacher-cache chunk ({type(err).__name__}: {err})") from None
            first = chunk * CHUNK_BATCHES * self.batch_size
            expected = epoch_indices(self.cfg, self.num_videos, self.info, epoch)[first : first + stored["indices"].numel()]
            if not torch.equal(stored["indices"].reshape(-1), expected):
                raise TeacherCacheError(f"{path}: its clips are not the ones this run's sampler draws for epoch "
                                        f"{epoch} (the cache belongs to another data order)")
            self._loaded = (epoch, chunk), stored
        return self._loaded[1]

    def logits(self, epoch: int, batch: int) -> torch.Tensor:
        stored = self._chunk(epoch, batch // CHUNK_BATCHES)
        row = batch % CHUNK_BATCHES
        if row >= stored["indices"].shape[0]:
            raise TeacherCacheError(f"kd.teacher_cache: epoch {epoch} has no micro-batch {batch} in {self.folder}")
        picked = {k: v[row] for k, v in stored.items() if k != "indices"}
        return expand(picked, self.num_classes, self.temperature).to(self.info.device, non_blocking=True)


@dataclass(frozen=True)
class CacheBuild:
    """What build_teacher_cache did on this rank."""

    written: int  # chunks the teacher ran for
    kept: int  # chunks already there (a partial cache resumed)
    time_s: float


def build_teacher_cache(cfg: dict | RunConfig) -> CacheBuild:
    """Run the teacher over every (epoch, micro-batch) this rank's distillation run will train on and
    store the logits under cfg.kd.teacher_cache; chunks already there are kept (a partial cache
    resumes)."""
    from .config import check_config
    from .distributed import TrainSampler, all_gather_objects, barrier, init_distributed, shutdown_distributed

    cfg = check_config(cfg, distill=True)
    folder = cfg.kd.teacher_cache
    if not folder:
        raise ConfigError("kd.teacher_cache: the folder to build the cache in is not set")
    info = init_distributed(cfg.torch_device)
    lock = None
    try:
        key = cache_key(cfg, info.world_size)
        if info.is_main:
            os.makedirs(folder, exist_ok=True)
            lock = RunLock(folder).acquire()
            left = clean_temporary_files(folder)  # a killed build's half-written chunks
            if left:
                print(f"teacher cache: removed {len(left)} temporary file(s) an interrupted build left in {folder}")
            saved = read_key(folder)
            if saved is None:
                write_json(key, os.path.join(folder, KEY_FILE))
            else:
                check_key(folder, key)
        barrier(info)
        train = cfg.train
        teacher = build_teacher(cfg, info.device)
        amp_dtype = autocast_dtype(train.amp, info.device)
        dataset = train_dataset(cfg)
        sampler = TrainSampler(len(dataset), train.batch_size, info, cfg.seed)
        per_epoch = batches_per_epoch(len(sampler), train.batch_size, train.accumulation)
        written = kept = 0
        start = time.perf_counter()
        for epoch in range(train.epochs):
            indices = epoch_indices(cfg, len(dataset), info, epoch).view(-1, train.batch_size)
            for chunk, first in enumerate(range(0, per_epoch, CHUNK_BATCHES)):
                path = chunk_path(folder, epoch, info.rank, chunk)
                if os.path.isfile(path):
                    kept += 1
                    continue
                stop = min(first + CHUNK_BATCHES, per_epoch)
                parts = []
                with torch.no_grad():
                    for _, clips, _ in epoch_batches(cfg, dataset, sampler, info, epoch, first, stop):
                        with autocast(info.device, amp_dtype):
                            parts.append(teacher(clips).float().cpu())
                if len(parts) != stop - first:
                    raise RuntimeError(f"teacher cache: epoch {epoch} gave {len(parts)} micro-batches from {first}, "
                                       f"expected {stop - first}")
                stored = compress(torch.stack(parts), cfg.kd.cache_topk)
                save_torch({"indices": indices[first:stop].clone(), **stored}, path)
                written += 1
            if info.is_main:
                print(f"teacher cache: epoch {epoch + 1}/{train.epochs} done ({folder})", flush=True)
        summary = CacheBuild(written, kept, time.perf_counter() - start)
        all_gather_objects(None, info)  # every rank finished before the lock is released
        return summary
    finally:
        if lock is not None:
            lock.release()
        shutdown_distributed(info)
