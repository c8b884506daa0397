"""Body-worn cameras over HTTP: the dock's upload, the device list, its recordings and its wearers.

- ``POST /api/bodycams/{id}/recordings``: the file as the raw body
  (``video/mp4`` or ``video/x-matroska``), optionally ``?sha256=`` (the dock's
  hash), ``?start=`` (when the file has no creation time), ``?device_time=``
  (the device's clock as the dock read it) and ``?name=`` (the file's name on
  the device, kept as provenance only).  The body goes to a temp file in the
  storage as it arrives (never into memory), bounded by
  ``bodycam_uploads``: size (413, before reading when Content-Length says so),
  free space (507), a stall timeout per read and a total time (408), uploads
  at once (503).  Then :class:`recorder.bodycam.BodycamIngest` checks, probes
  and indexes it: 201 with the item, 200 with the stored one for the same bytes.
- ``GET /api/bodycams``, ``GET /api/bodycams/{id}/recordings?start=&end=``.
- ``GET|POST /api/bodycams/{id}/assignments``: who wore the device when.

Every refusal is audited with its code; nothing of a refused upload stays on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from aiohttp import ClientPayloadError, web

from nvr.base.config import Bodycam
from nvr.base.timeutil import iso
from nvr.identity.roles import Permission
from recorder.bodycam import AssignmentConflict, BodycamIngest, Provenance, Staged, UploadRejected, item_json
from web import params
from web.access import ACCESS, audit, identity, visible
from web.conn_limits import LONG_BODY
from web.http import STATION, api_error, error_response, json_body

log = logging.getLogger(__name__)

CONTENT_TYPES = ("video/mp4", "video/x-matroska", "video/matroska")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20  # bytes handed to the writer thread at once
_SPACE_CHECK_BYTES = 64 << 20  # free space is looked at again after this much (a body of unknown length)
_QUEUED_CHUNKS = 4  # MiB read ahead of the writer thread
_STATUS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest, 404: web.HTTPNotFound, 408: web.HTTPRequestTimeout, 409: web.HTTPConflict,
    413: web.HTTPRequestEntityTooLarge, 415: web.HTTPUnsupportedMediaType,
    422: web.HTTPUnprocessableEntity, 503: web.HTTPServiceUnavailable, 507: web.HTTPInsufficientStorage}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/bodycams", list_bodycams)
    app.router.add_get("/api/bodycams/{camera_id}/recordings", list_recordings)
    app.router.add_post("/api/bodycams/{camera_id}/recordings", upload, expect_handler=expect_continue)
    app.router.add_get("/api/bodycams/{camera_id}/assignments", list_assignments)
    app.router.add_post("/api/bodycams/{camera_id}/assignments", assign)


def find_device(request: web.Request) -> Bodycam:
    device_id = request.match_info["camera_id"]
    device = request.app[STATION].config.bodycam(device_id)
    if device is None:
        raise api_error(web.HTTPNotFound, "unknown_device", f"no body camera with id {device_id!r}")
    return device


def require_ingest(request: web.Request) -> BodycamIngest:
    station = request.app[STATION]
    ingest = station.recording.bodycams
    if ingest is None:
        raise api_error(web.HTTPServiceUnavailable, "storage_unavailable",
                        station.recording.error or "the recording storage is not available")
    return ingest


def rejection(exc: UploadRejected) -> web.HTTPException:
    if exc.status == 413:
        body = json.dumps({"error": exc.code, "message": str(exc)})
        error: web.HTTPException = web.HTTPRequestEntityTooLarge(0, 0, text=body, content_type="application/json")
    else:
        error = api_error(_STATUS.get(exc.status, web.HTTPUnprocessableEntity), exc.code, str(exc))
    if exc.status in (408, 413, 507):  # the rest of the body is not read: the connection cannot be reused
        error.headers["Connection"] = "close"
    return error


# -- the upload ---------------------------------------------------------------------------


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` (curl sends it for large bodies): the dock is told 413 or 507 before it sends
    a byte, and only an identity that may upload to this device is asked to go on.  Anyone else gets no
    100: access control answers them (401/403) without the body.  Runs before the middlewares."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(417, "expectation_failed", "only Expect: 100-continue is understood")
    station = request.app[STATION]
    device_id = request.match_info["camera_id"]
    who, _ = await request.app[ACCESS].identify(request)
    ingest = station.recording.bodycams
    if (who is None or not who.can(Permission.UPLOAD) or not who.may_see(device_id)
            or station.config.bodycam(device_id) is None or ingest is None):
        return None  # the handler's chain answers, and needs no body to do so
    declared = request.content_length
    short = await asyncio.to_thread(ingest.room_for, declared or 0)
    refusal = (UploadRejected("insufficient_storage", short, 507) if short is not None else
               UploadRejected("payload_too_large", f"the file is {declared} bytes; at most {ingest.max_bytes} "
                              "(bodycam_uploads.max_file_mb)", 413)
               if declared is not None and declared > ingest.max_bytes else None)
    if refusal is not None:
        request["user"] = who
        ingest.rejected(refusal.code)
        audit(request, "bodycam.upload", camera=device_id, outcome="rejected", error=refusal.code,
              reason=str(refusal))
        response = error_response(refusal.status, refusal.code, str(refusal))
        response.headers["Connection"] = "close"
        return response
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None



def _upload_params(request: web.Request) -> tuple[str | None, float | None, float | None, str | None]:
    sha = request.query.get("sha256")
    if sha is not None:
        sha = sha.strip().lower()
        if not _SHA256.match(sha):
            raise params.invalid("sha256", "must be 64 hexadecimal digits (the file's SHA-256)")
    start = params.time(request.query.get("start"), "start", required=False)
    device_time = params.time(request.query.get("device_time"), "device_time", required=False)
    name = request.query.get("name")
    if name is not None and (not name or len(name) > 255 or not name.isprintable()):
        raise params.invalid("name", "must be 1..255 printable characters (kept as provenance, never a path)")
    return sha, start, device_time, name


async def upload(request: web.Request) -> web.Response:
    device = find_device(request)
    ingest = require_ingest(request)
    try:
        if request.content_type not in CONTENT_TYPES:
            raise UploadRejected("unsupported_media_type", f"send the file as {' or '.join(CONTENT_TYPES[:2])}, "
                                 f"not {request.content_type!r}", 415)
        sha, start, device_time, name = _upload_params(request)
        declared = request.content_length
        if declared == 0:
            raise UploadRejected("empty_file", "the body is empty")
        # Free space first: a disk that is short says so whatever the size limit.
        short = await asyncio.to_thread(ingest.room_for, declared or 0)
        if short is not None:
            raise UploadRejected("insufficient_storage", short, 507)
        if declared is not None and declared > ingest.max_bytes:
            raise UploadRejected("payload_too_large", f"the file is {declared} bytes; at most {ingest.max_bytes} "
                                 "(bodycam_uploads.max_file_mb)", 413)
        with ingest.slot():
            staged = await asyncio.to_thread(ingest.store.stage)
            try:
                await _receive(request, ingest, staged)
            except BaseException:
                await asyncio.to_thread(staged.discard)
                raise
            who = identity(request)
            record, created = await ingest.finish(
                device.id, staged, sha, start, device_time,
                Provenance("api", name, sha, who.name if who is not None else None))
    except UploadRejected as exc:
        ingest.rejected(exc.code)
        audit(request, "bodycam.upload", camera=device.id, outcome="rejected", error=exc.code, reason=str(exc))
        log.warning("[%s] upload refused (%s): %s", device.id, exc.code, exc)
        raise rejection(exc) from None
    audit(request, "bodycam.upload", camera=device.id, segment_id=record.id, sha256=record.sha256,
          start=iso(record.start), end=iso(record.end), bytes=record.bytes, duplicate=not created)
    return web.json_response(item_json(record, created), status=201 if created else 200,
                             headers={"Location": f"/api/bodycams/{device.id}/recordings?segment={record.id}"})


setattr(upload, LONG_BODY, True)  # noqa: B010 - web/conn_limits.py reads it off the route's handler


async def _receive(request: web.Request, ingest: BodycamIngest, staged: Staged) -> None:
    """Copy the body into ``staged``; every ``stall_seconds`` something must have arrived, the whole body must
    be in within ``max_upload_seconds``, and it may not pass the size limit or the disk's reserve.

    The socket is read on the loop while a writer thread hashes and writes the previous MiB (a queue of a
    few MiB between them: memory stays bounded, a slow disk slows the reads).  One watchdog timer, not a
    timeout per read, ends a stalled or endless body by failing the pending read."""
    settings = ingest.settings
    content = request.content
    loop = asyncio.get_running_loop()
    started = progress = time.monotonic()
    limit = ingest.max_bytes
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUED_CHUNKS)

    def watchdog() -> None:
        now = time.monotonic()
        if now - started >= settings.max_upload_seconds:
            content.set_exception(UploadRejected("request_timeout", "the upload took longer than "
                                                 f"{settings.max_upload_seconds:g} s (bodycam_uploads."
                                                 "max_upload_seconds)", 408))
        elif now - progress >= settings.stall_seconds:
            content.set_exception(UploadRejected("request_timeout", f"the upload sent nothing for "
                                                 f"{settings.stall_seconds:g} s; aborted", 408))
        else:
            timer[0] = loop.call_later(min(settings.stall_seconds / 2, 1.0), watchdog)

    timer = [loop.call_later(min(settings.stall_seconds / 2, 1.0), watchdog)]
    writer = asyncio.create_task(_write(queue, ingest, staged), name="bodycam-upload-writer")
    pending: list[bytes] = []
    pending_size = received = 0
    try:
        while True:
            try:
                chunk = await content.readany()
            except (ConnectionError, ClientPayloadError, web.HTTPException, OSError, ValueError) as exc:
                # A client gone, or a body shorter than its Content-Length.
                raise UploadRejected("incomplete_body", f"the body ended before it was complete ({exc})",
                                     400) from None
            if chunk:
                progress = time.monotonic()
                received += len(chunk)
                if received > limit:
                    raise UploadRejected("payload_too_large", f"the file is larger than {limit} bytes "
                                         "(bodycam_uploads.max_file_mb)", 413)
                pending.append(chunk)
                pending_size += len(chunk)
            if pending and (pending_size >= _CHUNK or not chunk):
                await _hand_over(queue, writer, b"".join(pending))
                pending, pending_size = [], 0
            if not chunk:
                await _hand_over(queue, writer, None)
                await writer  # raises what the writer met
                return
    finally:
        timer[0].cancel()
        if not writer.done():
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)


async def _hand_over(queue: asyncio.Queue[bytes | None], writer: asyncio.Task[None], data: bytes | None) -> None:
    put = asyncio.ensure_future(queue.put(data))
    await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
    if not put.done():  # the writer stopped (a write error): say why
        put.cancel()
        await writer
        raise UploadRejected("incomplete_body", "the upload's writer stopped", 500)


async def _write(queue: asyncio.Queue[bytes | None], ingest: BodycamIngest, staged: Staged) -> None:
    since_check = 0
    while (data := await queue.get()) is not None:
        try:
            await asyncio.to_thread(staged.write, data)
        except OSError as exc:
            raise UploadRejected("insufficient_storage", f"the file could not be written ({exc.strerror})",
                                 507) from None
        since_check += len(data)
        if since_check >= _SPACE_CHECK_BYTES:
            since_check = 0
            short = await asyncio.to_thread(ingest.room_for, 0)
            if short is not None:
                raise UploadRejected("insufficient_storage", short, 507)


# -- devices and their recordings ---------------------------------------------------------


def device_json(device: Bodycam) -> dict[str, Any]:
    return {"id": device.id, "name": device.name, "kind": "bodycam"}


async def list_bodycams(request: web.Request) -> web.Response:
    devices = [d for d in request.app[STATION].config.bodycams if visible(request, d.id)]
    ingest = request.app[STATION].recording.bodycams
    body = []
    for device in devices:
        item = device_json(device)
        if ingest is not None:
            latest = await ingest.index.call(ingest.index.latest, device.id)
            wearer = await ingest.index.call(ingest.store.assignments, device.id, time.time(), time.time())
            item["last_recording_end"] = iso(latest.end) if latest is not None else None
            item["worn_by"] = wearer[-1].officer if wearer else None
        body.append(item)
    return web.json_response({"bodycams": body})


async def list_recordings(request: web.Request) -> web.Response:
    device = find_device(request)
    ingest = require_ingest(request)
    config = request.app[STATION].config
    start, end = params.time_range(request.query.get("start"), request.query.get("end"),
                                   config.recordings.max_search_hours * 3600, required=False)
    if start is None or end is None:
        end = end if end is not None else time.time() + 86400
        start = start if start is not None else end - config.recordings.max_search_hours * 3600
    records = await ingest.index.call(ingest.index.segments, device.id, start, end)
    wearers = await ingest.index.call(ingest.store.assignments, device.id, start, end)
    audit(request, "bodycam.list", camera=device.id, start=iso(start), end=iso(end), items=len(records))
    return web.json_response({
        "device": device_json(device), "start": iso(start), "end": iso(end),
        "recordings": [{**item_json(r), "worn_by": _wearer(wearers, r.start)} for r in records],
        "assignments": [a.json() for a in wearers],
    })


def _wearer(assignments: list[Any], at: float) -> str | None:
    return next((a.officer for a in assignments if a.start <= at and (a.end is None or at < a.end)), None)


# -- officer assignment -------------------------------------------------------------------

_OFFICER = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")


async def list_assignments(request: web.Request) -> web.Response:
    device = find_device(request)
    ingest = require_ingest(request)
    assignments = await ingest.index.call(ingest.store.assignments, device.id)
    return web.json_response({"device": device.id, "assignments": [a.json() for a in assignments]})


async def assign(request: web.Request) -> web.Response:
    device = find_device(request)
    ingest = require_ingest(request)
    body = await json_body(request)
    officer = body.get("officer")
    if not isinstance(officer, str) or not _OFFICER.match(officer.strip() or "\x00"):
        raise params.invalid("officer", "is required: the officer's name or badge number (1..100 characters)")
    start = params.time(body.get("start"), "start", required=False)
    end = params.time(body.get("end"), "end", required=False)
    start = start if start is not None else time.time()
    if end is not None and end <= start:
        raise params.invalid("end", "must be after start")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 1000:
        raise params.invalid("note", "must be a string of at most 1000 characters")
    who = identity(request)
    try:
        made = await ingest.index.call(ingest.store.assign, device.id, officer.strip(), start, end, note,
                                       who.name if who is not None else "anonymous")
    except AssignmentConflict as exc:
        raise api_error(web.HTTPConflict, "assignment_conflict", str(exc)) from None
    audit(request, "bodycam.assign", camera=device.id, assignment_id=made.id, officer=made.officer,
          start=iso(made.start), end=iso(made.end), note=note)
    return web.json_response(made.json(), status=201)
