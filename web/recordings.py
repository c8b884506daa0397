"""Auditor endpoints: search, clips, evidence exports, holds and the station key.

Every endpoint takes camera ids and times, never file paths; errors name the
offending field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from nvr.base.timeutil import iso
from nvr.health import coverage
from recorder.archive_read import locator, search_with_archive
from recorder.clip import ClipError, ClipStream, Locate
from recorder.export import ExportRequest
from recorder.export_jobs import ExportJob, JobState, QueueFull
from recorder.index import Hold, SegmentIndex, SegmentRecord
from recorder.search import CauseSource, search
from recorder.timeline import Cause
from web import archive_api, byteranges, params
from web.access import audit, require_camera, visible
from web.console import serve_page
from web.http import STATION, api_error, json_body

log = logging.getLogger(__name__)

# Lengths of clips built in full, for Range requests of them (by camera, range and the segments' hashes).
CLIP_SIZES = web.AppKey("clip_sizes", byteranges.SizeCache)


def setup(app: web.Application) -> None:
    app[CLIP_SIZES] = byteranges.SizeCache()
    app.router.add_get("/api/recordings", search_recordings)
    app.router.add_get("/api/recordings/{camera_id}/clip.mp4", clip)
    app.router.add_post("/api/exports", create_export)
    app.router.add_get("/api/exports/{export_id}", get_export)
    app.router.add_get("/api/exports/{export_id}/download", download_export)
    app.router.add_get("/api/holds", list_holds)
    app.router.add_post("/api/holds", create_hold)
    app.router.add_delete("/api/holds/{hold_id}", release_hold)
    app.router.add_get("/api/key", station_key)
    app.router.add_get("/api/checkpoints", list_checkpoints)
    app.router.add_get("/playback", playback_page)


def current_user(request: web.Request) -> str:
    """The authenticated user's name (set by access control), else 'anonymous'."""
    user = request.get("user")
    return str(getattr(user, "name", user) or "anonymous")


# -- input --------------------------------------------------------------------------------


def known_camera(request: web.Request, camera_id: Any, field: str = "camera") -> str:
    if not isinstance(camera_id, str) or not camera_id:
        raise params.invalid(field, "is required")
    # The allow-list first: a restricted user gets the same 403 for an unknown camera as for a forbidden one.
    require_camera(request, camera_id)  # a batch with one forbidden camera fails as a whole
    if camera_id not in request.app[STATION].cameras and not is_device(request, camera_id):
        raise api_error(web.HTTPNotFound, "unknown_camera", f"{field}: no camera with id {camera_id!r}")
    return camera_id


def is_device(request: web.Request, camera_id: str) -> bool:
    """A body camera (issue 15): its uploaded files are searched, played, held and exported like a camera's."""
    return request.app[STATION].config.bodycam(camera_id) is not None


def require_index(request: web.Request) -> SegmentIndex:
    station = request.app[STATION]
    if station.recording.index is None:
        raise api_error(web.HTTPServiceUnavailable, "storage_unavailable",
                        station.recording.error or "the recording storage is not available")
    return station.recording.index




async def cause_source(request: web.Request, start: float, end: float) -> CauseSource | None:
    """Why a camera was not recorded, from the alarm history and the daemon's runs (as the coverage report)."""
    health = getattr(request.app[STATION], "health", None)
    if health is None:
        return None
    store = health.alarms
    runs = await store.runs(start, end)
    alarms = await store.query(None, None, start, end, False, 1_000_000)
    now = time.time()
    backfill = request.app[STATION].recording.backfill

    def causes(camera: str) -> list[Cause]:
        # Footage on the camera's card: pending retrieval, or what its card did not have (recorder/backfill.py).
        edge = backfill.causes(camera, start, end) if backfill is not None else []
        return coverage.causes(camera, start, end, alarms, runs, now) + edge

    return causes


