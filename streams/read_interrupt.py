"""Ending a blocked PyAV read from outside, so that reads need no Python callback.

PyAV bounds a read with FFmpeg's interrupt callback: before every
``av_read_frame`` it stores the time in the container (``timeout_info``:
``start_time``, ``timeout``), and FFmpeg calls the callback on every socket
read, three or more times per RTP packet.  With a timeout set, each call takes
the GIL to read ``time.monotonic()``; with none (``timeout < 0``) it returns
at once without it.  Measured on this machine (16 × 1080p25 cameras, three
interleaved pairs in one run), the GIL-taking callback is about an eighth of
ingest: 1.22 against 1.06 % of a core per camera.

FFmpeg's socket timeout alone does not bound a read: a camera whose encoder
hung behind a live RTSP stack keeps sending RTCP and no media, and the RTSP
demuxer reads RTCP forever.  But the reader does not need a clock of its own:
the source's loop side already declares such a camera stalled after
``health.stall_seconds`` without packets, or unreachable after the open
timeout, and then ends the session.  So once a session streams, its demux
thread switches PyAV's read timeout off (:meth:`ReadInterrupt.relax`: no GIL
in the callback), and ending the session interrupts the blocked read
(:meth:`ReadInterrupt.interrupt`: the callback sees a timeout that has
expired, and FFmpeg returns ``AVERROR_EXIT``).  Opening keeps PyAV's open
timeout as it is.

PyAV does not expose ``timeout_info``.  Where it lies in the container object
is found once per process by opening a few bytes of raw audio from memory with
a read timeout no camera has, and looking for that value, with PyAV's own
start time in front of it, in the object's memory; it must be where PyAV's
``set_timeout(None)`` then writes ``-1.0``.  If it is not found exactly there
(another PyAV), :meth:`ReadInterrupt.relax` does nothing and PyAV's own read
timeout stays in force, at its cost.
"""

from __future__ import annotations

import ctypes
import functools
import io
import logging
import struct
import threading
import time
from collections.abc import Generator
from typing import cast

import av

log = logging.getLogger(__name__)

_OPEN_PROBE, _READ_PROBE = 86_400.015625, 86_400.03125  # exact in binary; no camera is given a day's timeout
_DOUBLE = struct.Struct("=d")


@functools.cache
def timeout_offset() -> int | None:
    """Offset of ``timeout_info.timeout`` in PyAV's input container object (``start_time`` is 8 bytes before)."""
    try:
        container = cast(av.container.InputContainer,
                         av.open(io.BytesIO(bytes(4096)), format="s16le", timeout=(_OPEN_PROBE, _READ_PROBE)))
    except (av.error.FFmpegError, ValueError, TypeError) as exc:
        log.info("PyAV's read timeout layout not probed (%s): reads keep PyAV's timeout", exc)
        return None
    try:
        size = type(container).__basicsize__
        packets = cast(Generator[av.Packet, None, None], container.demux())
        before = time.monotonic()
        next(packets)
        after = time.monotonic()
        memory = ctypes.string_at(id(container), size)
        found = [offset for offset in range(8, size - 7, 8)
                 if _DOUBLE.unpack_from(memory, offset)[0] == _READ_PROBE
                 and before <= _DOUBLE.unpack_from(memory, offset - 8)[0] <= after]
        packets.close()  # PyAV's set_timeout(None): -1.0 where the timeout is
        if len(found) == 1 and _DOUBLE.unpack_from(ctypes.string_at(id(container), size), found[0])[0] == -1.0:
            return found[0]
        log.info("PyAV's read timeout not found in its container (%d candidates): reads keep PyAV's timeout",
                 len(found))
        return None
    except (StopIteration, av.error.FFmpegError) as exc:
        log.info("PyAV's read timeout layout not probed (%s): reads keep PyAV's timeout", exc)
        return None
    finally:
        container.close()


class ReadInterrupt:
    """One input container's read timeout, switched off while it streams and expired to end a blocked read."""

    __slots__ = ("_container", "_start", "_timeout", "_lock", "interrupted", "relaxed")

    def __init__(self, container: av.container.InputContainer) -> None:
        offset = timeout_offset()
        if offset is not None and type(container).__basicsize__ < offset + 8:
            offset = None
        self._container = container  # held: the doubles live in this object, which must outlive every write
        self._start = ctypes.c_double.from_address(id(container) + offset - 8) if offset is not None else None
        self._timeout = ctypes.c_double.from_address(id(container) + offset) if offset is not None else None
        self._lock = threading.Lock()
        self.interrupted = False
        self.relaxed = False  # relax() was called for the current demux generator

    @property
    def available(self) -> bool:
        return self._timeout is not None

    def relax(self) -> bool:
        """The demux thread, after a demux generator's first packet: no timeout (no GIL) from now on.

        PyAV sets the read timeout again when a new generator starts; call this again after its first packet.
        False where the layout is unknown, or the read has been interrupted already (that stays).
        """
        with self._lock:
            if self.interrupted:
                return False
            self.relaxed = True  # done what can be done for this generator
            if self._timeout is None:
                return False
            self._timeout.value = -1.0
            return True

    def interrupt(self) -> None:
        """Any thread: the read in progress, and every later one, ends with ``av.error.ExitError``."""
        with self._lock:
            self.interrupted = True
            if self._start is None or self._timeout is None:
                return  # PyAV's own read timeout ends it
            # PyAV's callback: start_time + timeout < now ends the read; PyAV resets start_time before each read.
            self._start.value = 0.0
            self._timeout.value = 0.0
