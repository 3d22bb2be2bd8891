"""One writer for every file dvflnet writes (JSON, CSV, checkpoints, exports, caches).

Each file is written to a temporary file beside it (named TMP_PREFIX...), flushed and fsynced, then
renamed over the target: a crash, a kill or a full disk never leaves a truncated file under the
target's name. The file gets the permissions `open()` would give it (the umask is honoured; mkstemp
alone would make it 0600). A write that fails raises OSError naming the target path, and leaves
nothing behind; temporary files of a killed process are removed by `clean_temporary_files` when the
next run starts in that folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Callable, IO, Iterator

from .interrupt import deferred

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(path: str) -> tuple[int, str]:
    """(fd, name) of a new temporary file in `path`'s folder (created if missing), with its extension;
    errors name `path`."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a folder; expected a file path to write")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        return tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1])
    except OSError as err:
        raise OSError(err.errno, f"{path}: cannot write here ({err.strerror})") from None


@contextlib.contextmanager
def _temporary_for(path: str) -> Iterator[tuple[int, str]]:
    """(fd, name) of a temporary file beside `path` for the block to write and rename. Ctrl-C waits
    from the file's creation (one arriving between mkstemp and the cleanup here would leave it behind)
    to the block's end; on any failure the file is removed, and an OSError names `path`."""
    with deferred():
        fd, tmp = _temporary_beside(path)
        try:
            yield fd, tmp
        except BaseException as err:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(err, OSError) and not isinstance(err, IsADirectoryError):
                raise OSError(err.errno, f"{path}: cannot write ({err.strerror or err})") from None
            raise


def _sync_folder(folder: str) -> None:
    """fsync a folder: the renames in it become durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(binary file) into a temporary file beside `path`, then rename it to `path`."""
    path = os.fspath(path)
    with _temporary_for(path) as (fd, tmp):
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_folder(os.path.dirname(os.path.abspath(path)))  # make the rename itself durable


def check_writable(path: str) -> None:
    """Fail now, naming `path`, if it cannot be written later (a folder, a read-only place): before
    minutes of work whose result would have nowhere to go."""
    with deferred():  # a Ctrl-C in between would leave the probe file
        fd, probe = _temporary_beside(os.fspath(path))
        os.close(fd)
        os.unlink(probe)


def write_through_path(path: str, save: Callable[[str], None]) -> None:
    """For writers that only take a file name (ONNX, PyAV): save(temporary path beside `path`, same
    extension), fsync, then rename to `path`; the same guarantees as write_atomic."""
    path = os.fspath(path)
    with _temporary_for(path) as (fd, tmp):
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        save(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)


def write_set(files: dict[str, bytes]) -> None:
    """Several files as one set (CSVs that belong together): every one is written to its temporary
    file first; only when all are complete are they renamed into place, one after the other. Ctrl-C
    waits for the whole set (from the first temporary file's creation: one arriving before the cleanup
    below knew of a file would leave it). A failure while writing (a full disk) replaces none of them,
    and the error says so."""
    written: dict[str, str] = {}
    with deferred():
        try:
            for path, data in files.items():
                fd, tmp = _temporary_beside(path)
                written[path] = tmp
                os.fchmod(fd, 0o666 & ~_umask())
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException as err:
            for tmp in written.values():
                if os.path.exists(tmp):
                    os.unlink(tmp)
            if isinstance(err, OSError) and not isinstance(err, IsADirectoryError):
                raise OSError(err.errno, f"{', '.join(files)}: cannot write ({err.strerror or err}); none of them was "
                                         f"replaced") from None
            raise
        for path, tmp in written.items():  # renames within one folder: nothing left to fail for lack of space
            os.replace(tmp, path)
    for folder in {os.path.dirname(os.path.abspath(p)) for p in files}:
        _sync_folder(folder)


def write_bytes(data: bytes, path: str) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_text(text: str, path: str) -> None:
    write_bytes(text.encode(), path)


def write_json(obj, path: str, indent: int | None = 1) -> None:
    """Strict JSON (NaN and infinities are refused: they are not JSON), written atomically."""
    write_text(json.dumps(obj, indent=indent, allow_nan=False), path)


def save_torch(obj, path: str) -> None:
    """torch.save, written atomically."""
    import torch

    write_atomic(path, lambda f: torch.save(obj, f))


def save_figure(figure, path: str, dpi: int = 100) -> None:
    """A matplotlib figure as PNG, written atomically."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format="png")
    write_bytes(buffer.getvalue(), path)


def clean_temporary_files(folder: str, recursive: bool = False) -> list[str]:
    """Remove the temporary files an interrupted write left in `folder` (and below, if recursive)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    walk = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    for directory, _, names in walk:
        for name in names:
            path = os.path.join(directory, name)
            if name.startswith(TMP_PREFIX) and os.path.isfile(path):
                os.unlink(path)
                removed.append(path)
    return removed
