"""Keeps freed memory in the process for reuse: large transfers then stop paying page faults.

glibc's malloc hands every allocation above a small threshold straight to the kernel and gives
it back when freed, so each big receive buffer, snapshot or pulled array is fresh memory that
the kernel must fault in and zero, page by page: on a 256 MB transfer that costs as much as
the copy itself. Raising the thresholds lets malloc recycle those buffers instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt() parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
DEFAULT_KEEP_BYTES = 1 << 30


def keep_freed_memory(nbytes: int = DEFAULT_KEEP_BYTES) -> bool:
    """Lets this process's malloc serve allocations of up to ``nbytes`` from its heap and keep
    up to ``nbytes`` of freed memory for reuse (the resident size stays that much higher after
    a large transfer). ``varstore serve`` calls it at startup; a worker that pulls or pushes
    large tensors may call it too.

    Returns False, changing nothing, where the C library is not glibc or refuses a value.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    value = min(int(nbytes), (1 << 31) - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
