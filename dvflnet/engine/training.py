"""Training and distillation: the recipe as one loop, top-down.

    summary = run_training(cfg)                 # a teacher, or a student from scratch
    summary = run_training(cfg, distill=True)   # student + frozen teacher (loaded whole, head included)
    summary.last, summary.best_top1, summary.epochs[-1].train_loss

`cfg` is a ``RunConfig`` (schema.py), or the loader's nested dict (DEFAULTS <- YAML <- --opts), made one
and checked on the way in. Under torchrun
every process runs the same function; rank 0 writes logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import dvfl_kernels

from ..atomic import write_json
from .builders import (autocast, autocast_dtype, batches_per_epoch, build_model, epoch_batches, eval_dataset,
                       teacher_model_config, train_dataset)
from .config import check_config
from .distributed import DistInfo, TrainSampler, all_gather_objects, barrier, init_distributed, shutdown_distributed
from .evaluation import evaluate
from .objectives import build_objective, cached_teacher
from .optim import build_optimizer, scaled_lr
from .run_state import (CheckpointManager, JsonLog, RunLock, TrainingCheckpoint, capture_rng_state, find_resume,
                        interactive, nonfinite_tensors, restore_rng_state)
from .schedule import WarmupCosine
from .schema import RunConfig


@dataclass
class EpochRecord:
    """One epoch's figures, as log.jsonl's "epoch" lines hold them (None: not measured, not logged)."""

    epoch: int  # 0-based
    step: int  # optimizer steps done at its end
    train_loss: float  # mean over the epoch's finite steps (NaN if none)
    time_s: float
    clips_per_s: float
    skipped_steps: int  # non-finite steps skipped
    skipped_videos: int  # videos that did not decode, with data.bad_video skip
    peak_memory_bytes: int
    peak_memory_kind: str  # cuda_allocated, or cpu_max_rss (the process's peak resident set so far)
    one_thread_steps: int | None = None  # CPU: micro-batches run on one thread because the cores were shared
    val_top1: float | None = None
    val_top5: float | None = None

    def logged(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class TrainingSummary:
    """What run_training returns: every epoch's record and where the checkpoints are."""

    output: str
    epochs: list[EpochRecord] = field(default_factory=list)  # the epochs this call trained (not resumed ones)
    last: str | None = None  # the newest checkpoint
    best: str | None = None  # best.pt, where the run evaluated
    best_top1: float | None = None

    @property
    def train_time_s(self) -> float:
        return sum(record.time_s for record in self.epochs)


def run_training(cfg: dict | RunConfig, distill: bool = False) -> TrainingSummary:
    """Train (or distil) for cfg.train.epochs, resuming from cfg.resume; returns a summary."""
    cfg = check_config(cfg, distill)
    info = init_distributed(cfg.torch_device)
    lock = RunLock(cfg.output).acquire() if info.is_main else None  # before anything is written there
    try:
        return _train(cfg, distill, info)
    finally:
        if lock is not None:
            lock.release()
        shutdown_distributed(info)


class TrainingDiverged(RuntimeError):
    """Non-finite losses or gradients for more consecutive steps than train.max_nonfinite_steps."""


def _checkpoint_to_resume(cfg: RunConfig, manager: CheckpointManager,
                          info: DistInfo) -> tuple[str | None, TrainingCheckpoint | None]:
    """(path, state) of the checkpoint every rank resumes from, or (None, None): rank 0 picks it
    (setting corrupt ones aside) and checks it fits this config before config.json is written."""
    resume = None
    if info.is_main:
        left = manager.clean_leftovers()
        if left:
            print(f"removed {len(left)} temporary file(s) an interrupted write left in {cfg.output}")
        resume = find_resume(cfg, manager)
    resume_path = all_gather_objects(resume[0] if resume else None, info)[0]
    return resume_path, resume[1] if resume else (manager.load(resume_path) if resume_path else None)


def _restore(state: TrainingCheckpoint | None, path: str | None, model, optimizer, scaler,
             info: DistInfo) -> tuple[int, int, int, dict]:
    """Model, optimizer, scaler and every rank's RNG states from a checkpoint; returns (epoch, batch in
    epoch, step, the running sums of a checkpoint taken mid-epoch: the epoch's loss covers all of it)."""
    if state is None:
        return 0, 0, 0, {}
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    scaler.load_state_dict(state.scaler)
    if len(state.rng) == info.world_size:
        restore_rng_state(state.rng[info.rank])
    else:
        warnings.warn(f"{path}: saved by {len(state.rng)} process(es), resumed by {info.world_size}; "
                      "random streams restart from the seed", stacklevel=3)
    if info.is_main:
        print(f"resumed from {path} at epoch {state.epoch}, step {state.step}")
    return state.epoch, state.batch_in_epoch, state.step, (state.epoch_partial or {}) if state.batch_in_epoch else {}


