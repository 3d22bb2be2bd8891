"""`dvflnet resize SRC DST --short-side N`: a video tree rescaled, as the paper trained on it.

Every video under SRC (symlinked folders followed) is written under DST at the same relative path and
name: every frame, at the source's frame rate, the shorter side N pixels, the aspect kept and both
sides even (what yuv420p needs); a rotated video (a display matrix, as phones write) is turned upright
first and its shown short side scaled. PyAV (and the FFmpeg inside its wheel) decodes, scales and
encodes: no system ffmpeg. The codec follows the container: VP9 for .webm, H.264 for the rest. Audio is dropped.

Resumable and safe to run twice at once: each file is encoded into a hidden temporary file beside it,
named after the process that writes it, read back by the decoder the training pipeline uses, and only
then renamed into place; at start, the temporary files of processes that are gone are removed (never
those of a run still going). A file already in DST counts as done only if it reads back with the
requested short side; otherwise it is made again. A source that cannot be decoded is reported by path
and the others go on. Parallel over files (--workers), with a progress bar; Ctrl-C stops the workers,
removes their unfinished files and keeps the finished ones.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import sys
from fractions import Fraction
from dataclasses import dataclass

from .. import interrupt
from ..data.video import walk_videos

PARTIAL_PREFIX = ".resize-partial-"
# PARTIAL_PREFIX<pid>-<6 hex>-<name>: the pid tells whether the file's writer is still running
_PARTIAL = re.compile(re.escape(PARTIAL_PREFIX) + r"(?P<pid>\d+)-[0-9a-f]{6}-")


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


def _partial_path(dst: str) -> str:
    folder, name = os.path.split(dst)
    return os.path.join(folder, f"{PARTIAL_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-{name}")


def _writer_alive(name: str) -> bool:
    """Whether the process that named this temporary file is still running (a file of the old unnamed
    kind has no writer left)."""
    match = _PARTIAL.match(name)
    if not match:
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stored_size(path: str) -> tuple[int, int] | None:
    """(width, height) of the first video stream of a file the decoder reads, or None."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            return stream.codec_context.width, stream.codec_context.height
    except Exception:  # av.error.*: not a video (a truncated or foreign file)
        return None


def is_done(path: str, short_side: int) -> bool:
    """A file in DST that is finished at this short side (a file of another size, or one that does not
    read back, is made again)."""
    size = stored_size(path)
    return size is not None and min(size) == short_side


def _check_reads_back(path: str, frames: int, width: int, height: int) -> None:
    """The training pipeline's reader (decord, batched) must read what was written. It cannot read
    some sizes (48x24: its batched copy expects padded rows), and those must not be written."""
    from ..data.video import VideoReadError, read_frames

    try:
        ok = tuple(read_frames(path, [0, frames - 1]).shape) == (2, height, width, 3)
    except (VideoReadError, RuntimeError):  # decord.DECORDError is a RuntimeError
        ok = False
    if not ok:
        raise ValueError(f"a {width}x{height} video written here does not read back with decord (the training "
                         f"pipeline's reader); another --short-side is needed for this source")


def resize_video(src: str, dst: str, short_side: int) -> tuple[int, int, int]:
    """Rescale one video into `dst` (via a temporary file beside it of this process's own); (frames,
    width, height)."""
    import av
    import numpy as np

    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    partial = _partial_path(dst)
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
                        # a phone video stored landscape and shown portrait: the pixels are turned upright
                        # (the output has no display matrix, and decord ignores one), and the short side is
                        # the shown one
                        turns = round((frame.rotation or 0) / 90) % 4
                        shown = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
                        width, height = scaled_size(*shown, short_side)
                        stream_out = target.add_stream(_encoder(dst), rate=rate)
                        stream_out.width, stream_out.height, stream_out.pix_fmt = width, height, "yuv420p"
                        stream_out.options = {"crf": "18"} if _encoder(dst) == "libx264" else {"crf": "30", "b": "0"}
                    if turns:  # counter-clockwise, as PyAV reads the display matrix
                        upright = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), turns))
                        frame = av.VideoFrame.from_ndarray(upright, format="rgb24")
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
        _check_reads_back(partial, frames, width, height)
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
    cleaned: int  # left-over temporary files of finished runs removed
    redone: int = 0  # files in DST made again: another short side, or unreadable


def _stop_on_sigterm() -> None:
    """In a worker: Ctrl-C is the parent's to handle; SIGTERM (the parent stopping the pool) unwinds the
    job, so that its temporary file is removed."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    interrupt.ignore_in_child()


def resize_tree(src: str, dst: str, short_side: int, workers: int = 1, progress: bool = True) -> ResizeReport:
    if not os.path.isdir(src):
        raise ResizeError(f"SRC: no such folder: {src}")
    if short_side < 2 or short_side % 2:
        raise ResizeError(f"--short-side: expected an even number of pixels >= 2, got {short_side}")
    if workers < 1:
        raise ResizeError(f"--workers: expected a positive number, got {workers}")
    real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)  # through symlinks, as the files are
    if real_dst == real_src or real_dst.startswith(real_src.rstrip(os.sep) + os.sep):
        raise ResizeError(f"DST: must lie outside SRC ({src}), got {dst}"
                          + (f" (it is {real_dst} through a symlink)" if os.path.abspath(dst) != real_dst else ""))
    cleaned = 0
    for folder, _, files in os.walk(dst):
        for name in files:
            if name.startswith(PARTIAL_PREFIX) and not _writer_alive(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    cleaned += 1
                except FileNotFoundError:  # another run cleaning the same folder
                    pass
    jobs, already, redone = [], 0, 0
    for folder, files in walk_videos(src):
        for name in files:
            source = os.path.join(folder, name)
            target = os.path.join(dst, os.path.relpath(source, src))
            if os.path.exists(target):
                if is_done(target, short_side):
                    already += 1
                    continue
                redone += 1
            jobs.append((source, target))
    failed: list[tuple[str, str]] = []
    from tqdm import tqdm

    pool = None
    try:
        if workers > 1:
            import multiprocessing

            # spawned, not forked: a fork of a process whose other threads (OpenMP's, a decoder's) held a
            # lock at that moment can wait on it forever (it hung a test run with 2 workers); started
            # before the progress bar's thread
            with interrupt.children_start_blocked():
                pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_stop_on_sigterm)
            results = pool.imap_unordered(_job_args, [(s, t, short_side) for s, t in jobs])
        else:
            results = (_job(s, t, short_side) for s, t in jobs)
        with tqdm(total=len(jobs), unit="file", desc="resize", disable=not progress) as bar:
            for source, why in results:
                if why:
                    failed.append((source, why))
                bar.update()
        if pool is not None:
            pool.close()
    except BaseException:  # Ctrl-C: the workers get SIGTERM and remove their unfinished files
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.join()
    return ResizeReport(len(jobs) - len(failed), already, sorted(failed), cleaned, redone)


def _job_args(args: tuple[str, str, int]) -> tuple[str, str | None]:
    return _job(*args)
