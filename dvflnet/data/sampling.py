"""Which frames of a video make a clip (the public code's SampleFrames with clip_len=1).

A clip is `num_segments` frames, one per segment. The usable span is `num_frames - frame_interval + 1`
(frame_interval trims the tail); it is cut into equal segments; training takes a random frame in
each segment, testing the segment centres. Indices past the end of a short video wrap around.
"""
from __future__ import annotations

import numpy as np


def _check(num_frames: int, num_segments: int, frame_interval: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames: the video has no frames (got {num_frames})")
    if num_segments < 1 or frame_interval < 1:
        raise ValueError(f"num_segments and frame_interval must be >= 1, got {num_segments}, {frame_interval}")


def segment_indices(
    num_frames: int, num_segments: int = 8, frame_interval: int = 4, train: bool = True, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frame indices (num_segments,) of one clip of a `num_frames`-frame video."""
    _check(num_frames, num_segments, frame_interval)
    span = num_frames - frame_interval + 1
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        segment = span // num_segments
        if segment > 0:
            offsets = np.arange(num_segments) * segment + rng.integers(0, segment, size=num_segments)
        elif num_frames > max(num_segments, frame_interval):
            offsets = np.sort(rng.integers(0, span, size=num_segments))
        else:
            offsets = np.zeros(num_segments, dtype=np.int64)
    else:
        segment = span / num_segments
        offsets = (np.arange(num_segments) * segment + segment / 2).astype(np.int64) if span > 0 else np.zeros(num_segments, np.int64)
    return np.mod(offsets.astype(np.int64), num_frames)


def multiview_indices(num_frames: int, num_segments: int = 8, num_clips: int = 4) -> np.ndarray:
    """Deterministic test views: (num_clips, num_segments) indices, clip c shifted by c/num_clips of a
    segment (every frame interval 1), so the clips tile the video evenly."""
    _check(num_frames, num_segments, 1)
    segment = num_frames / num_segments
    starts = np.arange(num_segments) * segment
    shifts = (np.arange(num_clips) + 0.5) / num_clips * segment
    return np.mod((starts[None, :] + shifts[:, None]).astype(np.int64), num_frames)
