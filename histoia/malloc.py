"""Keep a worker's freed memory for reuse, instead of giving it back to the kernel at once.

Why: a tile batch allocates and frees the same large arrays over and over (decoded tiles, their
float copies, a model's activations). glibc's malloc starts by serving blocks above 128 KiB
straight from the kernel and by handing the top of its heap back as soon as a little of it is
free; it raises both limits as it sees large blocks freed, so how often a worker faults the
same memory in again, page by page, depends on the order of its first allocations. Measured with
the demo model on this project's 8,000 px benchmark slide (bench/gpu_path.py; two passes in a
fresh process, 2-core machine): 2.4-2.5 million page faults, 4 s of kernel time and 1,230-1,390
tiles/s in most processes, 87,000 faults and 1,810 tiles/s in a lucky one. With the limits fixed
at glibc's own ceiling (32 MiB) and twice that: 66,000-74,000 faults, 0.2-0.6 s of kernel time,
1,620-2,040 tiles/s, and the resident size within 10 % of before.

Settings (histoia/settings.py): WORKER_MALLOC_MMAP_THRESHOLD_MB and
WORKER_MALLOC_TRIM_THRESHOLD_MB; 0 leaves glibc's own. glibc's environment variables
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES), set by whoever starts the
worker, win over these. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory(mmap_threshold_mb: int, trim_threshold_mb: int) -> str:
    """Set glibc's mmap and trim thresholds for this process (and the processes it forks).

    Both are needed: setting either one alone turns off glibc's own adjustment of the mmap
    threshold, which then stays at 128 KiB and makes things worse. Returns what was done, in
    words, for the worker's log.
    """
    if mmap_threshold_mb <= 0 or trim_threshold_mb <= 0:
        return "glibc's own malloc thresholds (turned off in the settings)"
    if platform.libc_ver()[0] != "glibc":
        return f"the C library's own malloc ({platform.libc_ver()[0] or 'not glibc'})"
    if any(name in os.environ for name in _GLIBC_VARIABLES) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "malloc thresholds from the environment"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(M_MMAP_THRESHOLD, mmap_threshold_mb << 20)
    mallopt(M_TRIM_THRESHOLD, trim_threshold_mb << 20)
    return f"blocks under {mmap_threshold_mb} MiB from the heap, up to {trim_threshold_mb} MiB freed kept for reuse"
