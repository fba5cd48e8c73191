"""Large buffers straight from the kernel, so that freed blocks leave the process.

glibc's malloc serves a request above M_MMAP_THRESHOLD with a mapping of its own, given
back to the kernel when freed; but each time such a buffer is freed it raises that
threshold to the buffer's size (up to 32 MiB), after which blocks come from the heap
arenas, which a thread keeps and seldom returns. A mount daemon allocates and frees a
4 MiB block (and a larger request buffer) for every few MiB it serves cold, from several
threads: its resident size then climbs to the sum of the arenas' high-water marks, about
twice what it holds at any moment, and stays there. A fixed threshold keeps every buffer
of that size a mapping of its own, at the cost of its page faults when it is filled.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # malloc.h
LARGE = 1024 * 1024  # buffers from this size up are mappings of their own


def map_large_buffers(threshold: int = LARGE) -> bool:
    """Fix malloc's mmap threshold at THRESHOLD for this process. False where the C
    library has no mallopt (not glibc): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("malloc kept its mmap threshold: freed blocks may stay resident")
        return False
    return True
