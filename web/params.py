"""Request parameters: the one parser, with one set of error codes.

Every mistake in a parameter or body field answers 400 with the code
``invalid_<field>`` and a message that starts with the field's name
(``start: is not a valid ISO-8601 time``): one rule for query strings and
JSON bodies, for every route.  The README lists the codes.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, TypeVar

from aiohttp import web

from nvr.base.timeutil import parse_iso
from web.http import api_error

E = TypeVar("E", bound=Enum)

_MAX_DIGITS = 18  # below 2**63 (SQLite's integers); int() also refuses thousands of digits


def invalid(field: str, message: str) -> web.HTTPException:
    return api_error(web.HTTPBadRequest, f"invalid_{field}", f"{field}: {message}")


def time(value: Any, field: str, required: bool = True) -> float | None:
    """An ISO-8601 time with ``Z`` or an offset (a string from a query or a JSON body)."""
    if value is None or value == "":
        if required:
            raise invalid(field, "is required (ISO-8601 time with Z or an offset, e.g. 2026-01-31T12:00:00Z)")
        return None
    if not isinstance(value, str):
        raise invalid(field, "must be an ISO-8601 string")
    try:
        parsed = parse_iso(value)
    except ValueError as exc:
        raise invalid(field, f"is not a valid ISO-8601 time ({exc})") from None
    if not math.isfinite(parsed):
        raise invalid(field, "is not a valid time")
    return parsed


def required_time(value: Any, field: str) -> float:
    parsed = time(value, field, required=True)
    assert parsed is not None
    return parsed


def time_range(start_raw: Any, end_raw: Any, max_seconds: float | None, start_field: str = "start",
               end_field: str = "end", required: bool = True) -> tuple[float | None, float | None]:
    """Two times, the second after the first (equal allowed only when not required), at most ``max_seconds``."""
    start, end = time(start_raw, start_field, required), time(end_raw, end_field, required)
    if start is not None and end is not None:
        if end < start or (required and end == start):
            raise invalid(end_field, f"must be after {start_field}")
        if max_seconds is not None and end - start > max_seconds:
            raise invalid(end_field, f"the range is longer than the limit of {_duration(max_seconds)}")
    return start, end


def required_range(start_raw: Any, end_raw: Any, max_seconds: float | None) -> tuple[float, float]:
    start, end = time_range(start_raw, end_raw, max_seconds)
    assert start is not None and end is not None
    return start, end


def integer(request: web.Request, field: str, default: int, lo: int, hi: int) -> int:
    """A query integer in [lo, hi]: ASCII digits only ('²' is a digit to str.isdigit())."""
    raw = request.query.get(field)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_DIGITS:
        raise invalid(field, f"must be an integer from {lo} to {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise invalid(field, f"must be an integer from {lo} to {hi}")
    return value


def boolean(request: web.Request, field: str) -> bool:
    raw = request.query.get(field, "").lower()
    if raw not in ("", "true", "false", "1", "0"):
        raise invalid(field, "must be true or false")
    return raw in ("true", "1")


def choice(request: web.Request, field: str, kind: type[E]) -> E | None:
    raw = request.query.get(field)
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        known = ", ".join(str(member.value) for member in kind)
        raise invalid(field, f"unknown value; one of {known}") from None


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h"  # the limits are configured in hours
