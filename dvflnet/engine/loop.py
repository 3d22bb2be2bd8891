"""Training, distillation and evaluation: the recipe as plain functions, top-down.

    summary = run_training(cfg)                 # a teacher, or a student from scratch
    summary = run_training(cfg, distill=True)   # student + frozen teacher (loaded whole, head included)
    results = run_evaluation(cfg)               # 1x1 and 4x3 views, per-class accuracy, confusion

`cfg` is the nested dict of ``dvflnet.engine.config`` (DEFAULTS <- YAML <- --opts). Under torchrun
every process runs the same function; rank 0 writes logs, checkpoints and reports.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import resource
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import AnnotationError, VideoCSVDataset, VideoReadError, mixup_cutmix, read_class_names, smooth_one_hot
from ..losses import DistillationLoss
from ..models import CheckpointError, create_model, load_checkpoint
from .checkpoint import CheckpointManager, RunLock, capture_rng_state, nonfinite_tensors, restore_rng_state
from ..atomic import write_json
from .config import ConfigError, check_config
from .distributed import DistInfo, ShardSampler, TrainSampler, all_gather_objects, barrier, init_distributed, shutdown_distributed
from .optim import build_optimizer, scaled_lr
from .schedule import WarmupCosine
from .teacher_cache import TeacherCache


# -- building blocks ---------------------------------------------------------------------------------
def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The recipe's mixed precision: bf16 autocast on GPU; CPU runs in fp32 unless asked."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def build_model(model_cfg: dict, data_cfg: dict) -> nn.Module:
    kwargs = dict(model_cfg.get("kwargs") or {})
    if model_cfg.get("drop_path_rate") is not None:
        kwargs["drop_path_rate"] = model_cfg["drop_path_rate"]
    model = create_model(
        model_cfg["name"], num_classes=data_cfg["num_classes"], num_frames=data_cfg["num_frames"],
        img_size=data_cfg["size"], backend=model_cfg.get("backend", "auto"), **kwargs,
    )
    if model_cfg.get("pretrained"):
        # a video checkpoint of another dataset keeps our fresh head; a 2D one seeds the spatial parts
        print(load_checkpoint(model, model_cfg["pretrained"], reset_head=True))
    return model


def build_teacher(cfg: dict, device: torch.device) -> nn.Module:
    """The trained teacher, whole: backbone and head from its checkpoint (strict), frozen, eval mode."""
    teacher_cfg = dict(cfg["teacher"], drop_path_rate=None, pretrained=None, backend=cfg["model"]["backend"])
    teacher = build_model(teacher_cfg, cfg["data"])
    load_checkpoint(teacher, cfg["teacher"]["checkpoint"], strict=True)
    return teacher.requires_grad_(False).eval().to(device)


def train_dataset(cfg: dict) -> VideoCSVDataset:
    data = cfg["data"]
    return VideoCSVDataset(
        data["root"], data["train_csv"], data["num_frames"], data["frame_interval"], "train", size=data["size"],
        short_side=data["short_side"], flip=data["flip"], num_classes=data["num_classes"], bad_video=data["bad_video"],
        seed=cfg["seed"], crop_area=data["crop_area"],
    )


def test_dataset(cfg: dict, clips: int, crops: int, csv: str | None = None) -> VideoCSVDataset:
    data = cfg["data"]
    return VideoCSVDataset(
        data["root"], csv or data["val_csv"], data["num_frames"], data["frame_interval"], "test", num_clips=clips,
        num_crops=crops, size=data["size"], short_side=data["test_short_side"], num_classes=data["num_classes"],
    )


def _loader(dataset, batch_size: int, sampler, num_workers: int, device: torch.device, drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=False,
        # a generator of its own: creating the iterator must not draw from the global RNG, or a resumed
        # run's dropout / drop-path stream would shift
        generator=torch.Generator().manual_seed(0),
    )


def _step_generator(seed: int, rank: int, epoch: int, batch: int) -> torch.Generator:
    """Mixup randomness per (seed, rank, epoch, micro-batch): a resumed run draws the same boxes."""
    return torch.Generator().manual_seed((((seed * 1009 + rank) * 100003 + epoch) * 1000003 + batch) % 2**63)


def batches_per_epoch(num_samples: int, batch_size: int, accumulation: int) -> int:
    """Micro-batches each rank trains on per epoch: whole batches, whole optimizer steps."""
    return num_samples // batch_size // accumulation * accumulation


def epoch_batches(cfg: dict, dataset: VideoCSVDataset, sampler: TrainSampler, info: DistInfo, epoch: int,
                  first: int, stop: int):
    """(micro-batch index, clips, targets) for micro-batches [first, stop) of `epoch` on this rank, on
    the device: the training stream (sampler order, per-clip augmentation, then mixup / cutmix drawn
    per micro-batch). The teacher cache replays exactly this stream, so both go through here."""
    train, data = cfg["train"], cfg["data"]
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch, first * train["batch_size"])
    loader = _loader(dataset, train["batch_size"], sampler, data["num_workers"], info.device, drop_last=True)
    for batch, (clips, labels) in enumerate(batches(loader), start=first):
        if batch >= stop:
            break
        clips, targets = clips.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)
        if train["mixup"] and epoch >= train["mixup_start_epoch"]:
            clips, targets = mixup_cutmix(
                clips, targets, data["num_classes"], _step_generator(cfg["seed"], info.rank, epoch, batch),
                train["label_smoothing"], train["cutmix_prob"], train["mixup_alpha"], train["cutmix_alpha"],
            )
        elif train["mixup"]:  # whole clips before mixup starts: the same soft targets, unmixed
            targets = smooth_one_hot(targets, data["num_classes"], train["label_smoothing"])
        yield batch, clips, targets


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda_allocated"}
    # Linux reports ru_maxrss in KiB; the process's peak resident set so far
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_memory_kind": "cpu_max_rss"}


def _interactive() -> bool:
    """Progress bars on a terminal; plain lines where output goes to a file, a pipe or CI."""
    return sys.stderr.isatty()


class JsonLog:
    """Append one JSON object per line (rank 0 only); flushed so a crash keeps what was logged.

    Strict JSON: a non-finite number is written as null and its key listed under "nonfinite"."""

    def __init__(self, path: str | None):
        self.path = path
        self.file = open(path, "a") if path else None

    def write(self, **record) -> None:
        if self.file:
            bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                record = {**{k: None if k in bad else v for k, v in record.items()}, "nonfinite": bad}
            self.file.write(json.dumps(record, allow_nan=False) + "\n")
            self.file.flush()

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


# Errors a data-loader worker relays as "Caught X in DataLoader worker process N ... Original
# Traceback ...": rebuilt as the error the same code raises without workers (one line, same type).
_WORKER_ERRORS = {cls.__name__: cls for cls in (VideoReadError, AnnotationError, ConfigError, CheckpointError,
                                                 ValueError, TypeError, FileNotFoundError, OSError)}


def batches(loader: DataLoader):
    """Iterate `loader`; an error raised in a worker process comes out as it would without workers."""
    try:
        yield from loader
    except Exception as err:
        text = str(err)
        if "DataLoader worker process" not in text or "Traceback" not in text:
            raise
        name, sep, message = text.rstrip().splitlines()[-1].partition(": ")
        cls = _WORKER_ERRORS.get(name.rsplit(".", 1)[-1])
        if not sep or cls is None:
            raise
        raise (cls.from_message(message) if hasattr(cls, "from_message") else cls(message)) from None


# -- evaluation ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, dataset: VideoCSVDataset, info: DistInfo, batch_size: int = 4, num_workers: int = 0,
             amp_dtype: torch.dtype | None = None, progress: bool = False) -> dict:
    """Top-1 / top-5, per-class accuracy and the confusion matrix over `dataset`'s test views.

    Each rank scores its shard (every video exactly once over all ranks); the softmax scores of a
    video's views are summed; results are gathered exactly (no padding) and checked for coverage.
    """
    model.eval()
    sampler = ShardSampler(len(dataset), info)
    loader = _loader(dataset, batch_size, sampler, num_workers, info.device, drop_last=False)
    scores, labels = [], []
    for views, label in tqdm(batches(loader), total=len(loader), desc="evaluate",
                             disable=not (progress and info.is_main and _interactive()), leave=False):
        views = views.to(info.device, non_blocking=True)  # (B, V, T, 3, H, W)
        with autocast(info.device, amp_dtype):
            logits = model(views.flatten(0, 1))
        scores.append(logits.float().softmax(-1).unflatten(0, views.shape[:2]).sum(1).cpu())
        labels.append(label)
    num_classes = model.num_classes
    local = (sampler.indices, torch.cat(scores) if scores else torch.zeros(0, num_classes), torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))
    gathered = all_gather_objects(local, info)
    indices = [i for part in gathered for i in part[0]]
    if sorted(indices) != list(range(len(dataset))):
        raise RuntimeError(f"evaluation covered {len(set(indices))} distinct of {len(dataset)} videos ({len(indices)} results)")
    order = torch.tensor(indices).argsort()
    all_scores = torch.cat([part[1] for part in gathered])[order]
    all_labels = torch.cat([part[2] for part in gathered])[order]
    broken = (~torch.isfinite(all_scores).all(1)).nonzero().flatten().tolist()
    if broken:  # never scored: a NaN row's argmax is an arbitrary class
        raise NonFiniteOutputError(f"the model's outputs are not finite (NaN or inf) for {len(broken)} of {len(dataset)} "
                                   f"videos, e.g. {dataset.items[broken[0]][0]}; nothing was scored (broken weights?)")
    return classification_report(all_scores, all_labels, num_classes)


def classification_report(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """scores (V, K), int labels (V,) -> top-1, top-5 (%), per-class accuracy (%), confusion[true][pred]."""
    top = scores.topk(min(5, num_classes), dim=1).indices
    hits = top == labels[:, None]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, top[:, 0]), torch.ones_like(labels), accumulate=True)
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double() * 100
    return {
        "top1": hits[:, 0].double().mean().item() * 100,
        "top5": hits.any(1).double().mean().item() * 100,
        "num_videos": int(labels.numel()),
        "per_class_top1": [round(v, 4) if n else None for v, n in zip(per_class.tolist(), confusion.sum(1).tolist())],
        "confusion": confusion.tolist(),
    }


class NonFiniteOutputError(ValueError):
    """The model's outputs hold NaN or inf: reported, never scored."""


