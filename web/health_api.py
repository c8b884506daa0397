"""HTTP endpoints of camera health: alarm history and live feed, reference re-learning, metrics, coverage.

- ``GET /api/events?camera=&type=&since=&until=&open=true&limit=``: alarms as intervals;
- ``GET /api/events/stream``: Server-Sent Events, one ``alarm.opened`` /
  ``alarm.closed`` event per change (a slow client is cut off, not buffered
  without bound; it reconnects and reads the history).  Feeds are bounded
  (``web.max_event_streams`` in all, 503; ``web.max_event_streams_per_user``,
  429), the slot taken before the first await, and a feed ends within
  seconds of its identity (:mod:`web.identity_watch`);
- ``POST /api/cameras/{id}/reference``: learn the camera's reference view again;
- ``GET /metrics``: Prometheus text format from the daemon's own registry;
- ``GET /api/coverage?start=&end=[&camera=]``: recorded seconds, coverage and
  every gap with its cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import generate_latest

from nvr.base.timeutil import iso
from nvr.health import coverage
from nvr.health.alarms import AlarmChange, AlarmType
from nvr.health.monitor import HealthMonitor
from web import params, sse
from web.access import visible
from web.http import STATION, api_error, find_camera

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

MAX_EVENTS = 10_000
MAX_COVERAGE_SECONDS = 366 * 86400
SSE_CLOSERS = web.AppKey("sse_closers", set[Callable[[], None]])


def add_routes(app: web.Application) -> None:
    app[SSE_CLOSERS] = set()
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/api/events", list_events)
    app.router.add_get("/api/events/stream", stream_events)
    app.router.add_post("/api/cameras/{camera_id}/reference", relearn_reference)
    app.router.add_get("/api/coverage", get_coverage)
    app.router.add_get("/metrics", metrics)


def _health(request: web.Request) -> HealthMonitor:
    return request.app[STATION].health


def _camera_param(request: web.Request) -> str | None:
    camera = request.query.get("camera") or None
    station = request.app[STATION]
    if camera is not None and camera not in station.cameras and station.config.bodycam(camera) is None:
        raise api_error(web.HTTPNotFound, "unknown_camera", f"no camera with id {camera!r}")
    return camera


async def list_events(request: web.Request) -> web.Response:
    camera = _camera_param(request)
    kind = params.choice(request, "type", AlarmType)
    since, until = params.time_range(request.query.get("since"), request.query.get("until"), None,
                                     "since", "until", required=False)
    open_only = params.boolean(request, "open")
    limit = params.integer(request, "limit", 1000, 1, MAX_EVENTS)
    alarms = await _health(request).alarms.query(camera, kind, since, until, open_only, limit)
    return web.json_response({"events": [alarm.json() for alarm in alarms if visible(request, alarm.camera)]})


async def stream_events(request: web.Request) -> web.StreamResponse:
    store = _health(request).alarms

    def subscribe(publish: sse.Publish) -> Callable[[], None]:
        def listener(change: AlarmChange) -> None:
            if visible(request, change.alarm.camera):
                body = change.json()
                publish(sse.Event(body["event"], body, change.alarm.id))

        store.listeners.append(listener)
        return lambda: store.listeners.remove(listener) if listener in store.listeners else None

    def initial() -> list[sse.Event]:
        # The current open alarms first, so a console that (re)connects starts complete.
        return [sse.Event("alarm.open", {"event": "alarm.open", "alarm": alarm.json()}, alarm.id)
                for alarm in store.open_alarms() if visible(request, alarm.camera)]

    return await sse.serve(request, "alarm feed", subscribe, initial, request.app[SSE_CLOSERS],
                           greeting=b": nvr alarm feed\n\n")


async def _close_streams(app: web.Application) -> None:
    await sse.close_all(app[SSE_CLOSERS])


async def relearn_reference(request: web.Request) -> web.Response:
    runtime = find_camera(request)
    _health(request).relearn(runtime.config.id)
    return web.json_response({"camera": runtime.config.id, "relearning": True}, status=202)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATION].registry)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def get_coverage(request: web.Request) -> web.Response:
    station = request.app[STATION]
    start, end = params.required_range(request.query.get("start"), request.query.get("end"), MAX_COVERAGE_SECONDS)
    camera = _camera_param(request)
    index = station.recording.index
    if index is None:
        raise api_error(
            web.HTTPServiceUnavailable,
            "storage_unavailable",
            f"the recording storage is not available: {station.recording.error or 'not checked yet'}",
        )
    store = _health(request).alarms
    now = time.time()
    runs = await store.runs(start, end)
    alarms = await store.query(None, None, start, end, False, 1_000_000)
    devices = [d.id for d in station.config.bodycams]
    cameras = [camera] if camera else [c for c in [*station.cameras, *devices] if visible(request, c)]
    report = []
    for camera_id in cameras:
        segments = await index.call(index.segments, camera_id, start, end)
        if camera_id in devices:  # a body camera: its recorded spans, not an uptime promise (issue 15)
            device = await asyncio.to_thread(coverage.for_device, camera_id, start, end, segments, now)
            report.append({**device.json(), "kind": "bodycam"})
            continue
        recorder = station.recording.recorders.get(camera_id)
        in_progress = None
        if recorder is not None and recorder.recording:
            # The open segment is indexed only when it closes (at most about two segment lengths).
            horizon = now - 2 * station.config.storage.segment_seconds
            in_progress = max(recorder.last_segment_end or horizon, horizon)
        # Up to 366 days of segments and alarms: computed off the loop.
        result = await asyncio.to_thread(
            coverage.for_segments, camera_id, start, end, segments, alarms, runs, now, in_progress
        )
        report.append(result.json())
    return web.json_response({"start": iso(start), "end": iso(end), "generated_at": iso(now), "cameras": report})