def _save_checkpoint(manager: CheckpointManager, info: DistInfo, model, optimizer, scaler, schedule, epoch: int,
                     batch_in_epoch: int, step: int, epoch_partial: dict | None, config: dict,
                     metric: float | None) -> None:
    """Every rank's RNG states gathered, then rank 0 writes the checkpoint; a state holding NaN or inf
    is never written (nor rotates good checkpoints away)."""
    model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
    bad = nonfinite_tensors({"model": model_state, "optimizer": optimizer_state["state"]})
    if bad:
        raise TrainingDiverged(f"epoch {epoch}, step {step}: non-finite values in "
                               f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; no checkpoint written "
                               f"(the last good one: {manager.latest()})")
    rng = all_gather_objects(capture_rng_state(), info)
    if info.is_main:
        manager.save(TrainingCheckpoint(model=model_state, optimizer=optimizer_state, scaler=scaler.state_dict(),
                                        scheduler=schedule.state_dict(), epoch=epoch, batch_in_epoch=batch_in_epoch,
                                        step=step, epoch_partial=epoch_partial, rng=rng, config=config), metric)
    barrier(info)


class NonFiniteSteps:
    """Steps with a non-finite loss or gradient: each is skipped, printed and logged; more than
    `limit` in a row stop the run, naming the last good checkpoint."""

    def __init__(self, limit: int, log: JsonLog, info: DistInfo, manager: CheckpointManager):
        self.limit, self.log, self.info, self.manager, self.in_a_row = limit, log, info, manager, 0

    def after_step(self, finite: bool, epoch: int, step: int, mean_loss: float, grad_norm: float) -> None:
        if finite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.log.write(event="skipped_step", epoch=epoch, step=step + 1, loss=mean_loss, grad_norm=grad_norm)
        if self.info.is_main:
            print(f"epoch {epoch + 1}, step {step + 1}: non-finite loss or gradient (loss {mean_loss:.4g}, gradient "
                  f"norm {grad_norm:.4g}); step skipped ({self.in_a_row} in a row)", flush=True)
        if self.in_a_row > self.limit:
            raise TrainingDiverged(
                f"epoch {epoch + 1}, step {step + 1}: {self.in_a_row} steps in a row with a non-finite loss or gradient "
                f"(train.max_nonfinite_steps is {self.limit}); the run stopped, the last good checkpoint is "
                f"{self.manager.latest()} (lower the learning rate, or check the data)")


def _peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): CUDA's peak allocated, or the process's peak resident set so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_allocated"
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_max_rss"


def _choose_threads(cfg: RunConfig, model: nn.Module, teacher: nn.Module | None, amp_dtype) -> int:
    """One thread or all usable cores for this run's CPU steps, measured on a step of random clips of
    the run's shape (dvfl_kernels.choose_training_threads); the model's gradients and every random
    stream are as they were before, so the run's numbers do not depend on the measuring."""
    data, train = cfg.data, cfg.train
    generator = torch.Generator().manual_seed(0)
    clips = torch.randn(train.batch_size, data.num_frames, 3, data.size, data.size, generator=generator)
    targets = torch.randint(0, data.num_classes, (train.batch_size,), generator=generator)
    was_training, rng = model.training, capture_rng_state()
    model.train()

    def step() -> None:
        with autocast(torch.device("cpu"), amp_dtype):
            loss = F.cross_entropy(model(clips).float(), targets)
            if teacher is not None:
                with torch.no_grad():
                    teacher(clips)
        loss.backward()

    key = (cfg.model.name, repr(cfg.model.kwargs), tuple(clips.shape), str(amp_dtype),
           None if teacher is None else cfg.teacher.name)
    try:
        return dvfl_kernels.choose_training_threads(key, step)
    finally:
        for parameter in model.parameters():
            parameter.grad = None
        model.train(was_training)
        restore_rng_state(rng)


def measure_threads(cfg: dict | RunConfig, distill: bool = False) -> int:
    """The CPU thread count run_training(cfg, distill) will choose (measured now on models of the
    run's architecture with random weights, or read from the probe cache): what the demo plans its
    side-by-side runs with. Leaves torch's thread count at that value."""
    cfg = check_config(cfg, distill)
    dvfl_kernels.RUNTIME.use_verdicts(cfg.verdicts)
    model = build_model(cfg.model, cfg.data)
    teacher = None
    if distill:  # random weights: only its shape and cost matter here
        teacher = build_model(teacher_model_config(cfg), cfg.data).requires_grad_(False).eval()
    return _choose_threads(cfg, model, teacher, autocast_dtype(cfg.train.amp, torch.device("cpu")))