# -- training -----------------------------------------------------------------------------------------
def run_training(cfg: dict, distill: bool = False) -> dict:
    """Train (or distil) for cfg.train.epochs, resuming from cfg.resume; returns a summary."""
    check_config(cfg, distill)
    info = init_distributed(cfg.get("device"))
    lock = RunLock(cfg["output"]).acquire() if info.is_main else None  # before anything is written there
    try:
        return _train(cfg, distill, info)
    finally:
        if lock is not None:
            lock.release()
        shutdown_distributed(info)


class TrainingDiverged(RuntimeError):
    """Non-finite losses or gradients for more consecutive steps than train.max_nonfinite_steps."""


_ARCHITECTURE_KEYS = (("model", "name"), ("model", "kwargs"), ("data", "num_classes"), ("data", "num_frames"))


def _architecture_differences(saved: dict | None, cfg: dict) -> list[str]:
    """'key: checkpoint X, config Y' for each setting that shapes the model and differs."""
    if not isinstance(saved, dict):
        return []
    diffs = []
    for section, key in _ARCHITECTURE_KEYS:
        old, new = (saved.get(section) or {}).get(key), cfg[section][key]
        if old != new:
            diffs.append(f"{section}.{key}: checkpoint {old!r}, config {new!r}")
    return diffs


