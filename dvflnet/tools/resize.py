"""`dvflnet resize SRC DST --short-side N`: a video tree rescaled, as the paper trained on it.

Every video under SRC is written under DST at the same relative path and name: every frame, at the
source's frame rate, the shorter side N pixels, the aspect kept and both sides even (what yuv420p
needs). PyAV (and the FFmpeg inside its wheel) decodes, scales and encodes: no system ffmpeg. The
codec follows the container: VP9 for .webm, H.264 for the rest. Audio is dropped.

Resumable: a finished file is not redone, and a file is finished only once it is complete: each is
encoded into a hidden temporary file beside it and renamed into place at the end (left-over temporary
files of an interrupted run are removed at the next start). A source that cannot be decoded is
reported by path and the others go on. Parallel over files (--workers), with a progress bar.
"""
from __future__ import annotations

import os
from fractions import Fraction
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from ..data.video import VIDEO_EXTENSIONS

PARTIAL_PREFIX = ".resize-partial-"


class ResizeError(ValueError):
    """Bad arguments (the message names the argument)."""


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side `short_side`, the aspect kept, both even."""
    even = lambda x: max(2, int(round(x / 2)) * 2)  # noqa: E731
    if width <= height:
        return short_side, even(height * short_side / width)
    return even(width * short_side / height), short_side


def _encoder(path: str) -> str:
    return "libvpx-vp9" if path.lower().endswith(".webm") else "libx264"


def resize_video(src: str, dst: str, short_side: int) -> tuple[int, int, int]:
    """Rescale one video into `dst` (via a temporary file beside it); (frames, width, height)."""
    import av

    folder, name = os.path.split(dst)
    os.makedirs(folder or ".", exist_ok=True)
    partial = os.path.join(folder, PARTIAL_PREFIX + name)
    frames = 0
    try:
        with av.open(src) as source:
            if not source.streams.video:
                raise ValueError("no video stream")
            stream_in = source.streams.video[0]
            rate = stream_in.average_rate or stream_in.guessed_rate or 25
            with av.open(partial, mode="w") as target:  # the container from the extension, kept last
                stream_out = None
                for frame in source.decode(stream_in):
                    if stream_out is None:
                        width, height = scaled_size(frame.width, frame.height, short_side)
                        stream_out = target.add_stream(_encoder(dst), rate=rate)
                        stream_out.width, stream_out.height, stream_out.pix_fmt = width, height, "yuv420p"
                        stream_out.options = {"crf": "18"} if _encoder(dst) == "libx264" else {"crf": "30", "b": "0"}
                    scaled = frame.reformat(width=width, height=height, format="yuv420p")
                    # constant rate: frame i at i / rate (a variable-rate source becomes constant-rate)
                    scaled.pts, scaled.time_base = frames, 1 / Fraction(rate)
                    for packet in stream_out.encode(scaled):
                        target.mux(packet)
                    frames += 1
                if stream_out is None:
                    raise ValueError("no frame could be decoded")
                for packet in stream_out.encode():
                    target.mux(packet)
        os.replace(partial, dst)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return frames, width, height


def _job(src: str, dst: str, short_side: int) -> tuple[str, str | None]:
    try:
        resize_video(src, dst, short_side)
        return src, None
    except Exception as err:  # av.error.* and ValueError: the file is reported, the others go on
        return src, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'cannot decode'}"


@dataclass
class ResizeReport:
    done: int
    already: int
    failed: list[tuple[str, str]]  # (source path, why)
    cleaned: int  # left-over temporary files removed


def resize_tree(src: str, dst: str, short_side: int, workers: int = 1, progress: bool = True) -> ResizeReport:
    if not os.path.isdir(src):
        raise ResizeError(f"SRC: no such folder: {src}")
    if short_side < 2 or short_side % 2:
        raise ResizeError(f"--short-side: expected an even number of pixels >= 2, got {short_side}")
    if workers < 1:
        raise ResizeError(f"--workers: expected a positive number, got {workers}")
    if os.path.abspath(dst) == os.path.abspath(src) or os.path.abspath(dst).startswith(os.path.abspath(src) + os.sep):
        raise ResizeError(f"DST: must lie outside SRC ({src}), got {dst}")
    cleaned = 0
    for folder, _, files in os.walk(dst):
        for name in files:
            if name.startswith(PARTIAL_PREFIX):
                os.unlink(os.path.join(folder, name))
                cleaned += 1
    jobs, already = [], 0
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            source = os.path.join(folder, name)
            target = os.path.join(dst, os.path.relpath(source, src))
            if os.path.isfile(target):
                already += 1
            else:
                jobs.append((source, target))
    failed: list[tuple[str, str]] = []
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="file", desc="resize", disable=not progress)
    try:
        if workers == 1:
            results = (_job(s, t, short_side) for s, t in jobs)
            for source, why in results:
                if why:
                    failed.append((source, why))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_job, s, t, short_side) for s, t in jobs]
                for future in as_completed(futures):
                    source, why = future.result()
                    if why:
                        failed.append((source, why))
                    bar.update()
    finally:
        bar.close()
    return ResizeReport(len(jobs) - len(failed), already, sorted(failed), cleaned)
