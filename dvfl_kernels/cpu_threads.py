"""How many CPU threads this process computes with: chosen from the cores it may use, not inherited.

torch starts with one intra-op thread per core it sees, and in a container it sees the host's cores,
not the CPU quota the container runs under. On 2 cores the demo's shapes run no faster on two threads
than on one, and beside one busy process two threads keep 18-36% of their speed while one keeps all of
it: an OpenMP parallel region waits at its barrier for the thread that shares its core (issue 36's
measurements; docs/benchmarks.md, "Threads and contention").

- ``usable_cores()``: the CPUs the scheduler lets this process use (``os.sched_getaffinity``), capped
  by the cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the
  tightest on the path from the process's cgroup to the root), at least 1.
- ``user_threads()``: the user's explicit choice, which always wins: ``DVFL_THREADS``,
  ``OMP_NUM_THREADS``, or ``torch.set_num_threads`` called after dvfl_kernels was imported.
- ``apply_process_settings()``: made once per process, at its first CPU compute (the model's first
  CPU forward, or a run's start), never for commands that do not compute (``prepare``,
  ``check-split``): freed memory kept mapped (``cpu_memory.keep_freed_memory``; opt out with
  ``DVFL_KEEP_FREED_MEMORY=0``) and torch's intra-op threads capped at ``usable_cores()``.
- ``choose_training_threads(step)``: one thread or all usable cores for a training run, by timing its
  own step both ways once per machine and shape (the probe cache); more threads only where they pay.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from typing import Callable

import torch

from . import _probe
from ._prepared import tracing
from .cpu_memory import keep_freed_memory
from .runtime import RUNTIME

# More threads are chosen for a training run only if its step is at least this much faster with them:
# one thread frees a core for other work (the demo's second student, decoding) and keeps its speed
# beside a busy process, where two threads fell to 18-36% (issue 36); a near-tie is not worth that.
THREADS_MUST_PAY = 1.15

_lock = threading.Lock()
# torch's thread count when this module was imported: a different count later is the user's choice
_THREADS_AT_IMPORT = torch.get_num_threads()


def _cgroup_quota(root: str, proc_cgroup: str) -> float | None:
    """CPUs' worth of time the cgroup allows (quota / period), or None without a limit."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            candidates = [(os.path.join(root, path.lstrip("/")), "cpu.max")]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            mount = next((os.path.join(root, name) for name in (controllers, "cpu,cpuacct", "cpu")
                          if os.path.isdir(os.path.join(root, name))), None)
            if mount is None:
                continue
            candidates = [(os.path.join(mount, path.lstrip("/")), "cpu.cfs_quota_us")]
        else:
            continue
        folder, name = candidates[0]
        while True:  # every level up to the mount root limits the process
            limit = _read_limit(folder, name)
            if limit is not None:
                limits.append(limit)
            parent = os.path.dirname(folder.rstrip("/"))
            if len(parent) < len(root.rstrip("/")) or parent == folder.rstrip("/"):
                break
            folder = parent
    return min(limits) if limits else None


def _read_limit(folder: str, name: str) -> float | None:
    try:
        if name == "cpu.max":
            with open(os.path.join(folder, name)) as f:
                fields = f.read().split()  # "max 100000" or "150000 100000"
            quota_us, period_us = fields[0], fields[1] if len(fields) > 1 else "100000"
        else:
            with open(os.path.join(folder, name)) as f:
                quota_us = f.read().strip()
            with open(os.path.join(folder, "cpu.cfs_period_us")) as f:
                period_us = f.read().strip()
        if quota_us == "max" or int(quota_us) <= 0:
            return None
        return int(quota_us) / int(period_us)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def usable_cores(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU quota (rounded down), >= 1.

    Args:
        cgroup_root: where the cgroup file systems are mounted (tests point it at fake files).
        proc_cgroup: the process's cgroup membership file.
    Returns:
        int >= 1.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 1e-9)))
    return max(1, cores)


@contextlib.contextmanager
def pinned(threads: int):
    """Within the block, `threads` is the count, as if the user had chosen it (the demo runs its
    teacher and its scratch student side by side, one core each)."""
    previous, before = RUNTIME.pinned_threads, torch.get_num_threads()
    RUNTIME.pinned_threads = threads
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        RUNTIME.pinned_threads = previous
        torch.set_num_threads(before)


