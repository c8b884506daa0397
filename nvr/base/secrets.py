"""Redaction of secrets (camera passwords) from everything that leaves the process.

Every secret the config resolves is registered here in all the forms it can
take in a message: as written, percent-encoded as it appears in a URL, and
percent-decoded.  Log handlers, API error bodies and state reasons pass their
text through :func:`redact`; URLs shown to users go through :func:`redact_url`.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from enum import StrEnum
from typing import Generic, TypeVar

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

# userinfo of any URL-ish string: scheme://user:password@host
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")


def register(secret: str) -> None:
    """Remember a secret and its encoded forms so that it is never shown."""
    if not secret:
        return
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        urllib.parse.unquote(secret),
    }
    global _pattern
    with _lock:
        # Very short secrets would mask innocent text everywhere; a one- or
        # two-character password is still masked inside URLs by redact_url.
        _secrets.update(f for f in forms if len(f) >= 3)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


def clear() -> None:
    """Forget all secrets (tests only)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def redact(text: str) -> str:
    """Mask every registered secret and every URL password in ``text``."""
    # Known secrets first: a raw password may itself contain "@" or ":",
    # which would make the URL pattern below cut it in the middle.
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _USERINFO.sub(_mask_userinfo, text)


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    user, sep, _ = userinfo.partition(":")
    return f"{match.group('scheme')}{user}{':' + MASK if sep else ''}@"


def redact_url(url: str) -> str:
    """The URL with the password part of its user-info masked."""
    return _USERINFO.sub(_mask_userinfo, url)


class RedactingFilter(logging.Filter):
    """Logging filter that rewrites each record's message without secrets.

    Installed on handlers, so that records from every logger (FFmpeg's
    included, which PyAV forwards to ``libav.*`` loggers) are covered.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(message)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True


R = TypeVar("R", bound=StrEnum)


class ReasonedError(Exception, Generic[R]):
    """An error with a stable ``reason`` and a ``message`` cleaned of secrets when it is made."""

    def __init__(self, reason: R, message: str) -> None:
        self.message = redact(message)
        super().__init__(self.message)
        self.reason = reason
