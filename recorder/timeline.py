"""A camera's timeline over a range: recorded spans and explained gaps. The one algorithm for all of them.

Search (``GET /api/recordings``), coverage (``GET /api/coverage``), evidence
exports and the playback page all come through :func:`build`, so they can
never disagree about the same range.  The rules, once:

- a segment whose file is gone (index status ``missing``) is not recorded
  footage: it plays nothing; the hole it leaves is a gap with cause
  ``file_missing``, which outranks every other cause (the camera *was*
  recorded; the file was lost);
- consecutive segments closer than :data:`JOIN_SECONDS` are one span (segments
  of one run meet exactly; this absorbs float rounding and a lost frame);
  a hole no longer than that is not a gap;
- each gap is split where its explanation changes; explanations are
  intervals with a priority (:class:`Cause`, lower wins) supplied by the
  caller: the health layer turns alarms and daemon runs into causes
  (:func:`nvr.health.coverage.causes`); without any, a gap is ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nvr.base.timeutil import iso
from recorder.index import SegmentRecord

JOIN_SECONDS = 0.5
FILE_MISSING = "file_missing"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    end: float

    def json(self) -> dict[str, Any]:
        return {"start": iso(self.start), "end": iso(self.end), "seconds": round(self.end - self.start, 3)}


@dataclass(frozen=True, slots=True)
class Gap:
    start: float
    end: float
    cause: str
    reason: str | None = None

    def json(self) -> dict[str, Any]:
        return {"start": iso(self.start), "end": iso(self.end), "seconds": round(self.end - self.start, 3),
                "cause": self.cause, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Cause:
    """Why nothing was recorded over [start, end), if a gap falls there; the lowest priority wins."""

    start: float
    end: float
    priority: int
    cause: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Timeline:
    camera: str
    start: float
    end: float
    spans: list[Span]
    gaps: list[Gap]
    segments: list[SegmentRecord] = field(default_factory=list)  # the playable ones, oldest first

    @property
    def recorded_seconds(self) -> float:
        return sum(span.end - span.start for span in self.spans)

    @property
    def percent(self) -> float:
        length = self.end - self.start
        return round(100.0 * self.recorded_seconds / length, 3) if length > 0 else 0.0


def build(camera: str, start: float, end: float, segments: Sequence[SegmentRecord],
          causes: Iterable[Cause] = ()) -> Timeline:
    """The timeline of ``camera`` over [start, end) from its index rows (as ``SegmentIndex.segments`` gives)."""
    playable = [s for s in segments if s.status != "missing"]
    lost = [Cause(s.start, s.end, -1, FILE_MISSING) for s in segments if s.status == "missing"]
    timeline = from_intervals(camera, start, end, ((s.start, s.end) for s in playable), [*lost, *causes])
    return Timeline(camera, start, end, timeline.spans, timeline.gaps, playable)


def from_intervals(camera: str, start: float, end: float, recorded: Iterable[tuple[float, float]],
                   causes: Iterable[Cause] = ()) -> Timeline:
    """The same over bare recorded intervals (for callers that have no index rows)."""
    spans = _spans(recorded, start, end)
    relevant = list(causes)
    gaps = [piece for hole in _holes(spans, start, end) for piece in _explain(hole, relevant)]
    return Timeline(camera, start, end, spans, gaps)


def _spans(recorded: Iterable[tuple[float, float]], start: float, end: float) -> list[Span]:
    spans: list[Span] = []
    for s, e in sorted((max(s, start), min(e, end)) for s, e in recorded):
        if e <= s:
            continue
        if spans and s - spans[-1].end <= JOIN_SECONDS:
            spans[-1] = Span(spans[-1].start, max(spans[-1].end, e))
        else:
            spans.append(Span(s, e))
    return spans


def _holes(spans: list[Span], start: float, end: float) -> list[tuple[float, float]]:
    holes = []
    cursor = start
    for span in spans:
        if span.start - cursor > JOIN_SECONDS:
            holes.append((cursor, span.start))
        cursor = max(cursor, span.end)
    if end - cursor > JOIN_SECONDS:
        holes.append((cursor, end))
    return holes


def _explain(hole: tuple[float, float], causes: Sequence[Cause]) -> list[Gap]:
    lo, hi = hole
    relevant = [c for c in causes if c.end > lo and c.start < hi]
    inner = {t for c in relevant for t in (c.start, c.end) if lo < t < hi}
    points = sorted({lo, hi, *inner})
    pieces: list[Gap] = []
    for a, b in zip(points, points[1:], strict=False):
        mid = (a + b) / 2
        covering = [c for c in relevant if c.start <= mid < c.end]
        best = min(covering, key=lambda c: c.priority) if covering else None
        cause, reason = (best.cause, best.reason) if best else (UNKNOWN, None)
        if pieces and pieces[-1].cause == cause and pieces[-1].reason == reason and pieces[-1].end == a:
            pieces[-1] = Gap(pieces[-1].start, b, cause, reason)
        else:
            pieces.append(Gap(a, b, cause, reason))
    # A sliver between two causes (jitter between an alarm's time and a segment's) is not a gap of its
    # own: it joins its neighbour, so the pieces still cover the whole hole.
    merged: list[Gap] = []
    for piece in pieces:
        if merged and piece.end - piece.start <= JOIN_SECONDS:
            merged[-1] = Gap(merged[-1].start, piece.end, merged[-1].cause, merged[-1].reason)
        elif merged and merged[-1].end - merged[-1].start <= JOIN_SECONDS:
            merged[-1] = Gap(merged[-1].start, piece.end, piece.cause, piece.reason)
        else:
            merged.append(piece)
    return merged
