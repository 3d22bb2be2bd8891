"""Ctrl-C (SIGINT) that is never lost and never tears a file in half.

Python raises KeyboardInterrupt wherever the main thread happens to be. Two places make that wrong:
- inside a ctypes callback or a finaliser (decord calls back into Python while it decodes, and frees
  its readers in __del__), where the exception is printed as "Exception ignored" with a traceback and
  swallowed, so the run goes on as if nothing happened: the handler here also records the signal,
  `check()` (called after each decode) raises it again, and such a swallowed KeyboardInterrupt is not
  printed;
- inside a file write, where torch's C++ zip writer turns it into a RuntimeError about stream positions:
  `deferred()` holds the signal until the write is complete, then raises it.
A third is a child process still starting up: a spawned worker imports torch for seconds before it can
ignore SIGINT, and the terminal's Ctrl-C reaches it too; `children_start_blocked()` holds it off.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

_pending = False


def _record_and_raise(signum, frame):
    global _pending
    _pending = True
    raise KeyboardInterrupt


def _quiet_when_interrupted(unraisable, default=sys.unraisablehook) -> None:
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):  # check() raises that one again
        default(unraisable)


def install() -> None:
    """Take over SIGINT (the CLI does, once); a no-op outside the main thread."""
    global _pending
    _pending = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _record_and_raise)
        sys.unraisablehook = _quiet_when_interrupted


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


@contextlib.contextmanager
def children_start_blocked():
    """Child processes started in the block begin with SIGINT blocked; a Ctrl-C here waits for its end.

    A spawned child imports for seconds (torch) before its own code runs, and the terminal's Ctrl-C
    reaches the whole process group: it printed a KeyboardInterrupt traceback from spawn_main. A child's
    Python handler is reset at its exec, but its signal mask is inherited, so the Ctrl-C stays pending
    until the child calls `ignore_in_child()`. multiprocessing's resource tracker unblocks SIGINT as it
    starts: it is started first. A Ctrl-C meanwhile is raised as the block ends (`deferred`): one
    half-way through a start would leave a child reading its start-up data, which then fails loudly.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    with deferred():
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)


def ignore_in_child() -> None:
    """In a child started by `children_start_blocked`: Ctrl-C is the parent's to handle. Ignoring SIGINT
    before unblocking it discards one that arrived during the child's start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
