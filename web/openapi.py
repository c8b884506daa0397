"""``GET /api/openapi.json``: an OpenAPI 3.1 description of the API, generated from the route table.

The operations are the app's own routes (so the station and the central
console each describe what they serve) with the permission each needs from
:data:`web.access.ROUTES`; :data:`OPERATIONS` adds what the route table does
not know: a summary, the query parameters and the request body's schema.  A
route served but missing here is still listed (with its permission), so the
description never hides a route.  The robustness tests fuzz every JSON body
from this document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from nvr import __version__
from web.access import ROUTES, route_key

_TIME = {"type": "string", "format": "date-time", "description": "ISO-8601 with Z or an offset"}
_ID = {"type": "string", "pattern": "^[a-z0-9_-]+$"}
_ERROR = {
    "type": "object", "required": ["error", "message"],
    "properties": {"error": {"type": "string", "description": "stable code"}, "message": {"type": "string"}},
}


@dataclass(frozen=True, slots=True)
class Operation:
    summary: str
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    json_body: dict[str, Any] | None = None  # JSON schema of an application/json body
    body_type: str | None = None  # another request media type (WHEP: application/sdp)


def _object(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_RANGE = {"start": _TIME, "end": _TIME}
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/healthz"): Operation("Liveness: 200, or 503 when a component has stopped"),
    ("GET", "/login"): Operation("The sign-in page"),
    ("POST", "/api/login"): Operation("Sign in: sets the session cookie", json_body=_object(
        ["username", "password"], username={"type": "string", "minLength": 1, "maxLength": 64},
        password={"type": "string", "minLength": 1, "maxLength": 1024},
        next={"type": "string", "description": "page to return to; answered back only if it is on this site"})),
    ("POST", "/api/logout"): Operation("End the cookie's session and its streams"),
    ("GET", "/api/me"): Operation("Who am I"),
    ("PUT", "/api/me/preferences"): Operation(
        "The signed-in user's page language (null: the browser's)",
        json_body=_object(["lang"], lang={"type": ["string", "null"], "enum": ["en", "fa", None]})),
    ("GET", "/api/openapi.json"): Operation("This description"),
    ("GET", "/"): Operation("The monitoring console"),
    ("GET", "/api/cameras"): Operation("Every camera the caller may see"),
    ("GET", "/api/cameras/{camera_id}"): Operation("One camera"),
    ("POST", "/api/cameras/{camera_id}/whep"): Operation("WHEP: an SDP offer in, the answer out",
                                                         body_type="application/sdp"),
    ("OPTIONS", "/api/cameras/{camera_id}/whep"): Operation("WHEP pre-flight: the STUN/TURN servers as Link headers"),
    ("DELETE", "/api/whep/sessions/{session_id}"): Operation("End a live session"),
    ("GET", "/api/live/sessions"): Operation("Live sessions of the cameras the caller may see"),
    ("GET", "/api/events"): Operation("Alarms as intervals", query={
        "camera": _ID, "type": {"type": "string"}, "since": _TIME, "until": _TIME,
        "open": {"type": "string", "enum": ["true", "false", "1", "0"]},
        "limit": {"type": "integer", "minimum": 1, "maximum": 10_000}}),
    ("GET", "/api/events/stream"): Operation("Alarm feed (Server-Sent Events)"),
    ("POST", "/api/cameras/{camera_id}/reference"): Operation("Learn the camera's reference view again"),
    ("GET", "/metrics"): Operation("Prometheus metrics"),
    ("GET", "/api/coverage"): Operation("Recorded seconds and gaps with causes",
                                        query={**_RANGE, "camera": _ID}),
    ("GET", "/playback"): Operation("The playback page"),
    ("GET", "/api/recordings"): Operation("Spans, gaps and segments of one camera",
                                          query={"camera": _ID, **_RANGE}),
    ("GET", "/api/recordings/{camera_id}/clip.mp4"): Operation(
        "An MP4 clip, streamed; answers a single-range Range request (206, 416)", query=_RANGE),
    ("GET", "/api/recordings/{camera_id}/index.m3u8"): Operation(
        "HLS VOD playlist (fMP4, byte ranges) of a range; audited once as recordings.play", query=_RANGE),
    ("GET", "/api/recordings/{camera_id}/hls/{segment_id}.m4s"): Operation(
        "A stored segment as a playlist names it (Range answered); only with the playlist's signature", query={
            "shift": {"type": "integer"}, "exp": {"type": "integer"}, "sig": {"type": "string"}}),
    ("GET", "/api/recordings/{camera_id}/thumbnail.jpg"): Operation(
        "The stored thumbnail nearest to at (X-Thumbnail-At), 404 nothing_recorded if none is near",
        query={"at": _TIME}),
    ("GET", "/api/recordings/{camera_id}/thumbnails"): Operation(
        "Thumbnails of a range, thinned evenly in time to at most limit", query={
            **_RANGE, "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}),
    ("GET", "/api/key"): Operation("The station's public key"),
    ("GET", "/api/checkpoints"): Operation("The station's signed checkpoints, for a witness", query={
        "after": {"type": "integer", "minimum": 0}, "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}),
    ("POST", "/api/exports"): Operation("Queue a signed evidence export", json_body=_object(
        ["cameras", "start", "end", "reason"], cameras={"type": "array", "items": _ID, "minItems": 1},
        start=_TIME, end=_TIME, reason={"type": "string", "minLength": 1})),
    ("GET", "/api/exports/{export_id}"): Operation("An export job"),
    ("GET", "/api/exports/{export_id}/download"): Operation("The signed package"),
    ("GET", "/api/holds"): Operation("Active evidence holds"),
    ("POST", "/api/holds"): Operation("Hold footage against deletion", json_body=_object(
        ["camera", "start", "end", "reason"], camera=_ID, start=_TIME, end=_TIME,
        reason={"type": "string", "minLength": 1})),
    ("DELETE", "/api/holds/{hold_id}"): Operation("Release a hold"),
    ("GET", "/api/archive"): Operation("The off-site archive: state, reason, backlog (segments, bytes, oldest age)"),
    ("GET", "/api/audit"): Operation("The audit log", query={
        "user": {"type": "string"}, "action": {"type": "string"}, "since": _TIME, "until": _TIME,
        "limit": {"type": "integer", "minimum": 1, "maximum": 10_000}}),
    # Body-worn cameras and incident cases (issue 15).
    ("GET", "/api/bodycams"): Operation("Body cameras the caller may see, with their last recording and wearer"),
    ("GET", "/api/bodycams/{camera_id}/recordings"): Operation("A body camera's uploaded items", query=_RANGE),
    ("POST", "/api/bodycams/{camera_id}/recordings"): Operation(
        "Upload a body-camera file (the raw body): 201 stored, 200 already stored", body_type="video/mp4",
        query={"sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}, "start": _TIME, "device_time": _TIME,
               "name": {"type": "string", "maxLength": 255}}),
    ("GET", "/api/bodycams/{camera_id}/assignments"): Operation("Who wore the body camera when"),
    ("POST", "/api/bodycams/{camera_id}/assignments"): Operation("Assign the body camera to an officer",
                                                                 json_body=_object(
        ["officer"], officer={"type": "string", "minLength": 1, "maxLength": 100}, start=_TIME, end=_TIME,
        note={"type": "string", "maxLength": 1000})),
    ("GET", "/cases/{case_id}"): Operation("The case page"),
    ("GET", "/api/cases"): Operation("Incident cases"),
    ("POST", "/api/cases"): Operation("Open an incident case", json_body=_object(
        ["number", "title"], number={"type": "string", "minLength": 1, "maxLength": 64},
        title={"type": "string", "minLength": 1, "maxLength": 200}, description={"type": "string"})),
    ("GET", "/api/cases/{case_id}"): Operation("A case with its ranges, bookmarks and packages"),
    ("POST", "/api/cases/{case_id}/items"): Operation("Add a held range of a camera or body camera", json_body=_object(
        ["camera", "start", "end"], camera=_ID, start=_TIME, end=_TIME, note={"type": "string"})),
    ("POST", "/api/cases/{case_id}/bookmarks"): Operation("Bookmark a moment", json_body=_object(
        ["camera", "at"], camera=_ID, at=_TIME, note={"type": "string"})),
    ("POST", "/api/cases/{case_id}/export"): Operation("One signed package of the whole case", json_body=_object(
        ["reason"], reason={"type": "string", "minLength": 1})),
    ("POST", "/api/cases/{case_id}/close"): Operation("Close the case (holds released only when asked)",
                                                      json_body=_object(["reason"], reason={"type": "string"},
                                                                        release_holds={"type": "boolean"})),
    ("GET", "/api/cases/{case_id}/history"): Operation("The case's custody history from the audit log"),
    ("GET", "/api/bookmarks"): Operation("Bookmarks of one camera in a range", query={"camera": _ID, **_RANGE}),
    ("GET", "/api/fleet"): Operation("Stations, their cameras and counts"),
    ("GET", "/api/fleet/alarms"): Operation("Open alarms of every station, most urgent first"),
    ("GET", "/api/fleet/stream"): Operation("Fleet feed (Server-Sent Events)"),
    ("POST", "/api/stations/{station_id}/cameras/{camera_id}/whep"): Operation(
        "WHEP through the console", body_type="application/sdp"),
    ("OPTIONS", "/api/stations/{station_id}/cameras/{camera_id}/whep"): Operation(
        "WHEP pre-flight through the console: the station's STUN/TURN servers as Link headers"),
    ("DELETE", "/api/stations/{station_id}/whep/sessions/{session_id}"): Operation("End a relayed live session"),
    ("GET", "/api/stations/{station_id}/checkpoints"): Operation("What the console witnessed of a station",
                                                                 query={"since": _TIME}),
    ("GET", "/api/keyring"): Operation("Every station key the console has seen"),
}

_PARAM = re.compile(r"\{(\w+)\}")


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes."""
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD" or resource.canonical == "/static":
            continue
        key = route_key(route.method, resource.canonical)
        permission = ROUTES.get(key)
        if permission is None:
            continue  # refused anyway (deny by default)
        op = OPERATIONS.get(key, Operation(""))
        body: dict[str, Any] = {
            "summary": op.summary,
            "x-nvr-permission": permission.value,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _PARAM.findall(resource.canonical)
            ] + [{"name": name, "in": "query", "schema": schema} for name, schema in op.query.items()],
            "responses": {"default": {"description": "an error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        }
        if permission.value != "public":
            body["security"] = [{"bearer": []}, {"session": []}]
        if op.json_body is not None:
            body["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.json_body}}}
        elif op.body_type is not None:
            body["requestBody"] = {"required": True, "content": {op.body_type: {"schema": {"type": "string"}}}}
        paths.setdefault(resource.canonical, {})[route.method.lower()] = body
    return {
        "openapi": "3.1.0",
        "info": {"title": "nvr", "version": __version__,
                 "description": "Errors are JSON {error, message}; times are ISO-8601 UTC with Z."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "session": {"type": "apiKey", "in": "cookie", "name": "nvr_session"}},
        },
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document(request.app))


def add_routes(app: web.Application) -> None:
    """The description of the API, generated from the route table (station and console alike)."""
    app.router.add_get("/api/openapi.json", serve)