def _train(cfg: RunConfig, distill: bool, info: DistInfo) -> TrainingSummary:
    train, data = cfg.train, cfg.data
    dvfl_kernels.RUNTIME.use_verdicts(cfg.verdicts)  # a run repeated from its config.json
    torch.manual_seed(cfg.seed + info.rank)
    out = cfg.output
    manager = CheckpointManager(out, train.keep_last)
    dataset = train_dataset(cfg)
    # distillation reads the teacher's logits from kd.teacher_cache when set, else runs the teacher;
    # a cache built for another run is refused here, before anything is written to the output
    cached = cached_teacher(cfg, distill, info, len(dataset))
    resume_path, state = _checkpoint_to_resume(cfg, manager, info)
    saved_config = cfg.with_absolute_paths().to_dict()  # in config.json and every checkpoint
    if info.is_main:
        write_json(saved_config, os.path.join(out, "config.json"))
    log = JsonLog(os.path.join(out, "log.jsonl") if info.is_main else None,
                  os.path.join(out, "tensorboard") if train.tensorboard else None)
    log.truncate_after(state.step if state else 0)

    val_set = eval_dataset(cfg, *train.eval_views) if train.eval_every else None
    model = build_model(cfg.model, data).to(info.device)
    objective = build_objective(cfg, distill, info.device, cached)
    amp_dtype = autocast_dtype(train.amp, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)

    global_batch = train.batch_size * train.accumulation * info.world_size
    optimizer = build_optimizer(model, scaled_lr(train.base_lr, global_batch, train.reference_batch),
                                train.weight_decay, train.momentum, train.optimizer, train.weight_decay_on)
    if info.is_main and train.weight_decay > 0 and train.weight_decay_on == "nothing":
        print(f"train.weight_decay {train.weight_decay:g} applies to no parameter: train.weight_decay_on is "
              "'nothing', what the public training code effectively did (set it to 'weights' to decay weights)")
    sampler = TrainSampler(len(dataset), train.batch_size, info, cfg.seed)
    per_epoch = batches_per_epoch(len(sampler), train.batch_size, train.accumulation)
    steps_per_epoch = per_epoch // train.accumulation
    if steps_per_epoch == 0:
        raise ValueError(f"train.accumulation: {train.accumulation} micro-batches per step is more than the "
                         f"{len(sampler) // train.batch_size} each process gets per epoch")
    schedule = WarmupCosine(
        scaled_lr(train.base_lr, global_batch, train.reference_batch), train.epochs * steps_per_epoch,
        train.warmup_epochs * steps_per_epoch, scaled_lr(train.warmup_lr, global_batch, train.reference_batch),
        scaled_lr(train.min_lr, global_batch, train.reference_batch),
    )
    epoch, batch_in_epoch, step, partial = _restore(state, resume_path, model, optimizer, scaler, info)
    del state
    if info.device.type == "cpu":
        threads = _choose_threads(cfg, model, objective.teacher.model, amp_dtype)
        if info.is_main:
            how = "given" if dvfl_kernels.cpu_threads.user_threads() is not None else "measured fastest for this run"
            print(f"CPU threads: {threads} ({how}; {dvfl_kernels.usable_cores()} usable cores)", flush=True)

    ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) if info.enabled else model
    forward = torch.compile(ddp) if cfg.model.compile else ddp

    def checkpoint(metric: float | None = None, epoch_partial: dict | None = None) -> None:
        _save_checkpoint(manager, info, model, optimizer, scaler, schedule, epoch, batch_in_epoch, step, epoch_partial,
                         saved_config, metric)
        if info.is_main:  # the CPU engine's choices so far: the same run elsewhere makes them too
            write_json({**saved_config, "verdicts": dvfl_kernels.RUNTIME.verdict_table()}, os.path.join(out, "config.json"))

    summary = TrainingSummary(out)
    nonfinite = NonFiniteSteps(train.max_nonfinite_steps, log, info, manager)
    while epoch < train.epochs:
        model.train()
        if info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(info.device)
        start = time.perf_counter() - partial.get("time_s", 0.0)
        clips_seen, loss_sum, loss_count = partial.get("clips", 0), partial.get("loss_sum", 0.0), partial.get("loss_count", 0)
        skipped_steps, skipped_before = partial.get("skipped_steps", 0), dataset.skipped_total()
        one_thread_before = dvfl_kernels.cpu_threads.one_thread_calls()
        step_loss = torch.zeros((), device=info.device)
        bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch // train.accumulation, desc=f"epoch {epoch + 1}/{train.epochs}",
                   disable=not (info.is_main and train.progress and interactive()), dynamic_ncols=True)
        for batch, clips, targets in epoch_batches(cfg, dataset, sampler, info, epoch, batch_in_epoch, per_epoch):
            last_micro = (batch + 1) % train.accumulation == 0
            sync = contextlib.nullcontext() if last_micro or not info.enabled else ddp.no_sync()
            # on CPU: one thread for a while after a step whose cores another process shared
            with sync, dvfl_kernels.cpu_threads.shared_core_guard(clips, training=True):
                with autocast(info.device, amp_dtype):
                    logits = forward(clips)
                    teacher_logits = objective.teacher.logits(clips, epoch, batch)
                loss = objective.criterion(logits, teacher_logits, targets)
                scaler.scale(loss / train.accumulation).backward()
            step_loss += loss.detach()
            clips_seen += clips.shape[0] * info.world_size
            batch_in_epoch = batch + 1
            if not last_micro:
                continue

            lr = schedule.apply(optimizer, step)
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), train.clip_grad)
            # fp16's scaler skips steps with inf/NaN gradients itself (and lowers its scale); any other
            # non-finite loss or gradient skips the step here, and too many in a row stop the run
            # one host sync per step for both numbers
            step_loss_value, grad_norm_value = torch.stack([step_loss, grad_norm.to(step_loss)]).tolist()
            finite = math.isfinite(step_loss_value) and (scaler.is_enabled() or math.isfinite(grad_norm_value))
            if finite:
                scaler.step(optimizer)
                loss_sum, loss_count = loss_sum + step_loss_value, loss_count + train.accumulation
            else:
                skipped_steps += 1
            nonfinite.after_step(finite, epoch, step, step_loss_value / train.accumulation, grad_norm_value)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step_loss.zero_()
            step += 1
            bar.update(1)
            if finite and (step % train.log_every == 0 or batch_in_epoch == per_epoch):
                record = {"loss": loss.item(), "lr": lr, "grad_norm": grad_norm_value,
                          "clips_per_s": clips_seen / (time.perf_counter() - start)}
                record.update(objective.criterion.logged())
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()})
                if bar.disable and info.is_main and train.progress:  # not a terminal: one plain line
                    in_epoch = batch_in_epoch // train.accumulation
                    print(f"epoch {epoch + 1}/{train.epochs} step {in_epoch}/{steps_per_epoch}: "
                          + ", ".join(f"{k} {v:.4g}" for k, v in record.items()), flush=True)
                log.write(event="step", epoch=epoch, step=step, **record)
            if train.save_every_steps and step % train.save_every_steps == 0 and batch_in_epoch < per_epoch:
                checkpoint(epoch_partial={"loss_sum": loss_sum, "loss_count": loss_count, "clips": clips_seen,
                                          "time_s": time.perf_counter() - start, "skipped_steps": skipped_steps})
        bar.close()

        skipped_videos = sum(all_gather_objects(dataset.skipped_total() - skipped_before, info))
        elapsed = time.perf_counter() - start
        peak_bytes, peak_kind = _peak_memory(info.device)
        record = EpochRecord(
            epoch=epoch, step=step, train_loss=loss_sum / loss_count if loss_count else float("nan"), time_s=elapsed,
            clips_per_s=clips_seen / elapsed, skipped_steps=skipped_steps, skipped_videos=skipped_videos,
            peak_memory_bytes=peak_bytes, peak_memory_kind=peak_kind,
            # CPU: micro-batches run on one thread because another process shared the cores
            one_thread_steps=dvfl_kernels.cpu_threads.one_thread_calls() - one_thread_before if info.device.type == "cpu" else None)
        epoch, batch_in_epoch, partial = epoch + 1, 0, {}
        metric = None
        if val_set is not None and (epoch % train.eval_every == 0 or epoch == train.epochs):
            result = evaluate(model, val_set, info, cfg.eval.batch_size, data.num_workers, amp_dtype)
            metric = record.val_top1 = result["top1"]
            record.val_top5 = result["top5"]
        log.write(event="epoch", **record.logged())
        summary.epochs.append(record)
        if info.is_main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.logged().items() if isinstance(v, float))
            print(f"epoch {epoch}/{train.epochs}: {shown}", flush=True)
        if epoch % train.save_every_epochs == 0 or epoch == train.epochs or metric is not None:
            checkpoint(metric)

    log.close()
    summary.best_top1, summary.last = manager.best_metric, manager.latest()
    summary.best = os.path.join(out, "best.pt") if manager.best_metric is not None else None
    return summary