def with_absolute_paths(cfg: dict) -> dict:
    """The config as saved with the run: its file paths absolute, so that predict / evaluate / export
    from another folder find the class names and the data (a relative path meant the training's folder)."""
    saved = copy.deepcopy(cfg)
    for section, key in (("data", "root"), ("data", "train_csv"), ("data", "val_csv"), ("data", "labels_csv"),
                         ("model", "pretrained"), ("teacher", "checkpoint"), ("kd", "teacher_cache")):
        if saved[section].get(key):
            saved[section][key] = os.path.abspath(saved[section][key])
    return saved


def _find_resume(cfg: dict, manager: CheckpointManager) -> tuple[str, dict] | None:
    """(path, state) to resume from: cfg.resume "auto" (the newest checkpoint that loads), a path, or
    null (fresh start, refused where an earlier run's checkpoints would be mixed with this one's)."""
    if cfg["resume"] == "auto":
        found = manager.newest_valid()
    elif cfg["resume"]:
        found = cfg["resume"], manager.load(cfg["resume"])
    else:
        if manager.has_checkpoints():
            raise ConfigError(f"resume: null (a fresh start), but {cfg['output']} holds checkpoints of an earlier run; "
                              "resume it (resume: auto) or choose another output")
        return None
    if found is not None:
        diffs = _architecture_differences(found[1].get("config"), cfg)
        if diffs:
            raise ConfigError(f"{found[0]}: saved with another model than this config builds: {'; '.join(diffs)}")
    return found