async def source_causes(request: web.Request, start: float, end: float) -> CauseSource | None:
    """Causes for cameras (:func:`cause_source`) and body cameras alike: a body camera records when its
    wearer switches it on, so what was not uploaded is ``not_recording``, never an outage."""
    cameras = await cause_source(request, start, end)
    config = request.app[STATION].config
    now = time.time()

    def causes(camera: str) -> list[Cause]:
        if config.bodycam(camera) is not None:
            return coverage.device_causes(start, end, now)
        return list(cameras(camera)) if cameras is not None else []

    return causes


# -- search and clips ---------------------------------------------------------------------


async def search_recordings(request: web.Request) -> web.Response:
    camera = known_camera(request, request.query.get("camera"))
    start, end = params.required_range(request.query.get("start"), request.query.get("end"),
                                       request.app[STATION].config.recordings.max_search_hours * 3600)
    index = require_index(request)
    causes = await source_causes(request, start, end)
    # Footage deleted locally after it was archived is still found (issue 19).
    archived = await archive_api.archive_only(request.app[STATION], camera, start, end)
    if archived:
        result = await index.call(search_with_archive, index, camera, start, end, causes, archived)
    else:
        result = await index.call(search, index, camera, start, end, causes)
    in_archive = {a.record.id for a in archived}
    audit(request, "recordings.search", camera=camera, start=iso(start), end=iso(end),
          segments=len(result.segments))
    return web.json_response({
        "camera": camera,
        "start": iso(start),
        "end": iso(end),
        "recorded_seconds": round(result.recorded_seconds, 3),
        "spans": [s.json() for s in result.spans],
        "gaps": [g.json() for g in result.gaps],
        "segments": [{"id": s.id, "start": iso(s.start), "end": iso(s.end), "bytes": s.bytes, "sha256": s.sha256,
                      "frames": s.frames, "codec": s.codec, "width": s.width, "height": s.height,
                      "status": s.status, "chain_hash": s.chain_hash,
                      "copy": "archive" if s.id in in_archive else "local"} for s in result.segments],
    })


def footage_request(request: web.Request) -> tuple[str, float, float, SegmentIndex]:
    """The camera of the path and the ``start``/``end`` of the query of a request for footage (clip, playlist)."""
    camera = known_camera(request, request.match_info["camera_id"])
    start, end = params.required_range(request.query.get("start"), request.query.get("end"),
                                       request.app[STATION].config.recordings.max_range_hours * 3600)
    return camera, start, end, require_index(request)


async def clip(request: web.Request) -> web.StreamResponse:
    station = request.app[STATION]
    camera, start, end, index = footage_request(request)
    segments = [s for s in await index.call(index.segments, camera, start, end) if s.status != "missing"]
    archived = await archive_api.archive_only(station, camera, start, end)
    local_count = len(segments)
    if archived:
        segments = sorted([*segments, *(a.record for a in archived)], key=lambda s: s.start)
    if not segments:
        raise api_error(web.HTTPNotFound, "no_recordings", f"no recordings of {camera} between "
                        f"{iso(start)} and {iso(end)}")
    cached = await archive_api.fetch(station, archived)
    locate = locator(station.recording.root, cached) if cached else None
    copy = archive_api.copies(local_count, len(archived))
    wanted = byteranges.parse(request.headers.get("Range"))
    key = (camera, start, end, tuple((s.id, s.sha256) for s in segments))
    size = request.app[CLIP_SIZES].get(key)
    if request.method == "HEAD":  # the headers only: nothing is built, no footage is served
        head = web.StreamResponse(headers={**clip_headers(camera, start, copy),
                                           **({"Content-Length": str(size)} if size is not None else {})})
        await head.prepare(request)
        await head.write_eof()
        return head
    if wanted is not None and not (size is None and wanted.from_start):
        return await clip_range(request, camera, start, end, segments, locate, copy, wanted, key)
    # Footage only in the archive is read from its cache (issue 19).
    stream = ClipStream(station.recording.root, segments, start, end, locate)
    stream.start()
    first = await first_chunk(stream, camera)
    audit(request, "recordings.clip", camera=camera, start=iso(start), end=iso(end),
          segment_ids=[s.id for s in segments], copy=copy)
    response = web.StreamResponse(headers=clip_headers(camera, start, copy))
    await response.prepare(request)
    written = 0
    try:
        chunk: bytes | None = first
        while chunk is not None:
            await response.write(chunk)
            written += len(chunk)
            chunk = await asyncio.to_thread(stream.next_chunk)
    except (ConnectionResetError, asyncio.CancelledError):
        stream.cancel()
        raise
    finally:
        stream.cancel()
    if stream.error is None:
        request.app[CLIP_SIZES].put(key, written)  # later Range requests of this clip know its length
    await response.write_eof()
    return response


