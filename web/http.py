"""HTTP plumbing shared by every route module: JSON errors, bounded bodies, the station key of the app.

Every error leaves as JSON ``{"error": code, "message": text}`` with secrets
redacted.  Nothing here knows a route; every route module imports it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from nvr.base import secrets
from streams.camera import CameraStreams
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


def find_camera(request: web.Request) -> CameraStreams:
    camera_id = request.match_info["camera_id"]
    station = request.app[STATION]
    runtime = station.cameras.get(camera_id)
    if runtime is None:
        if station.config.bodycam(camera_id) is not None:
            raise api_error(web.HTTPNotFound, "not_a_live_camera", f"{camera_id!r} is a body camera: it has "
                            f"uploaded recordings (GET /api/bodycams/{camera_id}/recordings), no live stream")
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