def _train(cfg: dict, distill: bool, info: DistInfo) -> dict:
    train, data = cfg["train"], cfg["data"]
    torch.manual_seed(cfg["seed"] + info.rank)
    out = cfg["output"]
    manager = CheckpointManager(out, train["keep_last"])
    dataset = train_dataset(cfg)
    # distillation reads the teacher's logits from kd.teacher_cache when set, else runs the teacher;
    # a cache built for another run is refused here, before anything is written to the output
    cache = TeacherCache(cfg, info, len(dataset)) if distill and cfg["kd"]["teacher_cache"] else None
    # rank 0 picks the checkpoint (setting corrupt ones aside) and checks it fits before config.json
    # is written; every rank then loads that one
    resume = None
    if info.is_main:
        left = manager.clean_leftovers()
        if left:
            print(f"removed {len(left)} temporary file(s) an interrupted write left in {out}")
        resume = _find_resume(cfg, manager)
    resume_path = all_gather_objects(resume[0] if resume else None, info)[0]
    state = resume[1] if resume else (manager.load(resume_path) if resume_path else None)
    saved_config = with_absolute_paths(cfg)  # in config.json and every checkpoint
    if info.is_main:
        write_json(saved_config, os.path.join(out, "config.json"))
    log = JsonLog(os.path.join(out, "log.jsonl") if info.is_main else None)
    log.truncate_after(state["step"] if state else 0)

    val_set = test_dataset(cfg, *train["eval_views"]) if train["eval_every"] else None
    model = build_model(cfg["model"], data).to(info.device)
    teacher = build_teacher(cfg, info.device) if distill and cache is None else None
    amp_dtype = autocast_dtype(train["amp"], info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)

    global_batch = train["batch_size"] * train["accumulation"] * info.world_size
    optimizer = build_optimizer(model, scaled_lr(train["base_lr"], global_batch, train["reference_batch"]),
                                train["weight_decay"], train["momentum"], train["optimizer"], train["weight_decay_on"])
    if info.is_main and train["weight_decay"] > 0 and train["weight_decay_on"] == "nothing":
        print(f"train.weight_decay {train['weight_decay']:g} applies to no parameter: train.weight_decay_on is "
              "'nothing', what the public training code effectively did (set it to 'weights' to decay weights)")
    sampler = TrainSampler(len(dataset), train["batch_size"], info, cfg["seed"])
    per_epoch = batches_per_epoch(len(sampler), train["batch_size"], train["accumulation"])
    steps_per_epoch = per_epoch // train["accumulation"]
    if steps_per_epoch == 0:
        raise ValueError(f"train.accumulation: {train['accumulation']} micro-batches per step is more than the "
                         f"{len(sampler) // train['batch_size']} each process gets per epoch")
    schedule = WarmupCosine(
        scaled_lr(train["base_lr"], global_batch, train["reference_batch"]), train["epochs"] * steps_per_epoch,
        train["warmup_epochs"] * steps_per_epoch, scaled_lr(train["warmup_lr"], global_batch, train["reference_batch"]),
        scaled_lr(train["min_lr"], global_batch, train["reference_batch"]),
    )
    if distill:
        criterion = DistillationLoss(cfg["kd"]["alpha"], cfg["kd"]["temperature"],
                                     0.0 if train["mixup"] else train["label_smoothing"])

    # resume: model, optimizer, scaler, epoch / position, step, best metric, every rank's RNG states,
    # and the running sums of a checkpoint taken mid-epoch (the epoch's loss covers all of it)
    epoch, batch_in_epoch, step, partial = 0, 0, 0, {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        partial = state.get("epoch_partial") or {} if batch_in_epoch else {}
        if len(state["rng"]) == info.world_size:
            restore_rng_state(state["rng"][info.rank])
        else:
            warnings.warn(f"{resume_path}: saved by {len(state['rng'])} process(es), resumed by {info.world_size}; "
                          "random streams restart from the seed", stacklevel=2)
        if info.is_main:
            print(f"resumed from {resume_path} at epoch {epoch}, step {step}")
        del state

    ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) if info.enabled else model
    forward = torch.compile(ddp) if cfg["model"].get("compile") else ddp

    def checkpoint(metric: float | None = None, epoch_partial: dict | None = None) -> None:
        bad = nonfinite_tensors({"model": model.state_dict(), "optimizer": optimizer.state_dict()["state"]})
        if bad:  # never write (or rotate good checkpoints away for) a broken state
            raise TrainingDiverged(f"epoch {epoch}, step {step}: non-finite values in {', '.join(bad[:5])}"
                                   f"{' ...' if len(bad) > 5 else ''}; no checkpoint written (the last good one: "
                                   f"{manager.latest()})")
        rng = all_gather_objects(capture_rng_state(), info)
        if info.is_main:
            manager.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": schedule.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step,
                "epoch_partial": epoch_partial, "rng": rng, "config": saved_config,
            }, step, metric)
        barrier(info)

    summary = {"epochs": [], "output": out}
    nonfinite_run = 0  # consecutive steps skipped for a non-finite loss or gradient
    while epoch < train["epochs"]:
        model.train()
        if info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(info.device)
        start = time.perf_counter() - partial.get("time_s", 0.0)
        clips_seen, loss_sum, loss_count = partial.get("clips", 0), partial.get("loss_sum", 0.0), partial.get("loss_count", 0)
        skipped_steps, skipped_before = partial.get("skipped_steps", 0), dataset.skipped_total()
        step_loss = torch.zeros((), device=info.device)
        bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch // train["accumulation"], desc=f"epoch {epoch + 1}/{train['epochs']}",
                   disable=not (info.is_main and train["progress"] and _interactive()), dynamic_ncols=True)
        for batch, clips, targets in epoch_batches(cfg, dataset, sampler, info, epoch, batch_in_epoch, per_epoch):
            last_micro = (batch + 1) % train["accumulation"] == 0
            sync = contextlib.nullcontext() if last_micro or not info.enabled else ddp.no_sync()
            with sync:
                with autocast(info.device, amp_dtype):
                    logits = forward(clips)
                    if distill:
                        with torch.no_grad():
                            teacher_logits = teacher(clips) if cache is None else cache.logits(epoch, batch)
                if distill:
                    loss = criterion(logits.float(), teacher_logits.float(), targets)
                else:
                    loss = F.cross_entropy(logits.float(), targets, label_smoothing=0.0 if train["mixup"] else train["label_smoothing"])
                scaler.scale(loss / train["accumulation"]).backward()
            step_loss += loss.detach()
            clips_seen += clips.shape[0] * info.world_size
            batch_in_epoch = batch + 1
            if not last_micro:
                continue

            lr = schedule.apply(optimizer, step)
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), train["clip_grad"])
            # fp16's scaler skips steps with inf/NaN gradients itself (and lowers its scale); any other
            # non-finite loss or gradient skips the step here, and too many in a row stop the run
            # one host sync per step for both numbers
            step_loss_value, grad_norm_value = torch.stack([step_loss, grad_norm.to(step_loss)]).tolist()
            finite = math.isfinite(step_loss_value) and (scaler.is_enabled() or math.isfinite(grad_norm_value))
            if finite:
                scaler.step(optimizer)
                loss_sum, loss_count, nonfinite_run = loss_sum + step_loss_value, loss_count + train["accumulation"], 0
            else:
                skipped_steps, nonfinite_run = skipped_steps + 1, nonfinite_run + 1
                mean_loss = step_loss_value / train["accumulation"]
                log.write(event="skipped_step", epoch=epoch, step=step + 1, loss=mean_loss, grad_norm=grad_norm_value)
                if info.is_main:
                    print(f"epoch {epoch + 1}, step {step + 1}: non-finite loss or gradient "
                          f"(loss {mean_loss:.4g}, gradient norm {grad_norm_value:.4g}); "
                          f"step skipped ({nonfinite_run} in a row)", flush=True)
                if nonfinite_run > train["max_nonfinite_steps"]:
                    raise TrainingDiverged(
                        f"epoch {epoch + 1}, step {step + 1}: {nonfinite_run} steps in a row with a non-finite loss or "
                        f"gradient (train.max_nonfinite_steps is {train['max_nonfinite_steps']}); the run stopped, "
                        f"the last good checkpoint is {manager.latest()} (lower the learning rate, or check the data)")
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step_loss.zero_()
            step += 1
            bar.update(1)
            if finite and (step % train["log_every"] == 0 or batch_in_epoch == per_epoch):
                record = {"loss": loss.item(), "lr": lr, "grad_norm": grad_norm_value,
                          "clips_per_s": clips_seen / (time.perf_counter() - start)}
                if distill:
                    record.update({k: v.item() for k, v in criterion.last_parts.items()})
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()})
                if bar.disable and info.is_main and train["progress"]:  # not a terminal: one plain line
                    in_epoch = batch_in_epoch // train["accumulation"]
                    print(f"epoch {epoch + 1}/{train['epochs']} step {in_epoch}/{steps_per_epoch}: "
                          + ", ".join(f"{k} {v:.4g}" for k, v in record.items()), flush=True)
                log.write(event="step", epoch=epoch, step=step, **record)
            if train["save_every_steps"] and step % train["save_every_steps"] == 0 and batch_in_epoch < per_epoch:
                checkpoint(epoch_partial={"loss_sum": loss_sum, "loss_count": loss_count, "clips": clips_seen,
                                          "time_s": time.perf_counter() - start, "skipped_steps": skipped_steps})
        bar.close()

        skipped_videos = sum(all_gather_objects(dataset.skipped_total() - skipped_before, info))
        record = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(loss_count, 1) if loss_count else float("nan"),
                  "time_s": time.perf_counter() - start, "clips_per_s": clips_seen / (time.perf_counter() - start),
                  "skipped_steps": skipped_steps, "skipped_videos": skipped_videos, **_peak_memory(info.device)}
        epoch, batch_in_epoch, partial = epoch + 1, 0, {}
        metric = None
        if val_set is not None and (epoch % train["eval_every"] == 0 or epoch == train["epochs"]):
            result = evaluate(model, val_set, info, cfg["eval"]["batch_size"], data["num_workers"], amp_dtype)
            metric = result["top1"]
            record.update(val_top1=result["top1"], val_top5=result["top5"])
        log.write(event="epoch", **record)
        summary["epochs"].append(record)
        if info.is_main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))
            print(f"epoch {epoch}/{train['epochs']}: {shown}", flush=True)
        if epoch % train["save_every_epochs"] == 0 or epoch == train["epochs"] or metric is not None:
            checkpoint(metric)

    log.close()
    summary.update(best_top1=manager.best_metric, last=manager.latest(),
                   best=os.path.join(out, "best.pt") if manager.best_metric is not None else None,
                   train_time_s=sum(r["time_s"] for r in summary["epochs"]))
    return summary


