"""What a camera's ONVIF link says, as alarms: its clock (``clock_drift``) and the events it raises itself.

Runs on the event loop, called back by :class:`streams.onvif.OnvifLink`.

- **Clock.**  Each reading of the camera's clock opens ``clock_drift`` when the
  offset exceeds ``health.clock_tolerance_seconds`` and closes it when a
  reading is back within it; the alarm's details carry the offset, the
  tolerance and the round trip of the reading.  A court asks whether the time
  on the picture was right: the offset also goes into every segment's index
  row (see :meth:`OnvifHealth.segment_meta`).
- **Events.**  Tamper, video loss and digital inputs open and close
  ``camera_tamper``, ``camera_video_loss`` and ``camera_input`` with the
  camera's own wording (topic, source and data items, its own timestamp) in
  the details.  A camera with several inputs keeps one ``camera_input`` alarm
  open while any of them is active.  Motion and other topics are counted, not
  alarmed (a corridor camera's motion is not a fault).
"""

from __future__ import annotations

import logging
from typing import Any

from nvr.health.alarms import AlarmStore, AlarmType, Severity
from streams.onvif import CameraEvent, EventKind, OnvifLink

log = logging.getLogger(__name__)

_ALARM_FOR = {
    EventKind.TAMPER: AlarmType.CAMERA_TAMPER,
    EventKind.VIDEO_LOSS: AlarmType.CAMERA_VIDEO_LOSS,
    EventKind.DIGITAL_INPUT: AlarmType.CAMERA_INPUT,
}


class OnvifHealth:
    def __init__(self, camera: str, link: OnvifLink, alarms: AlarmStore, severity: Severity,
                 tolerance_seconds: float) -> None:
        self.camera = camera
        self.link = link
        self.alarms = alarms
        self.severity = severity
        self.tolerance = tolerance_seconds
        self.events: dict[str, int] = {}  # by kind, for the metrics
        self._active: dict[AlarmType, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
        link.on_clock = self.clock_read
        link.on_event = self.event

    def clock_read(self, link: OnvifLink) -> None:
        offset = link.clock_offset_seconds
        if offset is None:
            return
        details = {"clock_offset_seconds": offset, "tolerance_seconds": self.tolerance,
                   "round_trip_seconds": link.clock_rtt_seconds}
        if abs(offset) > self.tolerance:
            self.alarms.open(self.camera, AlarmType.CLOCK_DRIFT, self.severity, details)
        else:
            self.alarms.close(self.camera, AlarmType.CLOCK_DRIFT, details)

    def event(self, link: OnvifLink, event: CameraEvent) -> None:
        self.events[event.kind.value] = self.events.get(event.kind.value, 0) + 1
        kind = _ALARM_FOR.get(event.kind)
        if kind is None or event.active is None:
            log.debug("[%s] camera event %s %s", self.camera, event.topic, event.data)
            return
        active = self._active.setdefault(kind, set())
        if event.active:
            active.add(event.key)
            self.alarms.open(self.camera, kind, self.severity, event.details())
        else:
            active.discard(event.key)
            if not active:
                self.alarms.close(self.camera, kind, {"cleared_by": event.details()})

    def segment_meta(self) -> dict[str, Any]:
        """For a segment written now: the camera's clock offset as last measured (nothing if never read)."""
        if self.link.clock_offset_seconds is None or self.link.clock_checked_at is None:
            return {}
        return {"clock_offset_seconds": self.link.clock_offset_seconds,
                "clock_checked_at": round(self.link.clock_checked_at, 3)}
