"""Process-wide memory settings of the daemon, applied once before its threads start."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# glibc's mallopt parameter number for the arena limit (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas for the threads started from now on; False where it cannot (not glibc).

    glibc gives threads that allocate at the same time arenas of their own,
    up to eight per core, and each arena keeps its own free memory.  The
    daemon has a demux thread and a disk thread per camera, each allocating
    packets and buffers in FFmpeg, so memory freed by one camera is not
    reused by another.  Two arenas: 16.2 instead of 19.0 MB resident per
    camera at 16 recording cameras, with no CPU difference above the noise
    (bench_ingest's daemon, README).  An administrator's ``MALLOC_ARENA_MAX``
    in the environment wins.
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
