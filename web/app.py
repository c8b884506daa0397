"""The HTTP API: an aiohttp app factory over a running :class:`~nvr.station.StationPort`.

Every error leaves as JSON ``{"error": code, "message": text}`` with secrets
redacted; handlers only read state that the components own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from nvr import __version__
from nvr.base import secrets
from nvr.base.timeutil import iso
from recorder.recorder import Recorder
from streams.camera import CameraStreams
from streams.rtsp_source import RtspSource
from web.ports import StationPort

log = logging.getLogger(__name__)

STATION = web.AppKey("station", StationPort)
MAX_BODY_BYTES = 1 << 20


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": secrets.redact(message)}, status=status)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json":
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        response = error_response(exc.status, code, message or exc.reason)
        for name in ("Allow",):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.error("unhandled error in %s %s", request.method, request.path, exc_info=True)
        return error_response(500, "internal_error", "internal error; see the daemon's log")


def create_app(station: StationPort) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY_BYTES)
    app[STATION] = station
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/cameras", list_cameras)
    app.router.add_get("/api/cameras/{camera_id}", get_camera)
    from web import console, whep  # they import helpers from this module

    whep.add_routes(app, station)
    console.add_routes(app)
    from web import health_api

    health_api.add_routes(app)
    from web import recordings

    recordings.setup(app)
    from web import archive_api

    archive_api.add_routes(app)
    from web import access

    access.setup(app, station)  # last: its middleware runs inside json_errors
    app.cleanup_ctx.append(_limit_metrics)
    return app


async def _limit_metrics(app: web.Application) -> AsyncIterator[None]:
    """The limits' series (web/limits_metrics.py) in the station's registry while this app runs."""
    from web.access import ACCESS
    from web.limits_metrics import LimitsCollector
    from web.whep import WHEP

    access = app[ACCESS]
    collector = LimitsCollector(app[WHEP].slots, access.event_streams, access.throttle, access.watch)
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
    from web.access import visible

    return web.json_response(
        [camera_json(runtime, station.recording.recorders.get(camera_id))
         for camera_id, runtime in station.cameras.items() if visible(request, camera_id)]
    )


async def get_camera(request: web.Request) -> web.Response:
    runtime = find_camera(request)
    return web.json_response(camera_json(runtime, request.app[STATION].recording.recorders.get(runtime.config.id)))


def find_camera(request: web.Request) -> CameraStreams:
    camera_id = request.match_info["camera_id"]
    runtime = request.app[STATION].cameras.get(camera_id)
    if runtime is None:
        raise api_error(web.HTTPNotFound, "unknown_camera", f"no camera with id {camera_id!r}")
    return runtime


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or a JSON error saying what is wrong with it."""
    if request.content_type != "application/json":
        raise api_error(web.HTTPUnsupportedMediaType, "unsupported_media_type", "send application/json")
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # json nests by recursion: 2,000 '[' exhaust the stack
        raise api_error(web.HTTPBadRequest, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise api_error(web.HTTPBadRequest, "invalid_json", "the body must be a JSON object")
    return body


async def read_body(request: web.Request, limit: int, what: str = "the body") -> bytes:
    """The whole request body, at most ``limit`` bytes, else 413 ``payload_too_large``.

    ``request.content.read(n)`` returns what has arrived so far, so a body split
    across TCP segments or TLS records would be cut short: read until the end.
    """
    def too_large(size: int) -> web.HTTPException:
        body = json.dumps({"error": "payload_too_large", "message": f"{what} is at most {limit} bytes"})
        return web.HTTPRequestEntityTooLarge(limit, size, text=body, content_type="application/json")

    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_large(size)


def api_error(kind: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    """An HTTP error with our JSON body, to raise from a handler."""
    body = json.dumps({"error": code, "message": secrets.redact(message)})
    return kind(text=body, content_type="application/json")


def source_json(source: RtspSource) -> dict[str, Any]:
    status = source.status()
    return {
        "state": status.state.value,
        "state_reason": status.reason.value if status.reason else None,
        "state_message": status.message,
        "state_changed_at": iso(status.changed_at),
        "codec": status.codec,
        "width": status.width,
        "height": status.height,
        "fps": status.fps,
        "bitrate_bps": status.bitrate_bps,
        "last_packet_at": iso(status.last_packet_at),
        "audio_codec": status.audio_codec,
        "reconnects": status.reconnects,
        "invalid_packets": status.garbage_packets,
    }


def camera_json(runtime: CameraStreams, recorder: Recorder | None) -> dict[str, Any]:
    camera = runtime.config
    body: dict[str, Any] = {
        "id": camera.id,
        "name": camera.name,
        "zone": camera.zone.value,
        "record": camera.record,
        **source_json(runtime.source),
    }
    body["live"] = source_json(runtime.live_source) if runtime.live_source is not None else None
    body["recording"] = recorder.recording if recorder is not None else False
    body["recording_error"] = recorder.core.error if recorder is not None else None
    body["last_segment_at"] = iso(recorder.last_segment_end) if recorder is not None else None
    return body
