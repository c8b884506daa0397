"""Time formatting: everything we store is UTC, machine fields print ISO-8601 with ``Z``; people read local time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo


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


def local(timestamp: float, zone: str) -> str:
    """Seconds since the epoch → the station's wall-clock reading with its offset and zone abbreviation.

    ``2026-03-29 02:00:10 BST (UTC+01:00)``: for people (printed summaries, notes); machine fields stay :func:`iso`.
    """
    moment = datetime.fromtimestamp(timestamp, tz=ZoneInfo(zone))
    offset = moment.strftime("%z")
    name = moment.tzname() or ""
    named = f" {name}" if name and name[0] not in "+-" else ""  # Asia/Tehran's abbreviation is just "+0330"
    return f"{moment:%Y-%m-%d %H:%M:%S}{named} (UTC{offset[:3]}:{offset[3:]})"


def local_and_utc(timestamp: float | None, zone: str) -> str:
    """Local time with its offset, then UTC: ``2026-03-29 02:00:10 BST (UTC+01:00) = 2026-03-29T01:00:10.000Z``."""
    if timestamp is None:
        return "-"
    return f"{local(timestamp, zone)} = {iso(timestamp)}"