def clip_headers(camera: str, start: float, copy: str) -> dict[str, str]:
    return {
        "X-NVR-Copy": copy,  # which copy the clip was made from: local, archive or local+archive
        "Content-Type": "video/mp4",
        "Content-Disposition": f'inline; filename="{camera}_{iso(start)}.mp4"'.replace(":", ""),
        "Cache-Control": "no-store",
        "Accept-Ranges": "bytes",
    }


async def first_chunk(stream: ClipStream, camera: str) -> bytes:
    first = await asyncio.to_thread(stream.next_chunk)
    if first is None:
        message = str(stream.error) if isinstance(stream.error, ClipError) else "the clip could not be built"
        if stream.error is not None and not isinstance(stream.error, ClipError):
            log.error("clip of %s failed", camera, exc_info=stream.error)
        raise api_error(web.HTTPNotFound, "no_recordings", message)
    return first


# -- byte ranges of a clip -----------------------------------------------------------------------------------
# A clip is remuxed as it is sent, and the remux is deterministic (the same segments and range give the same
# bytes), so a range of it is the same remux with the bytes before the range skipped and the remux stopped
# after it.  Its length is learned from a complete build and remembered (CLIP_SIZES); a Range request for a
# clip whose length is not known yet first builds it once without sending it.


async def clip_range(request: web.Request, camera: str, start: float, end: float, segments: list[SegmentRecord],
                     locate: Locate | None, copy: str, wanted: byteranges.RangeRequest,
                     key: tuple[object, ...]) -> web.StreamResponse:
    station = request.app[STATION]
    sizes = request.app[CLIP_SIZES]
    size = sizes.get(key)
    if size is None:
        counting = ClipStream(station.recording.root, segments, start, end, locate)
        counting.start()
        try:
            size = len(await first_chunk(counting, camera))
            while (piece := await asyncio.to_thread(counting.next_chunk)) is not None:
                size += len(piece)
        finally:
            counting.cancel()
        if counting.error is not None:
            log.error("clip of %s failed", camera, exc_info=counting.error)
            raise api_error(web.HTTPNotFound, "no_recordings", "the clip could not be built")
        sizes.put(key, size)
    span = wanted.resolve(size)
    if span is None:
        raise byteranges.unsatisfiable(size)
    begin, stop = span
    stream = ClipStream(station.recording.root, segments, start, end, locate)
    stream.start()
    first = await first_chunk(stream, camera)
    audit(request, "recordings.clip", camera=camera, start=iso(start), end=iso(end),
          segment_ids=[s.id for s in segments], copy=copy, bytes=f"{begin}-{stop - 1}/{size}")
    response = web.StreamResponse(status=206, headers={**clip_headers(camera, start, copy),
                                                       **byteranges.partial_headers(begin, stop, size)})
    await response.prepare(request)
    at = 0  # offset of ``chunk`` in the clip
    try:
        chunk: bytes | None = first
        while chunk is not None and at < stop:
            lo, hi = max(begin - at, 0), min(stop - at, len(chunk))
            if lo < hi:
                await response.write(chunk[lo:hi])
            at += len(chunk)
            chunk = await asyncio.to_thread(stream.next_chunk) if at < stop else None
    finally:
        stream.cancel()
    await response.write_eof()
    return response


