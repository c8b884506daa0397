"""Coverage report for auditors: for one camera and a time range, what was recorded and why the rest was not.

Pure computation over three histories: the recorded spans (segment index),
the alarm intervals (alarm store) and the daemon's runs.  Every gap between
recorded spans is split by cause, most fundamental first:

1. ``daemon_down``: no run of the daemon covers the time (nothing watched);
2. ``offline``: the camera was offline (``reason`` says why); the outage is
   counted from its last packet, not from when the stall was declared;
3. ``disk_full``: the storage was full;
4. ``recording_stalled``: the camera was online but nothing was written;
5. ``recording_in_progress``: the segment being written now (not indexed yet);
6. ``unknown``: none of the above explains it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nvr.alarms import Alarm, AlarmType, Run
from nvr.timeutil import iso

# Consecutive segments of a run meet exactly; float rounding makes micro-gaps we do not report.
MIN_GAP_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Gap:
    start: float
    end: float
    cause: str
    reason: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "seconds": round(self.end - self.start, 3),
            "cause": self.cause,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class CameraCoverage:
    camera: str
    start: float
    end: float
    recorded_seconds: float
    gaps: list[Gap] = field(default_factory=list)

    @property
    def percent(self) -> float:
        span = self.end - self.start
        return round(100.0 * self.recorded_seconds / span, 3) if span > 0 else 0.0

    def json(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "start": iso(self.start),
            "end": iso(self.end),
            "recorded_seconds": round(self.recorded_seconds, 3),
            "coverage_percent": self.percent,
            "gaps": [gap.json() for gap in self.gaps],
        }


@dataclass(frozen=True, slots=True)
class _Cause:
    start: float
    end: float
    priority: int
    cause: str
    reason: str | None = None


def compute(
    camera: str,
    start: float,
    end: float,
    spans: Iterable[tuple[float, float]],
    alarms: Iterable[Alarm],
    runs: Iterable[Run],
    now: float,
    in_progress_since: float | None = None,
) -> CameraCoverage:
    """Coverage of ``camera`` over [start, end); ``alarms`` may include station alarms (camera None)."""
    recorded = _merge((max(s, start), min(e, end)) for s, e in spans if e > start and s < end)
    recorded_seconds = sum(e - s for s, e in recorded)
    holes: list[tuple[float, float]] = []
    cursor = start
    for s, e in recorded:
        if s - cursor > MIN_GAP_SECONDS:
            holes.append((cursor, s))
        cursor = max(cursor, e)
    if end - cursor > MIN_GAP_SECONDS:
        holes.append((cursor, end))

    causes = _causes(camera, start, end, alarms, runs, now, in_progress_since)
    gaps: list[Gap] = []
    for hole in holes:
        gaps.extend(_explain(hole, causes))
    return CameraCoverage(camera, start, end, recorded_seconds, gaps)


def explain_gap(
    camera: str,
    gap: tuple[float, float],
    alarms: Sequence[Alarm],
    runs: Sequence[Run],
    now: float,
) -> list[Gap]:
    """The causes of one gap in ``camera``'s recordings, split where the cause changes."""
    return _explain(gap, _causes(camera, gap[0], gap[1], alarms, runs, now, None))


def _causes(
    camera: str,
    start: float,
    end: float,
    alarms: Iterable[Alarm],
    runs: Iterable[Run],
    now: float,
    in_progress_since: float | None,
) -> list[_Cause]:
    causes: list[_Cause] = []
    # Daemon down: the complement of the runs.
    cursor = start
    for run in sorted(runs, key=lambda r: r.started_at):
        if run.started_at > cursor:
            causes.append(_Cause(cursor, run.started_at, 1, "daemon_down"))
        cursor = max(cursor, run.end)
    if cursor < min(end, now):
        causes.append(_Cause(cursor, min(end, now), 1, "daemon_down"))
    for alarm in alarms:
        if alarm.camera not in (camera, None):
            continue
        closed = alarm.closed_at if alarm.closed_at is not None else now
        if alarm.type is AlarmType.OFFLINE:
            last_packet = alarm.details.get("last_packet_at")
            opened = min(alarm.opened_at, last_packet) if isinstance(last_packet, int | float) else alarm.opened_at
            causes.append(_Cause(opened, closed, 2, "offline", alarm.details.get("reason")))
        elif alarm.type is AlarmType.DISK_FULL:
            causes.append(_Cause(alarm.opened_at, closed, 3, "disk_full"))
        elif alarm.type is AlarmType.RECORDING_STALLED:
            causes.append(_Cause(alarm.opened_at, closed, 4, "recording_stalled"))
    if in_progress_since is not None:
        causes.append(_Cause(in_progress_since, now, 5, "recording_in_progress"))
    if end > now:
        causes.append(_Cause(now, end, 0, "future"))
    return causes


def _explain(hole: tuple[float, float], causes: Sequence[_Cause]) -> list[Gap]:
    lo, hi = hole
    relevant = [c for c in causes if c.end > lo and c.start < hi]
    inner = {t for c in relevant for t in (c.start, c.end) if lo < t < hi}
    points = sorted({lo, hi, *inner})
    pieces: list[Gap] = []
    for a, b in zip(points, points[1:], strict=False):
        mid = (a + b) / 2
        covering = [c for c in relevant if c.start <= mid < c.end]
        best = min(covering, key=lambda c: c.priority) if covering else None
        cause, reason = (best.cause, best.reason) if best else ("unknown", None)
        if pieces and pieces[-1].cause == cause and pieces[-1].reason == reason and pieces[-1].end == a:
            pieces[-1] = Gap(pieces[-1].start, b, cause, reason)
        else:
            pieces.append(Gap(a, b, cause, reason))
    return [p for p in pieces if p.end - p.start > MIN_GAP_SECONDS or len(pieces) == 1]


def _merge(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for s, e in sorted(spans):
        if e <= s:
            continue
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged
