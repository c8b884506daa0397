"""UTC time formatting: everything we store is UTC, everything we print is ISO-8601 with ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(timestamp: float | None) -> str | None:
    """Seconds since the epoch → ``2026-11-28T12:00:00.123Z`` (None stays None)."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """ISO-8601 with ``Z`` or an offset → seconds since the epoch. Naive times are rejected."""
    moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError("time needs a zone: end it with Z or an offset such as +01:00")
    return moment.timestamp()