# -- exports ------------------------------------------------------------------------------


def job_json(job: ExportJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state.value,
        "progress": job.progress,
        "error": job.error,
        "cameras": job.request.cameras,
        "start": iso(job.request.start),
        "end": iso(job.request.end),
        "reason": job.request.reason,
        "user": job.request.user,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "downloaded_at": iso(job.downloaded_at),
        "download": f"/api/exports/{job.id}/download" if job.state is JobState.DONE else None,
        **job.summary,
    }


async def create_export(request: web.Request) -> web.Response:
    station = request.app[STATION]
    body = await json_body(request)
    cameras = body.get("cameras")
    if not isinstance(cameras, list) or not cameras or not all(isinstance(c, str) for c in cameras):
        raise params.invalid("cameras", "must be a non-empty list of camera ids")
    cameras = [known_camera(request, c, "cameras") for c in dict.fromkeys(cameras)]
    start, end = params.required_range(body.get("start"), body.get("end"),
                                       station.config.recordings.max_range_hours * 3600)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise params.invalid("reason", "is required: say why this evidence is exported")
    require_index(request)
    if station.recording.exports is None:
        raise api_error(web.HTTPServiceUnavailable, "storage_unavailable", "exports need the recording storage")
    causes = await source_causes(request, start, end)
    try:
        request_ = ExportRequest(cameras, start, end, reason.strip(), current_user(request))
        job = await station.recording.exports.submit(request_, causes)
    except QueueFull as exc:
        raise api_error(web.HTTPServiceUnavailable, "export_queue_full", str(exc)) from None
    audit_cameras(request, "export.create", cameras, export_id=job.id, start=iso(start), end=iso(end),
                  reason=reason.strip())
    return web.json_response(job_json(job), status=202, headers={"Location": f"/api/exports/{job.id}"})


def audit_cameras(request: web.Request, action: str, cameras: list[str], **details: Any) -> None:
    """One entry per camera, so that an auditor restricted to some cameras sees exactly the entries of
    theirs (the audit view filters by the entry's camera); the entries share the export's id."""
    for camera in cameras:
        audit(request, action, camera=camera, cameras_in_export=len(cameras), **details)


def find_job(request: web.Request) -> ExportJob:
    exports = request.app[STATION].recording.exports
    job = exports.jobs.get(request.match_info["export_id"]) if exports is not None else None
    if job is None:
        raise api_error(web.HTTPNotFound, "unknown_export", "no export with that id")
    for camera in job.request.cameras:
        require_camera(request, camera)
    return job


def case_of(job: ExportJob) -> dict[str, Any]:
    """``{"case_id": id}`` for a case's package (its downloads are part of the case's custody history)."""
    return {"case_id": job.request.case["id"]} if job.request.case is not None else {}


async def get_export(request: web.Request) -> web.Response:
    return web.json_response(job_json(find_job(request)))


async def download_export(request: web.Request) -> web.StreamResponse:
    job = find_job(request)
    if job.state is JobState.EXPIRED:
        raise api_error(web.HTTPGone, "export_expired", job.error or "the package was deleted")
    if job.state is not JobState.DONE or job.path is None:
        raise api_error(web.HTTPConflict, "export_not_ready", f"the export is {job.state.value}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(job.created_at))
    audit_cameras(request, "export.download", job.request.cameras, export_id=job.id,
                  start=iso(job.request.start), end=iso(job.request.end), reason=job.request.reason,
                  **case_of(job))
    if (exports := request.app[STATION].recording.exports) is not None:
        exports.mark_downloaded(job)
    return web.FileResponse(job.path, headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="evidence_{stamp}_{job.id[:8]}.zip"',
    })


