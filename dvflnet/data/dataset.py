"""Video datasets over the public CSV format: `<video path relative to root>,<0-based int label>`."""
from __future__ import annotations

import csv
import os
import re
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from .sampling import multiview_indices, segment_indices
from .transforms import draw_train, eval_views, train_batch
from .video import DecodedVideos, VideoReadError, read_frames, video_length


class AnnotationError(ValueError):
    """A bad line in an annotation CSV; the message names the file and the line."""


_LABEL = re.compile(r"[0-9]+")
# Counters of skipped videos, one slot per data-loader worker (slot 0: the main process), in shared
# memory: workers are separate processes, and each writes only its own slot.
_MAX_WORKERS = 256


def csv_rows(csv_path: str):
    """(line number, [fields]) of the non-empty lines: UTF-8 with or without a BOM, quoted fields
    (csv.writer's output), spaces around fields stripped."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            for fields in reader:
                fields = [field.strip() for field in fields]
                if any("\x00" in field for field in fields):  # Python's csv reads NUL bytes as text
                    raise AnnotationError(f"{csv_path}:{reader.line_num}: a NUL byte: not a text CSV line")
                if any(fields):
                    yield reader.line_num, fields
        except (csv.Error, UnicodeDecodeError) as err:
            raise AnnotationError(f"{csv_path}:{reader.line_num + 1}: not a readable CSV line ({err})") from None


def _parse_label(text: str, where: str, what: str = "label") -> int:
    # int() also takes "0_1", "+1", " 1" and non-ASCII digits: a label is plain ASCII digits only
    if not _LABEL.fullmatch(text):
        raise AnnotationError(f"{where}: {what} {text!r} is not a non-negative integer")
    return int(text)


def read_annotations(csv_path: str, root: str, num_classes: int | None = None) -> list[tuple[str, int]]:
    """(absolute video path, label) per line; every line checked (format, label type and range).

    A line is `<path>,<label>`; a path with commas is quoted (as csv.writer writes it) or, unquoted,
    everything before the last comma."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"annotations: no such file: {csv_path}")
    items = []
    for number, fields in csv_rows(csv_path):
        where = f"{csv_path}:{number}"
        path, label_text = ",".join(fields[:-1]).strip(), fields[-1]
        if len(fields) < 2 or not path:
            raise AnnotationError(f"{where}: expected '<video path>,<label>', got {','.join(fields)!r}")
        label = _parse_label(label_text, where)
        if num_classes is not None and label >= num_classes:
            raise AnnotationError(f"{where}: label {label} is outside [0, {num_classes}) for {path}")
        items.append((os.path.join(root, path), label))
    if not items:
        raise AnnotationError(f"{csv_path}: no videos listed")
    return items


def read_class_names(csv_path: str) -> list[str]:
    """Class names from a labels CSV of `<id>,<name>` lines (an `id,name` header allowed), ids 0..K-1."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"labels: no such file: {csv_path}")
    names: dict[int, str] = {}
    for number, fields in csv_rows(csv_path):
        where = f"{csv_path}:{number}"
        if not names and [f.lower() for f in fields] == ["id", "name"]:
            continue
        if len(fields) < 2 or not fields[1]:
            raise AnnotationError(f"{where}: expected '<id>,<name>', got {','.join(fields)!r}")
        class_id = _parse_label(fields[0], where, "class id")
        if class_id in names:
            raise AnnotationError(f"{where}: class id {class_id} is listed twice")
        names[class_id] = ",".join(fields[1:])
    if sorted(names) != list(range(len(names))) or not names:
        raise AnnotationError(f"{csv_path}: expected class ids 0..K-1, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def test_views(path: str, num_frames: int, frame_interval: int, num_clips: int, num_crops: int, size: int,
               short_side: int, start: int = 0, stop: int | None = None, decoded: DecodedVideos | None = None) -> torch.Tensor:
    """The deterministic test views (num_clips * num_crops, num_frames, 3, size, size) of a video, or of
    its frames [start, stop) (stop: the video's length when None): 1 clip = the segment centres,
    more = clips tiling the span; 1 crop = centre, 3 = three along the long side. `decoded`: a cache of
    decoded videos to read from (the file otherwise)."""
    read = decoded.read_frames if decoded is not None else read_frames
    stop = (decoded.video_length(path) if decoded is not None else video_length(path)) if stop is None else stop
    length = stop - start
    if num_clips == 1:
        indices = segment_indices(length, num_frames, frame_interval, train=False)[None]
    else:
        indices = multiview_indices(length, num_frames, num_clips)
    frames = read(path, (indices + start).reshape(-1)).unflatten(0, indices.shape)
    return torch.stack([view for clip in frames for view in eval_views(clip, size, num_crops, short_side)])


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
        decoded_cache_bytes: int = 0,
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
        # decode each video once when the dataset fits in the budget (data.decoded_cache_mb)
        self.decoded = DecodedVideos.shared(decoded_cache_bytes) if decoded_cache_bytes > 0 else None
        self.skipped: list[str] = []  # this process's skipped files (warned once each)
        self.skip_counts = torch.zeros(_MAX_WORKERS + 1, dtype=torch.int64).share_memory_()

    def skipped_total(self) -> int:
        """Videos skipped so far by every process that read this dataset (workers included)."""
        return int(self.skip_counts.sum())

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Training randomness depends on (seed, epoch, index): reproducible, new every epoch."""
        self.epoch = epoch

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)

    def _load_train(self, index: int):
        """(decoded clip, its augmentation draws, label): every random choice from (seed, epoch, index)."""
        path, label = self.items[index]
        generator = self._generator(index)
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
        read = self.decoded.read_frames if self.decoded is not None else read_frames
        clip = read(path, lambda length: segment_indices(length, self.num_frames, self.frame_interval, True, rng))
        draw = draw_train(tuple(clip.shape[1:3]), generator, self.short_side, self.flip, crop_area=self.crop_area)
        return clip, draw, label

    def _load(self, index: int):
        if self.mode == "train":
            return self._load_train(index)
        views = test_views(self.items[index][0], self.num_frames, self.frame_interval, self.num_clips, self.num_crops,
                           self.size, self.short_side, decoded=self.decoded)
        return views, self.items[index][1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """The items at `indices` (what a DataLoader fetches for one batch): training clips are
        augmented together (``transforms.train_batch``), each with its own draws, as one at a time."""
        loaded = [self._load_readable(index) for index in indices]
        if self.mode != "train":
            return loaded
        clips = train_batch([clip for clip, _, _ in loaded], [draw for _, draw, _ in loaded], self.size, self.short_side)
        return [(clip, label) for clip, (_, _, label) in zip(clips, loaded)]

    def _load_readable(self, index: int):
        """_load(index), or with bad_video "skip" the next readable video's."""
        for _ in range(len(self.items)):
            try:
                return self._load(index)
            except VideoReadError as err:
                if self.bad_video == "fail":
                    raise
                worker = torch.utils.data.get_worker_info()
                self.skip_counts[0 if worker is None else 1 + worker.id % _MAX_WORKERS] += 1
                if err.path not in self.skipped:
                    self.skipped.append(err.path)
                    warnings.warn(f"skipping unreadable video ({err}); skipped so far: {self.skipped}", stacklevel=2)
                index = (index + 1) % len(self.items)
        raise VideoReadError(self.items[index][0], "no readable video left in the dataset")
