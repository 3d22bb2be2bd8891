"""The process-wide state of dvfl_kernels, in one object: ``RUNTIME``.

Everything the package keeps between calls lives here, and nowhere else:

- ``verdicts``: the measured choices of this process (``_probe.fastest``: the CPU linear engine's
  implementation per GEMM shape, int8 or float per shape, the bf16 temporal context, a training run's
  thread count), keyed by what was measured; ``stored_verdicts``: the probe cache file's verdicts for
  this machine, read once per file; ``preset_verdicts``: verdicts a run's config carried from another
  run (``use_verdicts``), taken before the cache file and before measuring, so that a run repeated
  elsewhere makes the same choices and its numbers round the same way;
- ``prepared``: weights prepared once for inference (``_prepared``);
- ``warned``: the warnings given once per process (a backend "auto" could not use, an unwritable
  probe cache);
- ``process_settings``: what ``cpu_threads.apply_process_settings`` did (threads, freed memory kept),
  and ``pinned_threads``, a ``cpu_threads.pinned`` block's count;
- ``guard``: ``cpu_threads.shared_core_guard``'s state (calls left on one thread, ...).

What torch or glibc were told (the thread count, mallopt) is the process's and stays set; ``reset``
forgets that it was done, so the next CPU compute applies the settings again. The implementations
each backend registered are the installation's, not state: ``backends.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class GuardState:
    """shared_core_guard's counters (cpu_threads.py)."""

    one_thread_left: int = 0  # calls still to run on one thread since a contended one
    one_thread_for: int = 0  # the next one-thread period (0: cpu_threads.ONE_THREAD_FOR)
    one_thread_until: float = 0.0  # time.perf_counter() at which the period ends whatever its count
    one_thread_calls: int = 0  # calls run on one thread so far, for runs to log
    inside: bool = False  # a guarded call is running (a teacher's forward inside a step is not judged again)
    threads_before: int = 1  # the count to go back to after the one-thread calls
    guard_threads: int | None = None  # 1 while the guard has the process on one thread


@dataclass
class Runtime:
    """dvfl_kernels' state in this process. One instance, ``RUNTIME``; its fields are read at call
    time, so ``reset`` and ``scoped`` act on every module at once."""

    verdicts: dict[tuple, str] = field(default_factory=dict)
    stored_verdicts: dict[str, dict[str, str]] = field(default_factory=dict)
    preset_verdicts: dict[str, str] = field(default_factory=dict)
    prepared: dict[tuple, Any] = field(default_factory=dict)
    warned: set[tuple] = field(default_factory=set)
    process_settings: dict | None = None
    pinned_threads: int | None = None
    guard: GuardState = field(default_factory=GuardState)

    def warn_once(self, key: tuple) -> bool:
        """True the first time `key` comes in this process (then the caller warns)."""
        if key in self.warned:
            return False
        self.warned.add(key)
        return True

    def verdict_table(self) -> dict[str, str]:
        """The verdicts this process used, as a run's config.json stores them (``repr(key)``: verdict),
        the preset ones included."""
        return {**self.preset_verdicts, **{repr(key): verdict for key, verdict in self.verdicts.items()}}

    def use_verdicts(self, table: dict[str, str]) -> None:
        """Take `table` (a run's ``verdicts``, from its config.json) before the cache file and before
        measuring. A verdict naming no candidate of its call is ignored there (measured instead)."""
        for key, verdict in table.items():
            if not isinstance(key, str) or not isinstance(verdict, str):
                raise TypeError(f"verdicts: expected a mapping of strings to strings, got {key!r}: {verdict!r}")
        self.preset_verdicts.update(table)

    def describe(self) -> dict:
        """What the process holds now: plain data (JSON-serialisable), for logs and bug reports."""
        from . import _probe, backends

        return {
            "verdicts": self.verdict_table(),
            "probe_cache": _probe.cache_path(),
            "prepared_weights": len(self.prepared),
            "process_settings": self.process_settings,
            "pinned_threads": self.pinned_threads,
            "one_thread_calls": self.guard.one_thread_calls,
            "warned": sorted(" ".join(map(str, key)) for key in self.warned),
            "backends": backends.describe(),
        }

    def reset(self) -> None:
        """Forget everything: verdicts (the cache file is read again), prepared weights, warnings,
        that the process settings were made, the guard's counters."""
        fresh = Runtime()
        for name in _FIELDS:
            setattr(self, name, getattr(fresh, name))

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Runtime]:
        """A fresh state within the block (as after ``reset``), the previous one back after it: for
        tests, and for measuring without touching the process's choices."""
        saved = {name: getattr(self, name) for name in _FIELDS}
        self.reset()
        try:
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)


_FIELDS = tuple(f.name for f in dataclasses.fields(Runtime))

RUNTIME = Runtime()
