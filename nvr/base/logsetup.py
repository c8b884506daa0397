"""Logging set-up: one stderr handler (journald under systemd) with secrets redacted."""

from __future__ import annotations

import logging
import os
import sys

import av.logging

from nvr.base.config import LogLevel
from nvr.base.secrets import RedactingFilter

_FFMPEG_LEVELS = {
    LogLevel.DEBUG: av.logging.VERBOSE,
    LogLevel.INFO: av.logging.INFO,
    LogLevel.WARNING: av.logging.WARNING,
    LogLevel.ERROR: av.logging.ERROR,
}


def setup(level: LogLevel | str = LogLevel.INFO, ffmpeg_level: LogLevel | None = LogLevel.ERROR) -> None:
    handler = logging.StreamHandler(sys.stderr)
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
    # FFmpeg's own messages reach Python logging ("libav.*") and so the redacting handler.
    av.logging.set_level(None if ffmpeg_level is None else _FFMPEG_LEVELS[LogLevel(ffmpeg_level)])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiortc and aioice log every RTP and STUN packet at DEBUG: costly per viewer, useless in a log.
    logging.getLogger("aiortc").setLevel(max(root.level, logging.INFO))
    logging.getLogger("aioice").setLevel(max(root.level, logging.WARNING))  # INFO: every ICE check
