"""Choosing between implementations of one call by timing them on this machine, once per call shape.

The CPU linear engine (cpu_linear) and "auto"'s choice for bf16 inference of temporal_context (ops)
use it: which implementation wins depends on the CPU (MKL takes a generic path on AMD, AMX changes
bf16 on Intel), the shape and the thread count, so it is measured where it runs, never read off a
vendor string.
"""
from __future__ import annotations

import time
from typing import Callable

# Timed calls per candidate when a shape first comes, alternating so that the machine's drift hits
# all alike; the fastest minimum wins. 3 rounds: on a shared 2-core machine single calls were up to
# 1.5x apart, the minimum of three held each verdict across reruns except near-ties.
PROBE_ROUNDS = 3

# (what, shape...) -> the candidate chosen
VERDICTS: dict[tuple, str] = {}


def _seconds(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fastest(key: tuple, candidates: dict[str, Callable]) -> str:
    """The name of the fastest of `candidates` (callables doing the same work) for `key`, timed the
    first time `key` comes (one warm-up call each, then PROBE_ROUNDS alternating rounds)."""
    verdict = VERDICTS.get(key)
    if verdict is None:
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for fn in candidates.values():
            fn()  # warm-up: oneDNN builds its primitives, allocators their pools
        for _ in range(PROBE_ROUNDS):
            for name, fn in candidates.items():
                times[name].append(_seconds(fn))
        verdict = min(times, key=lambda name: min(times[name]))
        VERDICTS[key] = verdict
    return verdict
