"""Logging set-up: one stderr handler (journald under systemd) with secrets redacted."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
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
# FFmpeg's own level names, as its printer writes them with AV_LOG_PRINT_LEVEL ("[h264 @ 0x…] [error] …").
_TAG_LEVELS = {
    b"trace": logging.DEBUG, b"debug": logging.DEBUG, b"verbose": logging.DEBUG, b"info": logging.INFO,
    b"warning": logging.WARNING, b"error": logging.ERROR, b"fatal": logging.CRITICAL, b"panic": logging.CRITICAL,
}
_LEVEL_TAG = re.compile(rb"^((?:\[[^\]]* @ 0x[0-9a-fA-F]+\] )*)\[(" + b"|".join(_TAG_LEVELS) + rb")\] ")
_COLOUR = re.compile(rb"\x1b\[[0-9;]*m")
_AV_LOG_PRINT_LEVEL = 2  # libavutil/log.h, unchanged since FFmpeg 2.4
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
    _print_levels()
    threading.Thread(target=_forward, args=(read_end,), name="ffmpeg-log", daemon=True).start()
    return real


def _pyav_libavutil() -> str | None:
    """The path of the libavutil that PyAV uses, as mapped into this process.

    PyAV's wheel bundles its own FFmpeg (``av.libs``), and OpenCV's wheel another, so several may be loaded;
    the one to configure is PyAV's.  A PyAV built against the system's FFmpeg has no ``av.libs``: then the
    only libavutil mapped is taken, and with several and none of them PyAV's, none.
    """
    bundled = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(av.__file__))), "av.libs") + os.sep
    try:
        with open("/proc/self/maps") as maps:
            mapped = [line.split(None, 5) for line in maps]
    except OSError:
        return None
    paths = {fields[5].strip() for fields in mapped if len(fields) == 6 and "/libavutil" in fields[5]}
    ours = [path for path in paths if path.startswith(bundled)]
    if len(ours) == 1:
        return ours[0]
    return next(iter(paths)) if len(paths) == 1 else None


def _print_levels() -> None:
    """Have FFmpeg's printer write each message's level, so a record carries FFmpeg's level, not the threshold.

    Without it every line FFmpeg prints is logged at ``log.ffmpeg_level``: at ``warning`` its errors would be
    warnings.  PyAV does not expose ``av_log_set_flags``; libavutil is already loaded, so ``ctypes`` finds it.
    """
    path = _pyav_libavutil()
    if path is None:
        return
    try:
        lib = ctypes.CDLL(path)
        lib.av_log_get_flags.restype = ctypes.c_int
        lib.av_log_set_flags.argtypes = [ctypes.c_int]
        lib.av_log_set_flags(lib.av_log_get_flags() | _AV_LOG_PRINT_LEVEL)
    except (OSError, AttributeError):
        pass  # lines keep the configured level


def _record(line: bytes) -> tuple[int, str]:
    """A printed line's level and text: FFmpeg's own level where it printed one, else ``log.ffmpeg_level``."""
    line = _COLOUR.sub(b"", line).strip()  # colours, where FFmpeg saw a terminal before fd 2 became the pipe
    tagged = _LEVEL_TAG.match(line)
    if tagged is None:
        return _ffmpeg_py_level, line.decode("utf-8", "replace")  # another C library, or a continued line
    text = tagged.group(1) + line[tagged.end():]
    return _TAG_LEVELS[tagged.group(2)], text.decode("utf-8", "replace")


def _forward(read_end: int) -> None:
    logger = logging.getLogger("libav")
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            level, text = _record(line)
            if text:
                logger.log(level, "%s", text)


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