# -- holds --------------------------------------------------------------------------------


def hold_json(hold: Hold) -> dict[str, Any]:
    return {"id": hold.id, "camera": hold.camera, "start": iso(hold.start), "end": iso(hold.end),
            "reason": hold.reason, "created_by": hold.created_by, "created_at": iso(hold.created_at),
            "released_at": iso(hold.released_at)}


async def list_holds(request: web.Request) -> web.Response:
    index = require_index(request)
    holds = await index.call(index.active_holds)
    return web.json_response([hold_json(h) for h in holds if visible(request, h.camera)])


async def create_hold(request: web.Request) -> web.Response:
    body = await json_body(request)
    camera = known_camera(request, body.get("camera"))
    start, end = params.required_range(body.get("start"), body.get("end"), None)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise params.invalid("reason", "is required: say why this footage is held")
    index = require_index(request)
    hold = await index.call(index.add_hold, camera, start, end, reason.strip(), current_user(request))
    log.info("evidence hold %d on %s %s..%s by %s", hold.id, camera, iso(start), iso(end), hold.created_by)
    audit(request, "hold.create", camera=camera, hold_id=hold.id, start=iso(start), end=iso(end),
          reason=hold.reason)
    return web.json_response(hold_json(hold), status=201, headers={"Location": f"/api/holds/{hold.id}"})


async def release_hold(request: web.Request) -> web.Response:
    raw = request.match_info["hold_id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:  # '²' is a digit to isdigit(), 2**63 overflows
        raise params.invalid("hold_id", "must be a number")
    index = require_index(request)
    held = next((h for h in await index.call(index.active_holds) if h.id == int(raw)), None)
    unknown = api_error(web.HTTPNotFound, "unknown_hold", f"no active hold {raw}")
    if held is not None and not visible(request, held.camera or "*"):  # on every camera: unrestricted users only
        # The same answer as for a hold that does not exist: a restricted user learns nothing of others' holds.
        audit(request, "access.denied", camera=held.camera, outcome="denied", reason="hold of a camera not in "
              "the allow-list", method=request.method, path=request.path)
        raise unknown
    if not await index.call(index.release_hold, int(raw)):
        raise unknown
    log.info("evidence hold %s released by %s", raw, current_user(request))
    audit(request, "hold.release", camera=held.camera if held else None, hold_id=int(raw))
    return web.Response(status=204)


async def station_key(request: web.Request) -> web.Response:
    station = request.app[STATION]
    if station.recording.key is None:
        raise api_error(web.HTTPServiceUnavailable, "storage_unavailable", "the station key lives in storage")
    return web.json_response({"algorithm": "Ed25519", "fingerprint": station.recording.key.fingerprint,
                              "public_key_pem": station.recording.key.public_pem.decode()})


async def list_checkpoints(request: web.Request) -> web.Response:
    """The station's signed checkpoints after ``after`` (a sequence number), for a witness to keep."""
    station = request.app[STATION]
    if not visible(request, "*"):
        # Checkpoints name every camera's chain head: only identities that may see every camera.
        raise api_error(web.HTTPForbidden, "cameras_restricted", "checkpoints cover every camera")
    after = params.integer(request, "after", 0, 0, 2**62)
    limit = params.integer(request, "limit", 500, 1, 1000)
    index = require_index(request)
    if station.recording.key is None:
        raise api_error(web.HTTPServiceUnavailable, "storage_unavailable", "the station key lives in storage")
    rows = await index.call(index.checkpoints, after, limit)
    return web.json_response({
        "station": station.config.station.id, "fingerprint": station.recording.key.fingerprint,
        "public_key_pem": station.recording.key.public_pem.decode(),
        "checkpoints": [{"seq": seq, "body": body, "signature": sig} for seq, body, sig in rows],
    })


async def playback_page(request: web.Request) -> web.Response:
    return await serve_page(request, "playback.html")
