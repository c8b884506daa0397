"""HTTP ``Range`` requests (RFC 9110 §14): the one parser, for clips and for the files playlists name.

One range per response.  What this answers, for a resource of ``size`` bytes:

- no ``Range``, another unit, a syntax error, ``first > last``, or several
  ranges (``bytes=0-1,5-9``): the header is ignored and the whole resource is
  sent with 200, as RFC 9110 allows; so a thousand tiny ranges cannot make
  the server assemble a thousand parts;
- ``bytes=a-b``, ``bytes=a-`` and the suffix ``bytes=-n``: 206 with
  ``Content-Range: bytes a-b/size`` (``b`` clamped to the end);
- a range that starts at or beyond the end, or ``bytes=-0``: 416 with
  ``Content-Range: bytes */size``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from web.http import api_error

_SPEC = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_MAX_DIGITS = 19  # more than any file's size; int() of thousands of digits is refused anyway
_HUGE = 10**_MAX_DIGITS


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """A single byte range as asked: ``first``-``last`` (``last`` None: to the end) or the last ``suffix`` bytes."""

    first: int | None
    last: int | None
    suffix: int | None = None

    def resolve(self, size: int) -> tuple[int, int] | None:
        """[start, stop) within a resource of ``size`` bytes, or None if it is unsatisfiable."""
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                return None
            return max(0, size - self.suffix), size
        assert self.first is not None
        if self.first >= size:
            return None
        stop = size if self.last is None else min(self.last + 1, size)
        return self.first, stop

    @property
    def from_start(self) -> bool:
        """``bytes=0-``: the whole resource (what a media element asks first)."""
        return self.first == 0 and self.last is None


def _number(text: str) -> int:
    return _HUGE if len(text) > _MAX_DIGITS else int(text)


def parse(header: str | None) -> RangeRequest | None:
    """The single range a ``Range`` header asks for, or None when it is to be ignored (see the module)."""
    if not header or "," in header:
        return None
    match = _SPEC.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        return RangeRequest(None, None, _number(last)) if last else None
    start = _number(first)
    end = _number(last) if last else None
    if end is not None and end < start:
        return None
    return RangeRequest(start, end)


def unsatisfiable(size: int) -> web.HTTPException:
    error = api_error(web.HTTPRequestRangeNotSatisfiable, "range_not_satisfiable",
                      f"Range: the resource is {size} bytes; the range asked for starts beyond its end")
    error.headers["Content-Range"] = f"bytes */{size}"
    return error


def partial_headers(start: int, stop: int, size: int) -> dict[str, str]:
    return {"Content-Range": f"bytes {start}-{stop - 1}/{size}", "Content-Length": str(stop - start)}


class SizeCache:
    """Lengths of generated resources (clips) by key, a bounded LRU: a Range request needs the length."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._sizes: OrderedDict[tuple[object, ...], int] = OrderedDict()

    def get(self, key: tuple[object, ...]) -> int | None:
        size = self._sizes.get(key)
        if size is not None:
            self._sizes.move_to_end(key)
        return size

    def put(self, key: tuple[object, ...], size: int) -> None:
        self._sizes[key] = size
        self._sizes.move_to_end(key)
        while len(self._sizes) > self.capacity:
            self._sizes.popitem(last=False)
