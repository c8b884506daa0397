"""Thumbnails of recorded footage for the playback timeline: the nearest one to a moment, and a strip.

``GET /api/recordings/{camera}/thumbnail.jpg?at=`` answers the stored
thumbnail nearest to ``at`` (its time in ``X-Thumbnail-At``) if one lies
within three picture-check intervals of it (at least :data:`MIN_WINDOW`
seconds), else 404 ``nothing_recorded``.  ``GET
/api/recordings/{camera}/thumbnails?start=&end=&limit=`` lists them, thinned
evenly in time to at most ``limit`` (one per ``(end - start) / limit``).

Same permission and camera allow-lists as clips.  A thumbnail shows
footage, so viewing them is audited (``recordings.thumbnails``): each strip,
and the single thumbnails of a hovering pointer at most once a minute per
user and camera (the entry counts the ones since), so an auditor scrubbing a
timeline leaves a trail without flooding the log.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

from nvr.base.timeutil import iso
from recorder.thumbnails import ThumbnailStore
from web import params
from web.access import audit
from web.http import STATION, api_error
from web.recordings import current_user, known_camera, require_index

MIN_WINDOW = 10.0
_AUDIT_EVERY = 60.0
_MAX_VIEWERS = 10_000


@dataclass
class ThumbnailViews:
    """When each (user, camera) last left an audit entry for single thumbnails, and how many since."""

    last: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def due(self, user: str, camera: str, now: float) -> int | None:
        """None: not yet; else how many were viewed since the last entry (this one included)."""
        at, count = self.last.get((user, camera), (-_AUDIT_EVERY, 0))
        if now - at < _AUDIT_EVERY:
            self.last[(user, camera)] = (at, count + 1)
            return None
        if len(self.last) >= _MAX_VIEWERS:
            self.last.clear()  # bounded; at worst one entry more each
        self.last[(user, camera)] = (now, 0)
        return count + 1


VIEWS = web.AppKey("thumbnail_views", ThumbnailViews)


def setup(app: web.Application) -> None:
    app[VIEWS] = ThumbnailViews()
    app.router.add_get("/api/recordings/{camera_id}/thumbnail.jpg", thumbnail)
    app.router.add_get("/api/recordings/{camera_id}/thumbnails", thumbnails)


def _store(request: web.Request) -> ThumbnailStore:
    require_index(request)  # the storage is accepted
    return ThumbnailStore(request.app[STATION].recording.root)


def _window(request: web.Request, camera: str) -> float:
    config = request.app[STATION].config
    settings = next((c.health for c in config.cameras if c.id == camera), None)
    return max(MIN_WINDOW, 3 * config.health.for_camera(settings).analyse_seconds)


def _url(camera: str, at: float) -> str:
    return f"/api/recordings/{camera}/thumbnail.jpg?at={iso(at)}"


async def thumbnail(request: web.Request) -> web.Response:
    camera = known_camera(request, request.match_info["camera_id"])
    at = params.required_time(request.query.get("at"), "at")
    store = _store(request)
    found = await asyncio.to_thread(store.nearest, camera, at, _window(request, camera))
    data = None
    if found is not None:
        try:
            data = await asyncio.to_thread(found[1].read_bytes)
        except FileNotFoundError:
            data = None  # deleted with its footage in the meantime
    if found is None or data is None:
        raise api_error(web.HTTPNotFound, "nothing_recorded", f"no thumbnail of {camera} near {iso(at)}")
    seen = request.app[VIEWS].due(current_user(request), camera, time.monotonic())
    if seen is not None:
        audit(request, "recordings.thumbnails", camera=camera, at=iso(found[0]), viewed=seen)
    return web.Response(body=data, content_type="image/jpeg", headers={
        "X-Thumbnail-At": iso(found[0]) or "", "Cache-Control": "private, max-age=300"})


async def thumbnails(request: web.Request) -> web.Response:
    station = request.app[STATION]
    camera = known_camera(request, request.match_info["camera_id"])
    start, end = params.required_range(request.query.get("start"), request.query.get("end"),
                                       station.config.recordings.max_range_hours * 3600)
    limit = params.integer(request, "limit", 100, 1, 1000)
    store = _store(request)
    times = await asyncio.to_thread(store.between, camera, start, end)
    slot = (end - start) / limit
    kept: list[float] = []
    last_bucket = -1
    for at in times:
        bucket = min(limit - 1, int((at - start) / slot))
        if bucket != last_bucket:
            kept.append(at)
            last_bucket = bucket
    audit(request, "recordings.thumbnails", camera=camera, start=iso(start), end=iso(end), listed=len(kept))
    return web.json_response({"camera": camera, "start": iso(start), "end": iso(end),
                              "thumbnails": [{"at": iso(at), "url": _url(camera, at)} for at in kept]})
