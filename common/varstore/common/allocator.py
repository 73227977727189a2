"""Keeps freed memory in the process for reuse: large transfers then stop paying page faults.

glibc's malloc hands every allocation above a small threshold straight to the kernel and gives
it back when freed, so each big receive buffer, snapshot or pulled array is fresh memory that
the kernel must fault in and zero, page by page: on a 256 MB transfer that costs as much as
the copy itself. Raising the thresholds lets malloc recycle those buffers instead.

That works only in malloc's main arena: every other thread gets an arena of its own, made of
heaps of at most 64 MB, and serves anything larger with a fresh mmap whatever the thresholds
say. gRPC runs each call on a pool thread, so the server's buffers (received tensors, checkpoint
pieces, restored values) took that path; one arena for the whole process keeps them recyclable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt() parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
DEFAULT_KEEP_BYTES = 1 << 30


def keep_freed_memory(nbytes: int = DEFAULT_KEEP_BYTES) -> bool:
    """Lets this process's malloc serve allocations of up to ``nbytes`` from its heap and keep
    up to ``nbytes`` of freed memory for reuse (the resident size stays that much higher after
    a large transfer), in one arena shared by all threads. ``varstore serve`` calls it at
    startup, before it starts threads; a worker that pulls or pushes large tensors may call it
    too.

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
    return all(mallopt(param, v) for param, v in (
        (_M_MMAP_THRESHOLD, value), (_M_TRIM_THRESHOLD, value), (_M_ARENA_MAX, 1)))
