"""Time-range search: what was recorded for a camera, and what was not.

The index gives the segments; consecutive segments closer than
``JOIN_SECONDS`` form one continuous span; everything else in the range is a
gap.  A gap's cause is filled in by a pluggable explainer (camera offline
with its reason, disk full, daemon down) where the daemon knows one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recorder.index import SegmentIndex, SegmentRecord

# Segments of one run meet exactly; allow for rounding and a lost frame.
JOIN_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Span:
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Gap:
    start: float
    end: float
    cause: str | None


@dataclass(frozen=True, slots=True)
class SearchResult:
    camera: str
    start: float
    end: float
    spans: list[Span]
    gaps: list[Gap]
    segments: list[SegmentRecord]

    @property
    def recorded_seconds(self) -> float:
        return sum(span.end - span.start for span in self.spans)


GapExplainer = Callable[[str, float, float], str | None]


def spans_of(segments: list[SegmentRecord], start: float, end: float) -> list[Span]:
    spans: list[Span] = []
    for seg in segments:
        s, e = max(seg.start, start), min(seg.end, end)
        if e <= s:
            continue
        if spans and s - spans[-1].end <= JOIN_SECONDS:
            spans[-1] = Span(spans[-1].start, max(spans[-1].end, e))
        else:
            spans.append(Span(s, e))
    return spans


def gaps_of(spans: list[Span], start: float, end: float) -> list[tuple[float, float]]:
    gaps = []
    cursor = start
    for span in spans:
        if span.start - cursor > JOIN_SECONDS:
            gaps.append((cursor, span.start))
        cursor = max(cursor, span.end)
    if end - cursor > JOIN_SECONDS:
        gaps.append((cursor, end))
    return gaps


def search(index: SegmentIndex, camera: str, start: float, end: float,
           explain: GapExplainer | None = None) -> SearchResult:
    """Runs on the index thread."""
    segments = [s for s in index.segments(camera, start, end) if s.status != "missing"]
    spans = spans_of(segments, start, end)
    gaps = [Gap(s, e, explain(camera, s, e) if explain else None) for s, e in gaps_of(spans, start, end)]
    return SearchResult(camera, start, end, spans, gaps, segments)
