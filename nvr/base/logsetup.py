"""Logging set-up: one stderr handler (journald under systemd) with secrets redacted."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading

import av.logging

from nvr.base.config import LogLevel
from nvr.base.secrets import RedactingFilter

_FFMPEG_LEVELS = {
    LogLevel.DEBUG: av.logging.VERBOSE,
    LogLevel.INFO: av.logging.INFO,
    LogLevel.WARNING: av.logging.WARNING,
    LogLevel.ERROR: av.logging.ERROR,
}


_PY_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG, LogLevel.INFO: logging.INFO, LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}
_PIPE_BYTES = 1 << 20
_stderr_route: tuple[int, int] | None = None  # (the process's real stderr, duplicated; the pipe's read end)
_ffmpeg_py_level = logging.ERROR


def _route_ffmpeg_messages(level: LogLevel) -> int:
    """FFmpeg's own stderr printer, its lines read back into ``libav`` records; the real stderr's new fd.

    PyAV's log callback takes the GIL for every ``av_log`` call, those its level drops included, and FFmpeg's
    RTSP demuxer makes one per interleaved RTP packet: with 64 cameras demuxed on 64 threads that is tens of
    thousands of GIL hand-overs a second, and the cameras' threads fell behind their streams (measured: 2.47
    against 0.97 % of a core per camera, and frames lost).  FFmpeg's default printer filters by level without
    Python; what it prints to fd 2 goes into a pipe, and a thread turns the lines into log records, so they pass
    the same redacting handler as everything else.  The pipe does not block FFmpeg: its write end is
    non-blocking, and lines that do not fit (a flood) are lost, not waited for.
    """
    global _stderr_route, _ffmpeg_py_level
    _ffmpeg_py_level = _PY_LEVELS[level]
    av.logging.set_libav_level(_FFMPEG_LEVELS[level])
    if _stderr_route is not None:
        return _stderr_route[0]
    real = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # the default 64 kB
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)
    os.dup2(write_end, 2)
    os.close(write_end)
    _stderr_route = (real, read_end)
    av.logging.restore_default_callback()
    threading.Thread(target=_forward, args=(read_end,), name="ffmpeg-log", daemon=True).start()
    return real


def _forward(read_end: int) -> None:
    logger = logging.getLogger("libav")
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                logger.log(_ffmpeg_py_level, "%s", line.decode("utf-8", "replace").strip())


def setup(level: LogLevel | str = LogLevel.INFO, ffmpeg_level: LogLevel | None = LogLevel.ERROR) -> None:
    if ffmpeg_level is None:
        av.logging.set_level(None)  # FFmpeg says nothing, and no callback
        stream = sys.stderr
    else:
        # Python writes to the real stderr; fd 2 is FFmpeg's (and any other C library's) pipe.
        stream = os.fdopen(os.dup(_route_ffmpeg_messages(LogLevel(ffmpeg_level))), "w", buffering=1)
        sys.stderr = stream
    handler = logging.StreamHandler(stream)
    # journald adds its own timestamps.
    fmt = "%(levelname)s %(name)s: %(message)s" if "JOURNAL_STREAM" in os.environ else (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(str(LogLevel(level).value).upper())
    # FFmpeg's own messages reach Python logging ("libav") and so the redacting handler.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiortc and aioice log every RTP and STUN packet at DEBUG: costly per viewer, useless in a log.
    logging.getLogger("aiortc").setLevel(max(root.level, logging.INFO))
    logging.getLogger("aioice").setLevel(max(root.level, logging.WARNING))  # INFO: every ICE check
