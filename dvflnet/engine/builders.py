"""What a run is built from: the model and the frozen teacher, the datasets and loaders, mixed
precision, and the training stream (sampler order, per-clip augmentation, mixup per micro-batch) that
training and the teacher cache both replay. Plain functions of the run config."""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import AnnotationError, VideoCSVDataset, VideoReadError, mixup_cutmix, smooth_one_hot
from ..models import CheckpointError, create_model, load_checkpoint
from .distributed import DistInfo, TrainSampler
from .schema import ConfigError, DataConfig, ModelConfig, RunConfig


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The recipe's mixed precision: bf16 autocast on GPU; CPU runs in fp32 unless asked."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def build_model(model: ModelConfig, data: DataConfig, pretrained: bool = True) -> nn.Module:
    """The model a run's config describes; `pretrained` False leaves model.pretrained unloaded (a
    checkpoint's weights come next)."""
    kwargs = dict(model.kwargs)
    if model.drop_path_rate is not None:
        kwargs["drop_path_rate"] = model.drop_path_rate
    net = create_model(model.name, num_classes=data.num_classes, num_frames=data.num_frames, img_size=data.size,
                       backend=model.backend, **kwargs)
    if pretrained and model.pretrained:
        # a video checkpoint of another dataset keeps our fresh head; a 2D one seeds the spatial parts
        print(load_checkpoint(net, model.pretrained, reset_head=True))
    return net


def teacher_model_config(cfg: RunConfig) -> ModelConfig:
    """The teacher as a model config: its variant and arguments, the student's backend."""
    return ModelConfig(name=cfg.teacher.name, kwargs=cfg.teacher.kwargs, backend=cfg.model.backend)


def build_teacher(cfg: RunConfig, device: torch.device) -> nn.Module:
    """The trained teacher, whole: backbone and head from its checkpoint (strict), frozen, eval mode."""
    teacher = build_model(teacher_model_config(cfg), cfg.data)
    load_checkpoint(teacher, cfg.teacher.checkpoint, strict=True)
    return teacher.requires_grad_(False).eval().to(device)


def train_dataset(cfg: RunConfig) -> VideoCSVDataset:
    data = cfg.data
    return VideoCSVDataset(
        data.root, data.train_csv, data.num_frames, data.frame_interval, "train", size=data.size,
        short_side=data.short_side, flip=data.flip, num_classes=data.num_classes, bad_video=data.bad_video,
        seed=cfg.seed, crop_area=list(data.crop_area), decoded_cache_bytes=data.decoded_cache_mb << 20,
    )


def eval_dataset(cfg: RunConfig, clips: int, crops: int, csv: str | None = None) -> VideoCSVDataset:
    data = cfg.data
    return VideoCSVDataset(
        data.root, csv or data.val_csv, data.num_frames, data.frame_interval, "test", num_clips=clips,
        num_crops=crops, size=data.size, short_side=data.test_short_side, num_classes=data.num_classes,
        decoded_cache_bytes=data.decoded_cache_mb << 20,
    )


def make_loader(dataset, batch_size: int, sampler, num_workers: int, device: torch.device, drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=False,
        # a generator of its own: creating the iterator must not draw from the global RNG, or a resumed
        # run's dropout / drop-path stream would shift
        generator=torch.Generator().manual_seed(0),
    )


def mixup_generator(seed: int, rank: int, epoch: int, batch: int) -> torch.Generator:
    """Mixup randomness per (seed, rank, epoch, micro-batch): a resumed run draws the same boxes."""
    return torch.Generator().manual_seed((((seed * 1009 + rank) * 100003 + epoch) * 1000003 + batch) % 2**63)


def batches_per_epoch(num_samples: int, batch_size: int, accumulation: int) -> int:
    """Micro-batches each rank trains on per epoch: whole batches, whole optimizer steps."""
    return num_samples // batch_size // accumulation * accumulation


def epoch_batches(cfg: RunConfig, dataset: VideoCSVDataset, sampler: TrainSampler, info: DistInfo, epoch: int,
                  first: int, stop: int):
    """(micro-batch index, clips, targets) for micro-batches [first, stop) of `epoch` on this rank, on
    the device: the training stream (sampler order, per-clip augmentation, then mixup / cutmix drawn
    per micro-batch). The teacher cache replays exactly this stream, so both go through here."""
    train, data = cfg.train, cfg.data
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch, first * train.batch_size)
    loader = make_loader(dataset, train.batch_size, sampler, data.num_workers, info.device, drop_last=True)
    for batch, (clips, labels) in enumerate(batches(loader), start=first):
        if batch >= stop:
            break
        clips, targets = clips.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)
        if train.mixup and epoch >= train.mixup_start_epoch:
            clips, targets = mixup_cutmix(
                clips, targets, data.num_classes, mixup_generator(cfg.seed, info.rank, epoch, batch),
                train.label_smoothing, train.cutmix_prob, train.mixup_alpha, train.cutmix_alpha,
            )
        elif train.mixup:  # whole clips before mixup starts: the same soft targets, unmixed
            targets = smooth_one_hot(targets, data.num_classes, train.label_smoothing)
        yield batch, clips, targets


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
