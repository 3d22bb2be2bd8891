"""Reading frames with decord and writing videos with PyAV.

decord readers must not be shared across forked workers (they hang), so every call opens its own
reader, in whatever process it runs; the needed frames are read in one batched call.
"""
from __future__ import annotations

import os
import weakref
from typing import Callable, Sequence

import numpy as np
import torch

from .. import interrupt
from ..atomic import write_through_path

# What counts as a video file where folders are searched (predict, prepare, resize).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video_name(name: str) -> bool:
    """A video file's name: a known extension, and not hidden (macOS's ._v_clip.avi are resource forks)."""
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


def walk_videos(root: str):
    """(folder, sorted video file names) for `root` and every folder below it, in sorted order,
    following symlinked folders (a class linked in from another disk is a class) and entering each
    real folder once (a link back up the tree is no loop). Hidden folders are not entered."""
    seen: set[str] = set()

    def visit(folder: str):
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        yield folder, [e.name for e in entries if is_video_name(e.name) and e.is_file()]
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_dir():  # is_dir follows a symlink
                yield from visit(entry.path)

    yield from visit(root)


class VideoReadError(RuntimeError):
    """A video that is missing, unreadable or truncated; the message names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path

    @classmethod
    def from_message(cls, message: str) -> "VideoReadError":
        """Rebuilt from str(error), e.g. as relayed from a data-loader worker."""
        path, _, reason = message.partition(": ")
        return cls(path, reason)


def _open(path: str):
    import decord

    if os.path.isdir(path):
        raise VideoReadError(path, "is a folder, not a video file")
    if not os.path.isfile(path):
        raise VideoReadError(path, "no such file")
    try:
        reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
        interrupt.check()
        return reader
    except Exception as err:  # decord raises its own DECORDError (a RuntimeError) for bad files
        text = str(err)
        if "st_nb" in text or "video stream" in text:  # decord's assertion for a file without one
            raise VideoReadError(path, "the file has no video stream (audio only?)") from None
        raise VideoReadError(path, f"cannot open the video ({text.splitlines()[0][:200]})") from None


def video_length(path: str | os.PathLike) -> int:
    """Number of frames the container reports."""
    return len(_open(os.fspath(path)))


def video_info(path: str | os.PathLike) -> tuple[int, float]:
    """(number of frames, average frames per second) as the container reports them."""
    reader = _open(os.fspath(path))
    fps = float(reader.get_avg_fps())
    if not fps > 0:
        raise VideoReadError(os.fspath(path), f"the container reports no frame rate ({fps})")
    return len(reader), fps


def _checked_indices(path: str, indices, length: int) -> np.ndarray:
    indices = np.asarray(indices(length) if callable(indices) else indices, dtype=np.int64)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= length:
        raise VideoReadError(path, f"frame indices must lie in [0, {length}), got {indices.tolist()}")
    return indices


class DecodedVideos:
    """Whole decoded videos kept in memory, up to `budget_bytes` of uint8 frames, for a dataset that is
    read every epoch and fits (the demo's 1,760 clips of 16 x 32 x 32 take 86 MB): each video is
    decoded once, in one batched read of all its frames, and later reads index that array. What
    `read_frames` / `video_length` of a cached video return is exactly what they return from the file
    (tested frame for frame); a file changed since (its size, modification time or inode) is decoded
    again. Videos beyond the budget are read from their files as before. The cache lives in the
    process that decodes: it serves a loader without worker processes. ``shared(budget)`` is one cache
    for every dataset of the process that asks while any holds it: the validation clips decoded for
    training's evaluations serve the final evaluation, and a run's next training run."""

    _SHARED: "weakref.WeakValueDictionary[int, DecodedVideos]" = weakref.WeakValueDictionary()

    def __init__(self, budget_bytes: int):
        self.budget_bytes, self.used_bytes = int(budget_bytes), 0
        self.videos: dict[str, tuple[tuple, torch.Tensor]] = {}  # path -> (file identity, frames)

    @classmethod
    def shared(cls, budget_bytes: int) -> "DecodedVideos":
        cache = cls._SHARED.get(int(budget_bytes))
        if cache is None:
            cache = cls._SHARED[int(budget_bytes)] = cls(budget_bytes)
        return cache

    def _video(self, path: str) -> torch.Tensor | None:
        try:
            stat = os.stat(path)
            identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except OSError:
            return None  # read_frames names what is wrong with the path
        entry = self.videos.get(path)
        if entry is not None:
            if entry[0] == identity:
                return entry[1]
            del self.videos[path]
            self.used_bytes -= entry[1].numel()
        if self.used_bytes >= self.budget_bytes:
            return None
        video = read_frames(path, np.arange)
        if self.used_bytes + video.numel() <= self.budget_bytes:
            self.videos[path] = (identity, video)
            self.used_bytes += video.numel()
        return video

    def read_frames(self, path: str | os.PathLike, indices) -> torch.Tensor:
        path = os.fspath(path)
        video = self._video(path)
        if video is None:
            return read_frames(path, indices)
        return video[torch.from_numpy(_checked_indices(path, indices, len(video)))]

    def video_length(self, path: str | os.PathLike) -> int:
        video = self._video(os.fspath(path))
        return len(video) if video is not None else video_length(path)


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray | Callable[[int], Sequence[int]]) -> torch.Tensor:
    """Frames `indices` of the video as a uint8 tensor (len(indices), H, W, 3), RGB, in one batched read.
    `indices` may be a function of the video's frame count (the file is then opened once, not twice)."""
    path = os.fspath(path)
    reader = _open(path)
    length = len(reader)
    indices = _checked_indices(path, indices, length)
    try:
        frames = reader.get_batch(indices.tolist()).asnumpy()
    except Exception as err:  # truncated or corrupt data past the header
        raise VideoReadError(path, f"cannot decode frames {indices.tolist()} ({str(err).splitlines()[0]})") from None
    interrupt.check()  # a Ctrl-C during decoding is swallowed in decord's callbacks: raise it now
    if frames.shape[0] != len(indices):
        raise VideoReadError(path, f"decoded {frames.shape[0]} frames, wanted {len(indices)} (truncated video?)")
    return torch.from_numpy(np.ascontiguousarray(frames))


def write_video(path: str | os.PathLike, frames: torch.Tensor | np.ndarray, fps: int = 25, crf: int = 18) -> None:
    """Encode uint8 RGB frames (T, H, W, 3) as H.264 in an mp4 (H even, W a multiple of 16), atomically."""
    frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 16:
        # yuv420p needs even sizes; decord mis-copies frames whose width is not a multiple of 16
        raise ValueError(f"frames: H must be even and W a multiple of 16, got {frames.shape[1]}x{frames.shape[2]}")
    write_through_path(os.fspath(path), lambda tmp: _encode(tmp, frames, fps, crf))


def _encode(path: str, frames: np.ndarray, fps: int, crf: int) -> None:
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # no macroblock-tree rate control: with it x264 wrote different bytes for the same frames from
        # run to run on these small clips (so one seed gave different datasets); without it, the same
        stream.options = {"crf": str(crf), "x264-params": "mbtree=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