def user_threads() -> int | None:
    """The thread count the user chose, or None: a ``pinned`` block, DVFL_THREADS, OMP_NUM_THREADS,
    then a torch.set_num_threads call made since dvfl_kernels was imported."""
    if RUNTIME.pinned_threads is not None:
        return RUNTIME.pinned_threads
    for name in ("DVFL_THREADS", "OMP_NUM_THREADS"):
        text = os.environ.get(name, "").strip()
        if text:
            try:
                value = int(text.split(",")[0])
            except ValueError:
                raise ValueError(f"{name}: expected a positive integer, got {text!r}") from None
            if value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {text!r}")
            return value
    current = torch.get_num_threads()
    applied = (RUNTIME.process_settings or {}).get("threads")
    return current if current not in (_THREADS_AT_IMPORT, applied, RUNTIME.guard.guard_threads) else None


def apply_process_settings() -> dict:
    """Once per process, at the first CPU compute: keep freed memory mapped and cap torch's threads at
    the usable cores (unless the user chose a count). Later calls return what the first one did.

    Returns:
        {"threads": the intra-op thread count now, "threads_from": "user" | "usable cores",
         "usable_cores": int, "keep_freed_memory": which mallopt calls took effect}.
    """
    if RUNTIME.process_settings is not None:
        return RUNTIME.process_settings
    with _lock:
        if RUNTIME.process_settings is None:
            chosen = user_threads()
            cores = usable_cores()
            threads = chosen if chosen is not None else min(torch.get_num_threads(), cores)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            RUNTIME.process_settings = {"threads": threads,
                                        "threads_from": "user" if chosen is not None else "usable cores",
                                        "usable_cores": cores, "keep_freed_memory": keep_freed_memory()}
    return RUNTIME.process_settings


def on_cpu_compute(x: torch.Tensor) -> None:
    """Called where CPU compute starts (the model's forward): the process settings, the first time,
    in eager mode (never while torch.compile, export or the JIT traces)."""
    if RUNTIME.process_settings is None and x.device.type == "cpu" and not tracing():
        apply_process_settings()


