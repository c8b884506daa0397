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
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from nvr.base.timeutil import iso, parse_iso
from nvr.health import coverage
from nvr.health.alarms import AlarmChange, AlarmType
from nvr.health.monitor import HealthMonitor
from web.access import ACCESS, identity, limit_error, visible
from web.app import STATION, api_error, find_camera
from web.slots import LimitReached

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

MAX_EVENTS = 10_000
MAX_COVERAGE_SECONDS = 366 * 86400
_SSE_QUEUE = 256
_SSE_KEEPALIVE_SECONDS = 15.0
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


def _time_param(request: web.Request, name: str, required: bool = False) -> float | None:
    text = request.query.get(name)
    if not text:
        if required:
            raise api_error(
                web.HTTPBadRequest, "bad_request", f"{name} is required (ISO-8601, e.g. 2026-01-31T12:00:00Z)"
            )
        return None
    try:
        return parse_iso(text)
    except ValueError as exc:
        raise api_error(web.HTTPBadRequest, "bad_time", f"{name}: not an ISO-8601 time with a zone ({exc})") from None


def _camera_param(request: web.Request) -> str | None:
    camera = request.query.get("camera") or None
    if camera is not None and camera not in request.app[STATION].cameras:
        raise api_error(web.HTTPNotFound, "unknown_camera", f"no camera with id {camera!r}")
    return camera


async def list_events(request: web.Request) -> web.Response:
    camera = _camera_param(request)
    kind = None
    if request.query.get("type"):
        try:
            kind = AlarmType(request.query["type"])
        except ValueError:
            known = ", ".join(t.value for t in AlarmType)
            raise api_error(web.HTTPBadRequest, "bad_type", f"unknown alarm type; one of {known}") from None
    since, until = _time_param(request, "since"), _time_param(request, "until")
    if since is not None and until is not None and until < since:
        raise api_error(web.HTTPBadRequest, "bad_range", "until is before since")
    open_text = request.query.get("open", "").lower()
    if open_text not in ("", "true", "false", "1", "0"):
        raise api_error(web.HTTPBadRequest, "bad_request", "open must be true or false")
    try:
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        raise api_error(web.HTTPBadRequest, "bad_request", "limit must be an integer") from None
    if not 1 <= limit <= MAX_EVENTS:
        raise api_error(web.HTTPBadRequest, "bad_request", f"limit must be between 1 and {MAX_EVENTS}")
    alarms = await _health(request).alarms.query(camera, kind, since, until, open_text in ("true", "1"), limit)
    return web.json_response({"events": [alarm.json() for alarm in alarms if visible(request, alarm.camera)]})


async def stream_events(request: web.Request) -> web.StreamResponse:
    store = _health(request).alarms
    queue: asyncio.Queue[AlarmChange] = asyncio.Queue(_SSE_QUEUE)
    closers = request.app[SSE_CLOSERS]
    access = request.app[ACCESS]
    who = identity(request)
    try:
        slot = access.event_streams.take(who.name if who is not None else "anonymous")  # before any await
    except LimitReached as limit:
        raise limit_error(limit) from None

    ended = asyncio.Event()

    def listener(change: AlarmChange) -> None:
        if not visible(request, change.alarm.camera):
            return
        try:
            queue.put_nowait(change)
        except asyncio.QueueFull:
            # Too slow: end the stream rather than buffer without bound; the client reconnects.
            log.warning("alarm feed client too slow; closing its stream")
            close()

    def close() -> None:
        if listener in store.listeners:
            store.listeners.remove(listener)
        ended.set()

    unwatch = access.watch.watch(who, "alarm feed", lambda _reason: close())
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    store.listeners.append(listener)
    closers.add(close)
    try:
        await response.prepare(request)
        # The current open alarms first, so a console that (re)connects starts complete.
        await response.write(b": nvr alarm feed\n\n")
        for alarm in filter(lambda a: visible(request, a.camera), store.open_alarms()):
            await response.write(_sse("alarm.open", {"event": "alarm.open", "alarm": alarm.json()}, alarm.id))
        while not ended.is_set():
            if queue.empty():
                waiter = asyncio.ensure_future(ended.wait())
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {waiter, getter}, timeout=_SSE_KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                if getter not in done:
                    getter.cancel()
                    if not done:
                        await response.write(b": keepalive\n\n")
                    continue
                change = getter.result()
            else:
                change = queue.get_nowait()
            if ended.is_set():
                break
            body = change.json()
            await response.write(_sse(body["event"], body, change.alarm.id))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        closers.discard(close)
        close()
        unwatch()
        slot.release()
    return response


def _sse(event: str, body: dict[str, Any], event_id: str) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(body)}\n\n".encode()


async def _close_streams(app: web.Application) -> None:
    closers: set[Callable[[], None]] = app[SSE_CLOSERS]
    for close in list(closers):
        close()


async def relearn_reference(request: web.Request) -> web.Response:
    runtime = find_camera(request)
    _health(request).relearn(runtime.config.id)
    return web.json_response({"camera": runtime.config.id, "relearning": True}, status=202)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATION].registry)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def get_coverage(request: web.Request) -> web.Response:
    station = request.app[STATION]
    start = _time_param(request, "start", required=True)
    end = _time_param(request, "end", required=True)
    assert start is not None and end is not None
    if end <= start:
        raise api_error(web.HTTPBadRequest, "bad_range", "end must be after start")
    if end - start > MAX_COVERAGE_SECONDS:
        raise api_error(web.HTTPBadRequest, "range_too_large", "the range may span at most 366 days")
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
    cameras = [camera] if camera else [c for c in station.cameras if visible(request, c)]
    report = []
    for camera_id in cameras:
        segments = await index.call(index.segments, camera_id, start, end)
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
