"""Process-wide memory settings of the daemon, applied once before its threads start."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# glibc's mallopt parameter number for the arena limit (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8
# Arenas for the threads that are not a camera's: the event loop, the index, alarm and export threads, executors.
_SHARED_ARENAS = 8


def arenas_for(cameras: int, substreams: int = 0) -> int:
    """glibc malloc arenas for a daemon with ``cameras`` cameras: one per camera thread that allocates.

    Each camera has a demux thread and a disk thread (and a second demux thread
    for a substream, ``substreams`` of them), and all allocate in
    FFmpeg and Python outside the GIL (packets, buffers, fragments).  A thread
    that finds its arena locked by another waits on a futex; glibc's default
    limit (eight per core) leaves 64 cameras' 128 threads sharing 16.  Measured
    (bench_ingest's daemon, 2-core machine, quiet): 16 cameras ingesting cost
    0.475 % of a core per camera with 2 arenas, 0.35 with 8, 0.31-0.34 with 16
    or more; 64 cameras recording with the picture checks 0.97 with 2, 0.94
    with 16, 0.83 with 256, resident memory 9 against 12 MB per camera.  Each
    arena keeps its own free memory, which is what the memory costs.
    """
    return 2 * max(cameras, 0) + max(substreams, 0) + _SHARED_ARENAS


def set_malloc_arenas(arenas: int) -> bool:
    """Set glibc's malloc arena limit for the threads started from now on; False where it cannot (not glibc).

    An administrator's ``MALLOC_ARENA_MAX`` in the environment wins.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_ARENA_MAX, arenas) != 1:
        log.debug("mallopt(M_ARENA_MAX) refused")
        return False
    return True
