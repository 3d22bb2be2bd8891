"""Choosing between implementations of one call by timing them on this machine, once per call shape.

The CPU linear engine (cpu_linear) and "auto"'s choice for bf16 inference of temporal_context (ops)
use it: which implementation wins depends on the CPU (MKL takes a generic path on AMD, AMX changes
bf16 on Intel), the shape and the thread count, so it is measured where it runs, never read off a
vendor string.

Verdicts are kept on disk per machine (CPU model and flags, torch and dvfl versions) and reused by every later
process: where two implementations are close, a fresh timing may pick either, and the two round
differently, so without the file two runs of the same seeded training (a distillation whose teacher
runs on the engine, a resume) could part at float rounding and end apart. The file is
``DVFL_PROBE_CACHE`` (a path; "off" times afresh in every process), by default
``$XDG_CACHE_HOME/dvfl/cpu-probe.json`` (``~/.cache``); deleting it measures again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from typing import Callable

import torch

from .runtime import RUNTIME

# Timed calls per candidate when a shape first comes, alternating so that the machine's drift hits
# all alike; the fastest minimum wins. 3 rounds: on a shared 2-core machine single calls were up to
# 1.5x apart, the minimum of three held each verdict across reruns except near-ties.
PROBE_ROUNDS = 3

def cache_path() -> str | None:
    path = os.environ.get("DVFL_PROBE_CACHE")
    if path == "off":
        return None
    if path:
        return os.path.abspath(os.path.expanduser(path))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dvfl", "cpu-probe.json")


@functools.cache
def machine() -> str:
    """The section of the cache file whose verdicts apply here: the CPU's model name and a digest of
    its feature flags (a VM may report a generic name, "Intel(R) Xeon(R) Processor", for CPUs with
    and without AMX), the torch and dvfl versions."""
    from . import __version__

    info = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:  # every processor alike: the last one's lines stand
            info = {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in cpuinfo)}
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = hashlib.sha1(" ".join(sorted(info.get("flags", "").split())).encode()).hexdigest()[:8]
    return f"{model} (flags {flags}) | torch {torch.__version__} | dvfl {__version__}"


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measured again and rewritten


def _stored(path: str) -> dict[str, str]:
    """This machine's verdicts in the file: entries that are not a name for a name (a hand edit, another
    program's file) are dropped here, so they are measured again and the file is rewritten without them."""
    stored = RUNTIME.stored_verdicts
    if path not in stored:
        section = _read(path).get(machine())
        section = section if isinstance(section, dict) else {}
        stored[path] = {k: v for k, v in section.items() if isinstance(k, str) and isinstance(v, str)}
    return stored[path]


def _store(path: str, key: str, verdict: str) -> None:
    """Adds one verdict to the file (merged with what other processes wrote meanwhile; atomic)."""
    _stored(path)[key] = verdict
    data = _read(path)
    section = data.get(machine())
    section = {k: v for k, v in section.items() if isinstance(v, str)} if isinstance(section, dict) else {}
    data[machine()] = {**section, **_stored(path)}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".cpu-probe-", dir=os.path.dirname(path))
        try:
            # the permissions open() would give (mkstemp's are 0600): a cache shared by several users
            # (DVFL_PROBE_CACHE on a group folder) stays readable to them, as their umask allows
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0, sort_keys=True)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as err:
        if RUNTIME.warn_once(("probe cache", path)):
            warnings.warn(f"DVFL_PROBE_CACHE: cannot write {path} ({err.strerror or err}); the CPU engine's "
                          f"choices are kept in this process only (set DVFL_PROBE_CACHE to a writable file, or 'off')",
                          stacklevel=3)


def _seconds(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fastest(key: tuple, candidates: dict[str, Callable], favour: str | None = None, margin: float = 1.0) -> str:
    """The name of the fastest of `candidates` (callables doing the same work) for `key`: this
    process's verdict, a run's preset one (``RUNTIME.use_verdicts``), this machine's stored verdict,
    or timed the first time `key` comes (one warm-up call each, then PROBE_ROUNDS alternating rounds)
    and stored. With `favour`, another candidate wins only if it is at least `margin` times faster
    than that one. A preset or stored verdict naming no candidate is measured again."""
    verdict = RUNTIME.verdicts.get(key)
    if verdict is None:
        path = cache_path()
        verdict = RUNTIME.preset_verdicts.get(repr(key))
        if verdict not in candidates and path:
            verdict = _stored(path).get(repr(key))
        if not isinstance(verdict, str) or verdict not in candidates:
            times: dict[str, list[float]] = {name: [] for name in candidates}
            for fn in candidates.values():
                fn()  # warm-up: oneDNN builds its primitives, allocators their pools
            for _ in range(PROBE_ROUNDS):
                for name, fn in candidates.items():
                    times[name].append(_seconds(fn))
            verdict = min(times, key=lambda name: min(times[name]))
            if favour is not None and min(times[favour]) < margin * min(times[verdict]):
                verdict = favour
            if path:
                _store(path, repr(key), verdict)
        RUNTIME.verdicts[key] = verdict
    return verdict
