"""Ctrl-C (SIGINT) that is never lost and never tears a file in half.

Python raises KeyboardInterrupt wherever the main thread happens to be. Two places make that wrong:
- inside a ctypes callback (decord calls back into Python while it decodes), where the exception is
  printed and swallowed, so the run goes on as if nothing happened: the handler here also records the
  signal, and `check()` (called after each decode) raises it again;
- inside a file write, where torch's C++ zip writer turns it into a RuntimeError about stream positions:
  `deferred()` holds the signal until the write is complete, then raises it.
"""
from __future__ import annotations

import contextlib
import signal
import threading

_pending = False


def _record_and_raise(signum, frame):
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Take over SIGINT (the CLI does, once); a no-op outside the main thread."""
    global _pending
    _pending = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _record_and_raise)


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived and was swallowed on its way."""
    if _pending:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred():
    """Hold Ctrl-C for the duration of the block; raise it once the block has finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        global _pending
        _pending = True
        raise KeyboardInterrupt