# -- evaluation runs ---------------------------------------------------------------------------------
def run_evaluation(cfg: dict) -> dict:
    """Evaluate cfg.eval.checkpoint (default: output/best.pt) with every view setting in cfg.eval.views;
    writes eval_<clips>x<crops>.json (metrics, per-class accuracy, confusion) to cfg.output."""
    check_config(cfg)
    info = init_distributed(cfg.get("device"))
    try:
        path = cfg["eval"]["checkpoint"] or os.path.join(cfg["output"], "best.pt")
        model = build_model(dict(cfg["model"], pretrained=None), cfg["data"])
        load_checkpoint(model, path, strict=True)
        model.to(info.device)
        amp_dtype = autocast_dtype(cfg["train"]["amp"], info.device)
        results = {}
        for clips, crops in cfg["eval"]["views"]:
            report = evaluate(model, test_dataset(cfg, clips, crops), info, cfg["eval"]["batch_size"],
                              cfg["data"]["num_workers"], amp_dtype, progress=cfg["train"]["progress"])
            report.update(checkpoint=path, views=[clips, crops], classes=_class_names(cfg))
            results[f"{clips}x{crops}"] = report
            if info.is_main:
                write_json(report, os.path.join(cfg["output"], f"eval_{clips}x{crops}.json"))
        return results
    finally:
        shutdown_distributed(info)


def _class_names(cfg: dict) -> list[str] | None:
    path = cfg["data"]["labels_csv"]
    return read_class_names(path) if path else None
