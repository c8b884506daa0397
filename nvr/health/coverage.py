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

A segment whose file is gone outranks them all (``file_missing``), and the
future is ``future``.  The spans and the splitting are
:mod:`recorder.timeline`'s, shared with search and exports; this module only
turns the health history into :class:`~recorder.timeline.Cause` intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nvr.base.timeutil import iso
from nvr.health.alarms import LAST_PACKET_AT, Alarm, AlarmType, Run
from recorder.index import SegmentRecord
from recorder.timeline import Cause, Gap, Timeline, build, from_intervals


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

    @classmethod
    def of(cls, timeline: Timeline) -> CameraCoverage:
        return cls(timeline.camera, timeline.start, timeline.end, timeline.recorded_seconds, timeline.gaps)

    def json(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "start": iso(self.start),
            "end": iso(self.end),
            "recorded_seconds": round(self.recorded_seconds, 3),
            "coverage_percent": self.percent,
            "gaps": [gap.json() for gap in self.gaps],
        }


def for_segments(camera: str, start: float, end: float, segments: Sequence[SegmentRecord], alarms: Iterable[Alarm],
                 runs: Iterable[Run], now: float, in_progress_since: float | None = None) -> CameraCoverage:
    """Coverage of ``camera`` from its index rows (the same timeline as search and exports)."""
    return CameraCoverage.of(build(camera, start, end, segments,
                                   causes(camera, start, end, alarms, runs, now, in_progress_since)))


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
    """Coverage of ``camera`` over [start, end) from bare recorded intervals; ``alarms`` may include station
    alarms (camera None)."""
    return CameraCoverage.of(from_intervals(camera, start, end, spans,
                                            causes(camera, start, end, alarms, runs, now, in_progress_since)))


def causes(
    camera: str,
    start: float,
    end: float,
    alarms: Iterable[Alarm],
    runs: Iterable[Run],
    now: float,
    in_progress_since: float | None = None,
) -> list[Cause]:
    """What the daemon knows about why ``camera`` was not recorded, as prioritised intervals."""
    found: list[Cause] = []
    # Daemon down: the complement of the runs.
    cursor = start
    for run in sorted(runs, key=lambda r: r.started_at):
        if run.started_at > cursor:
            found.append(Cause(cursor, run.started_at, 1, "daemon_down"))
        cursor = max(cursor, run.end)
    if cursor < min(end, now):
        found.append(Cause(cursor, min(end, now), 1, "daemon_down"))
    for alarm in alarms:
        if alarm.camera not in (camera, None):
            continue
        closed = alarm.closed_at if alarm.closed_at is not None else now
        if alarm.type is AlarmType.OFFLINE:
            last_packet = alarm.details.get(LAST_PACKET_AT)
            opened = min(alarm.opened_at, last_packet) if isinstance(last_packet, int | float) else alarm.opened_at
            found.append(Cause(opened, closed, 2, "offline", alarm.details.get("reason")))
        elif alarm.type is AlarmType.DISK_FULL:
            found.append(Cause(alarm.opened_at, closed, 3, "disk_full"))
        elif alarm.type is AlarmType.RECORDING_STALLED:
            found.append(Cause(alarm.opened_at, closed, 4, "recording_stalled"))
    if in_progress_since is not None:
        found.append(Cause(in_progress_since, now, 5, "recording_in_progress"))
    if end > now:
        found.append(Cause(now, end, 0, "future"))
    return found


DEVICE_NOT_RECORDING = "not_recording"


def device_causes(start: float, end: float, now: float) -> list[Cause]:
    """A body camera's gaps (issue 15): it records when its wearer switches it on and its files arrive when
    it is docked, so coverage is its recorded spans and every gap is ``not_recording``, not an outage."""
    found = [Cause(start, end, 9, DEVICE_NOT_RECORDING)]
    if end > now:
        found.append(Cause(now, end, 0, "future"))
    return found


def for_device(device: str, start: float, end: float, segments: Sequence[SegmentRecord], now: float
               ) -> CameraCoverage:
    """Coverage of a body camera: the spans of its uploaded files, nothing promised in between."""
    return CameraCoverage.of(build(device, start, end, segments, device_causes(start, end, now)))