def choose_training_threads(key: tuple, step: Callable[[], None]) -> int:
    """One thread or all usable cores for a training run whose step is `step` (a forward and backward
    that leaves no trace: the caller restores gradients and random state), by timing both once per
    machine and `key` (the probe cache); the user's own count always wins. Sets and returns it.

    Args:
        key: what makes two runs' steps alike (model, clip shape, batch, dtype).
        step: one training step's compute, called (1 + PROBE_ROUNDS) times per candidate.
    Returns:
        the thread count now in use.
    """
    settings = apply_process_settings()
    chosen = user_threads() or (1 if settings["usable_cores"] == 1 else None)
    if chosen is not None:
        if torch.get_num_threads() != chosen:
            torch.set_num_threads(chosen)
        return chosen
    most = settings["usable_cores"]

    def at(threads: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(threads)
            step()
        return run

    verdict = _probe.fastest(("training threads", *key, most),
                             {"1": at(1), str(most): at(most)}, favour="1", margin=THREADS_MUST_PAY)
    threads = int(verdict)
    torch.set_num_threads(threads)
    RUNTIME.process_settings = {**settings, "threads": threads, "threads_from": "measured for training"}
    return threads


# Beside other work. A call on N threads whose threads together waited in the kernel's run queue for
# more than this share of wall time x N was sharing its cores with another process: alone they wait
# for nothing (schedstat's run delay stays near 0), beside one busy process on 2 cores each of two
# threads waits about a third of the time.
CONTENDED_WAIT = 0.15
# Calls run on one thread after a contended one, before all usable cores are tried again; doubled
# each time the retry finds the cores still shared (a retry beside a busy process costs about three
# one-thread calls), up to MAX_ONE_THREAD_FOR, and back to ONE_THREAD_FOR once they are free.
ONE_THREAD_FOR = 16
MAX_ONE_THREAD_FOR = 256
# A period also ends after this many seconds, whatever its count: the nano's clip takes about 1 s on one
# thread of an AVX2 CPU, and 256 of them kept it there for 4 minutes after its neighbour had left. A
# retry every 30 s beside a busy process costs that clip about 0.5 s (two contended threads: 1.5 s a
# clip, one: 1.0; AMD EPYC Zen 3); the demo teacher's 256 steps take about 20 s, within the bound.
MAX_ONE_THREAD_S = 30.0
# Shorter calls are not judged: the clocks' granularity and the reads' own cost dominate them.
MIN_JUDGED_S = 0.02

def one_thread_calls() -> int:
    """How many guarded calls of this process ran on one thread because its cores were shared."""
    return RUNTIME.guard.one_thread_calls


def run_queue_wait_s() -> float | None:
    """Seconds this process's threads have spent runnable but not running, summed over its threads
    (/proc/self/task/*/schedstat, second field, ns); None where the kernel does not report it."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            continue
    return total / 1e9


@contextlib.contextmanager
def shared_core_guard(x: torch.Tensor, training: bool = False):
    """Around a forward (inference: no gradient needed) or a whole training step (`training`) on CPU:
    all of this process's threads while the cores are its own; after a call whose threads waited
    for a core (the kernel's run-queue delay) more than CONTENDED_WAIT of the time, the whole process
    runs on one thread (the work between calls too: augmentation, the optimizer step) for the next
    ONE_THREAD_FOR calls (more while retries find the cores still shared, at most MAX_ONE_THREAD_S
    seconds), then all cores are tried again. An OpenMP team waits at every barrier for
    the thread whose core is taken: beside one busy process two threads kept 23-38% of their speed,
    one thread 93-106% of its own (docs/benchmarks.md, "Threads and contention"). Only in the main
    thread, in eager mode, with no count chosen by the user, where the kernel reports run-queue
    delay; a guarded call inside another is not judged again. A training run that switches rounds
    differently from one that does not (its log counts the one-thread steps); DVFL_THREADS fixes the
    count."""
    guard = RUNTIME.guard
    if (guard.inside or tracing() or (torch.is_grad_enabled() and not training) or x.device.type != "cpu"
            or RUNTIME.process_settings is None or threading.current_thread() is not threading.main_thread()
            or user_threads() is not None):
        yield
        return
    guard.inside = True
    try:
        if guard.one_thread_left > 0:  # the process is on one thread since a contended call
            guard.one_thread_left -= 1
            guard.one_thread_calls += 1
            try:
                yield
            finally:
                if guard.one_thread_left == 0 or time.perf_counter() >= guard.one_thread_until:
                    guard.one_thread_left = 0  # the next call tries all cores again
                    _set_guard_threads(guard.threads_before)
            return
        threads = torch.get_num_threads()
        if threads == 1:
            yield
            return
        wall, waited = time.perf_counter(), run_queue_wait_s()
        yield
        if waited is None:
            return
        wall, waited = time.perf_counter() - wall, run_queue_wait_s() - waited
        if wall < MIN_JUDGED_S:
            return
        period = guard.one_thread_for or ONE_THREAD_FOR
        if waited > CONTENDED_WAIT * wall * threads:
            guard.one_thread_left, guard.threads_before = period, threads
            guard.one_thread_until = time.perf_counter() + MAX_ONE_THREAD_S
            guard.one_thread_for = min(2 * period, MAX_ONE_THREAD_FOR)
            _set_guard_threads(1)
        else:
            guard.one_thread_for = ONE_THREAD_FOR
    finally:
        guard.inside = False


def forget_contention() -> None:
    """Back on all cores as a process that never met a busy neighbour: the guard's one-thread period
    and its doubling forgotten (its count of one-thread calls kept). For a benchmark that times alone
    and beside a busy process in turn, in one process: otherwise its "alone" rounds start on one thread."""
    guard = RUNTIME.guard
    if guard.guard_threads == 1:
        _set_guard_threads(guard.threads_before)
    guard.one_thread_left, guard.one_thread_for, guard.one_thread_until = 0, 0, 0.0


def _set_guard_threads(threads: int) -> None:
    """The guard's own switch: not a user's choice (user_threads ignores it)."""
    RUNTIME.guard.guard_threads = threads if threads == 1 else None
    torch.set_num_threads(threads)
