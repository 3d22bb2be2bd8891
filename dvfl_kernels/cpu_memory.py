"""Keep freed CPU memory in the process instead of handing it back to the kernel after every op.

glibc's malloc serves a large block (a stage-1 activation of the nano is 10-40 MB) with mmap and gives
it back with munmap when freed, and trims the top of its heap whenever more than a few MB are free.
The next call's buffer of the same size then faults every page in again: measured on the nano (one
clip, 2 cores, Intel Xeon with AMX), that is 15-20% of an inference and most of its run-to-run spread
(docs/benchmarks.md). OpenVINO keeps a memory pool for the same reason. `keep_freed_memory()` sets
glibc's thresholds so that freed blocks stay mapped for reuse: mmap only above 32 MiB (glibc's
maximum), no trimming below 2 GiB of free heap, 64 MiB of padding per heap growth. The memory a process
holds then stays near its peak (as PyTorch's CUDA caching allocator does on GPUs).

The dvflnet command line calls it at start; library users call it once. DVFL_KEEP_FREED_MEMORY=0
turns it off. Elsewhere than glibc (musl, macOS) it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc caps the mmap threshold at 32 MiB on 64-bit
TRIM_THRESHOLD = 2 << 30
TOP_PAD = 64 << 20


def keep_freed_memory() -> dict[str, bool]:
    """Apply the thresholds above; returns which mallopt calls took effect (empty where not glibc,
    or when DVFL_KEEP_FREED_MEMORY=0)."""
    if os.environ.get("DVFL_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return {}
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: others have other knobs, or none
    except (OSError, AttributeError, TypeError):
        return {}
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return {"mmap_threshold": mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1,
            "trim_threshold": mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1,
            "top_pad": mallopt(_M_TOP_PAD, TOP_PAD) == 1}
