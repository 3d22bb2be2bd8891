"""Video datasets over the public CSV format: `<video path relative to root>,<0-based int label>`."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from .sampling import multiview_indices, segment_indices
from .transforms import eval_views, train_transform
from .video import VideoReadError, read_frames, video_length


class AnnotationError(ValueError):
    """A bad line in an annotation CSV; the message names the file and the line."""


def read_annotations(csv_path: str, root: str, num_classes: int | None = None) -> list[tuple[str, int]]:
    """(absolute video path, label) per line; every line checked (format, label type and range)."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"annotations: no such file: {csv_path}")
    items = []
    with open(csv_path) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(",", 1)
            if len(parts) != 2 or not parts[0]:
                raise AnnotationError(f"{csv_path}:{number}: expected '<video path>,<label>', got {line!r}")
            try:
                label = int(parts[1])
            except ValueError:
                raise AnnotationError(f"{csv_path}:{number}: label {parts[1]!r} is not an integer") from None
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise AnnotationError(f"{csv_path}:{number}: label {label} is outside [0, {num_classes}) for {parts[0]}")
            items.append((os.path.join(root, parts[0]), label))
    if not items:
        raise AnnotationError(f"{csv_path}: no videos listed")
    return items


class VideoCSVDataset(Dataset):
    """Clips of the videos listed in a CSV.

    mode "train": one clip (num_frames, 3, size, size) per video, random segments and augmentation.
    mode "test": views (num_clips * num_crops, num_frames, 3, size, size), deterministic.
    bad_video: "fail" raises VideoReadError naming the file; "skip" (train only) warns once per file,
    records it in `skipped`, and returns another video instead.
    Decoding happens in the worker that calls __getitem__, with a reader of its own.
    """

    def __init__(
        self, root: str, csv: str, num_frames: int = 8, frame_interval: int = 4, mode: str = "train",
        num_clips: int = 1, num_crops: int = 1, size: int = 224, short_side: int = 256, flip: float = 0.5,
        num_classes: int | None = None, bad_video: str = "fail", seed: int = 0, crop_area: tuple[float, float] = (0.08, 1.0),
    ):
        if mode not in ("train", "test"):
            raise ValueError(f"mode: expected 'train' or 'test', got {mode!r}")
        if bad_video not in ("fail", "skip") or (bad_video == "skip" and mode == "test"):
            raise ValueError(f"bad_video: expected 'fail', or 'skip' in train mode, got {bad_video!r} ({mode})")
        self.items = read_annotations(csv, root, num_classes)
        self.num_frames, self.frame_interval, self.mode = num_frames, frame_interval, mode
        self.num_clips, self.num_crops, self.size, self.short_side, self.flip = num_clips, num_crops, size, short_side, flip
        self.bad_video, self.seed, self.crop_area = bad_video, seed, tuple(crop_area)
        self.epoch = 0
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Training randomness depends on (seed, epoch, index): reproducible, new every epoch."""
        self.epoch = epoch

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        length = video_length(path)
        if self.mode == "train":
            generator = self._generator(index)
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
            clip = read_frames(path, segment_indices(length, self.num_frames, self.frame_interval, True, rng))
            return train_transform(clip, generator, self.size, self.short_side, self.flip, crop_area=self.crop_area), label
        if self.num_clips == 1:
            indices = segment_indices(length, self.num_frames, self.frame_interval, train=False)[None]
        else:
            indices = multiview_indices(length, self.num_frames, self.num_clips)
        frames = read_frames(path, indices.reshape(-1)).unflatten(0, indices.shape)
        views = [view for clip in frames for view in eval_views(clip, self.size, self.num_crops, self.short_side)]
        return torch.stack(views), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for _ in range(len(self.items)):
            try:
                return self._load(index)
            except VideoReadError as err:
                if self.bad_video == "fail":
                    raise
                if err.path not in self.skipped:
                    self.skipped.append(err.path)
                    warnings.warn(f"skipping unreadable video ({err}); skipped so far: {self.skipped}", stacklevel=2)
                index = (index + 1) % len(self.items)
        raise VideoReadError(self.items[index][0], "no readable video left in the dataset")
