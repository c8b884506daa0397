"""The station's API answers as typed models: the station builds its JSON from them, the console parses with them.

One definition of what ``GET /api/cameras`` and the alarm routes carry, so the
central console (:mod:`central.station_link`) cannot drift from the station.
Unknown fields are ignored when parsing (a newer station may say more).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SourceView(_Model):
    """One RTSP stream of a camera, as its source reports it."""

    state: str
    state_reason: str | None = None
    state_message: str | None = None
    state_changed_at: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    bitrate_bps: float | None = None
    last_packet_at: str | None = None
    audio_codec: str | None = None
    reconnects: int = 0
    invalid_packets: int = 0


class OnvifView(_Model):
    """A camera's ONVIF link: its state, the camera's clock, its event subscription."""

    state: str
    state_reason: str | None = None
    state_message: str | None = None
    clock_offset_seconds: float | None = None
    clock_round_trip_seconds: float | None = None
    clock_checked_at: str | None = None
    events_subscribed: bool = False
    events_received: int = 0
    edge_storage: bool | None = None  # ONVIF Profile G (search and replay of the camera's card); None: not known


class BackfillJobView(_Model):
    """A gap being (or that was) retrieved from the camera's own card (edge backfill, recorder/backfill.py)."""

    id: int
    start: str
    end: str
    state: str  # pending | active | done | failed
    attempts: int
    reason: str | None = None  # why part of it stays a gap: card_empty, card_overwritten, before_keyframe, ...
    detail: str | None = None
    segments: int = 0
    retrieved_seconds: float = 0.0
    overlap_dropped: int = 0


class CameraView(SourceView):
    """``GET /api/cameras`` and ``GET /api/cameras/{id}``: the main stream's fields at the top level."""

    id: str
    name: str
    zone: str = "other"
    record: bool = True
    live: SourceView | None = None
    recording: bool = False
    recording_error: str | None = None
    last_segment_at: str | None = None
    # The camera's clock minus ours (ONVIF), as last measured; None without an ONVIF link or before a reading.
    clock_offset_seconds: float | None = None
    onvif: OnvifView | None = None
    backfill: list[BackfillJobView] | None = None  # the latest jobs, newest first; None: no edge backfill


class AlarmView(_Model):
    """An alarm in ``GET /api/events`` and the alarm feed."""

    id: str
    camera: str | None = None
    type: str
    severity: str
    opened_at: str
    closed_at: str | None = None
    duration_seconds: float | None = None
    open: bool = True
    details: dict[str, Any] = {}


class EventsView(_Model):
    events: list[AlarmView]
