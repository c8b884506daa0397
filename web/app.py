"""The station's HTTP API: the aiohttp app factory, and the health and camera routes.

:func:`create_app` mounts every route module (live view, the console pages,
health, recordings and evidence, the archive, access control) over anything
that satisfies :class:`web.ports.StationPort`; handlers only read state that
the components own.  The shared plumbing (JSON errors, bodies) is
:mod:`web.http`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from nvr import __version__
from nvr.base.timeutil import iso
from recorder.backfill import Backfill
from recorder.recorder import Recorder
from streams.camera import CameraStreams
from streams.onvif import OnvifLink
from streams.rtsp_source import RtspSource
from web import (
    access,
    archive_api,
    bodycams,
    cases,
    console,
    health_api,
    hls,
    openapi,
    recordings,
    thumbnails_api,
    whep,
)
from web.http import MAX_BODY_BYTES, STATION, find_camera, json_errors
from web.limits_metrics import LimitsCollector
from web.ports import StationPort
from web.schema import BackfillJobView, CameraView, OnvifView, SourceView

log = logging.getLogger(__name__)


def create_app(station: StationPort) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY_BYTES)
    app[STATION] = station
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/cameras", list_cameras)
    app.router.add_get("/api/cameras/{camera_id}", get_camera)
    whep.add_routes(app, station)
    console.add_routes(app)
    health_api.add_routes(app)
    recordings.setup(app)
    hls.setup(app)
    thumbnails_api.setup(app)
    bodycams.add_routes(app)
    cases.add_routes(app)
    archive_api.add_routes(app)
    openapi.add_routes(app)
    access.setup(app, station)  # last: its middleware runs inside json_errors
    app.cleanup_ctx.append(_limit_metrics)
    return app


async def _limit_metrics(app: web.Application) -> AsyncIterator[None]:
    """The limits' series (web/limits_metrics.py) in the station's registry while this app runs."""
    limits = app[access.ACCESS]
    collector = LimitsCollector(app[whep.WHEP].slots, limits.event_streams, limits.throttle, limits.watch)
    registry = app[STATION].registry
    registry.register(collector)
    yield
    registry.unregister(collector)


async def healthz(request: web.Request) -> web.Response:
    station = request.app[STATION]
    healthy = station.problem() is None
    body = {"status": "ok" if healthy else "degraded", "version": __version__, "station": station.config.station.id}
    return web.json_response(body, status=200 if healthy else 503)


async def list_cameras(request: web.Request) -> web.Response:
    station = request.app[STATION]
    return web.json_response(
        [camera_json(runtime, station.recording.recorders.get(camera_id), station.recording.backfill)
         for camera_id, runtime in station.cameras.items() if access.visible(request, camera_id)]
    )


async def get_camera(request: web.Request) -> web.Response:
    runtime = find_camera(request)
    recording = request.app[STATION].recording
    return web.json_response(camera_json(runtime, recording.recorders.get(runtime.config.id), recording.backfill))


def source_view(source: RtspSource) -> SourceView:
    status = source.status()
    return SourceView(
        state=status.state.value,
        state_reason=status.reason.value if status.reason else None,
        state_message=status.message,
        state_changed_at=iso(status.changed_at),
        codec=status.codec,
        width=status.width,
        height=status.height,
        fps=status.fps,
        bitrate_bps=status.bitrate_bps,
        last_packet_at=iso(status.last_packet_at),
        audio_codec=status.audio_codec,
        reconnects=status.reconnects,
        invalid_packets=status.garbage_packets,
    )


def camera_json(runtime: CameraStreams, recorder: Recorder | None, backfill: Backfill | None = None
                ) -> dict[str, Any]:
    camera = runtime.config
    view = CameraView(
        id=camera.id, name=camera.name, zone=camera.zone.value, record=camera.record,
        **source_view(runtime.source).model_dump(),
        live=source_view(runtime.live_source) if runtime.live_source is not None else None,
        recording=recorder.recording if recorder is not None else False,
        recording_error=recorder.core.error if recorder is not None else None,
        last_segment_at=iso(recorder.last_segment_end) if recorder is not None else None,
        **onvif_fields(runtime.onvif),
        backfill=backfill_jobs(backfill, camera.id),
    )
    return view.model_dump()


# The latest jobs a camera's view lists.
_BACKFILL_JOBS_SHOWN = 20


def backfill_jobs(backfill: Backfill | None, camera_id: str) -> list[BackfillJobView] | None:
    if backfill is None or camera_id not in backfill.cameras:
        return None
    return [BackfillJobView(**job.json()) for job in backfill.list_jobs(camera_id)[::-1][:_BACKFILL_JOBS_SHOWN]]


def onvif_fields(link: OnvifLink | None) -> dict[str, Any]:
    if link is None:
        return {}
    status = link.status()
    return {"clock_offset_seconds": status.clock_offset_seconds, "onvif": OnvifView(
        state=status.state.value, state_reason=status.reason.value if status.reason else None,
        state_message=status.message, clock_offset_seconds=status.clock_offset_seconds,
        clock_round_trip_seconds=status.clock_rtt_seconds, clock_checked_at=iso(status.clock_checked_at),
        events_subscribed=status.events_subscribed, events_received=status.events_received,
        edge_storage=status.edge_storage)}
