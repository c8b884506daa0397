"""Incident cases over HTTP: create, collect ranges and bookmarks, export, close, and the custody history.

- ``POST /api/cases`` ``{number, title, description}``; ``GET /api/cases``; ``GET /api/cases/{id}``;
- ``POST /api/cases/{id}/items`` ``{camera, start, end, note}``: a range of a camera or body camera,
  held (an evidence hold tied to the case) as it is added;
- ``POST /api/cases/{id}/bookmarks`` ``{camera, at, note}``; ``GET /api/bookmarks?camera=&start=&end=``
  (the playback page draws them);
- ``POST /api/cases/{id}/export`` ``{reason}``: one signed package of every item, the case in its manifest;
- ``POST /api/cases/{id}/close`` ``{reason, release_holds}``: explicit; holds are released only when asked;
- ``GET /api/cases/{id}/history``: every audit entry that names the case, each with its hash re-checked;
- ``GET /cases/{id}``: the case page (web/static/case.*).

Every action is audited with ``case_id`` (per camera where it concerns footage, so that a restricted
auditor's view of the log is exact).  A restricted auditor sees only the items and bookmarks of their
cameras, and may not export or close a case that holds others'.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from nvr.base.timeutil import iso
from recorder.cases import Case, CaseError, CaseStore, export_ranges, manifest_entry
from recorder.export import ExportRequest
from recorder.export_jobs import QueueFull
from web import params
from web.access import ACCESS, audit, require_camera, visible
from web.console import serve_page
from web.http import STATION, api_error, json_body
from web.recordings import audit_cameras, current_user, job_json, known_camera, require_index, source_causes

_NUMBER_MAX = 64
_TEXT_MAX = 4000
_HISTORY_MAX = 10_000
_STATUS: dict[int, type[web.HTTPException]] = {404: web.HTTPNotFound, 409: web.HTTPConflict,
                                               400: web.HTTPBadRequest}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/cases/{case_id}", case_page)
    app.router.add_get("/api/cases", list_cases)
    app.router.add_post("/api/cases", create_case)
    app.router.add_get("/api/cases/{case_id}", get_case)
    app.router.add_post("/api/cases/{case_id}/items", add_item)
    app.router.add_post("/api/cases/{case_id}/bookmarks", add_bookmark)
    app.router.add_post("/api/cases/{case_id}/export", export_case)
    app.router.add_post("/api/cases/{case_id}/close", close_case)
    app.router.add_get("/api/cases/{case_id}/history", case_history)
    app.router.add_get("/api/bookmarks", list_bookmarks)


async def _store(request: web.Request) -> CaseStore:
    index = require_index(request)
    store = CaseStore(index)
    await index.call(store.ensure_schema)
    return store


def _case_error(exc: CaseError) -> web.HTTPException:
    return api_error(_STATUS.get(exc.status, web.HTTPConflict), exc.code, str(exc))


def _text(body: dict[str, Any], field: str, required: bool, limit: int = _TEXT_MAX) -> str:
    value = body.get(field, "")
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise params.invalid(field, f"must be a string of at most {limit} characters")
    value = value.strip()
    if required and not value:
        raise params.invalid(field, "is required")
    return value


def _may_see_case(request: web.Request, case: Case) -> bool:
    """A case of only other cameras is, to a restricted auditor, a case that does not exist."""
    return not case.cameras or any(visible(request, camera) for camera in case.cameras)


async def _case(request: web.Request, store: CaseStore) -> Case:
    raw = request.match_info["case_id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise params.invalid("case_id", "must be a number")
    case = await store.index.call(store.case, int(raw))
    if case is None or not _may_see_case(request, case):
        raise api_error(web.HTTPNotFound, "unknown_case", f"no case {raw}")
    return case


def _require_all(request: web.Request, case: Case) -> None:
    """An action on the whole case: every camera in it must be the requester's (a batch fails as a whole)."""
    for camera in case.cameras:
        require_camera(request, camera)


def case_json(request: web.Request, case: Case) -> dict[str, Any]:
    items = [i for i in case.items if visible(request, i.camera)]
    bookmarks = [b for b in case.bookmarks if visible(request, b.camera)]
    cameras = sorted({i.camera for i in items})
    return {
        **case.summary(),
        "items": [{**i.json(), "playback": playback_url([i.camera], i.start, i.end, i.start)} for i in items],
        "bookmarks": [{**b.json(), "playback": playback_url([b.camera], b.at - 30, b.at + 30, b.at)}
                      for b in bookmarks],
        "exports": [e.json() for e in case.exports],
        "cameras": cameras,
        "hidden_items": len(case.items) - len(items),
        "playback": playback_url(cameras, min(i.start for i in items), max(i.end for i in items),
                                 min(i.start for i in items)) if items else None,
    }


def playback_url(sources: list[str], start: float, end: float, at: float) -> str:
    """The playback page's address for these sources and range (web/static/playback.*)."""
    from urllib.parse import urlencode

    return "/playback?" + urlencode({"sources": ",".join(sources), "start": iso(start), "end": iso(end),
                                     "at": iso(at)})


# -- handlers -------------------------------------------------------------------------------


async def list_cases(request: web.Request) -> web.Response:
    store = await _store(request)
    cases = [c for c in await store.index.call(store.cases) if _may_see_case(request, c)]
    audit(request, "case.list", returned=len(cases))
    return web.json_response({"cases": [
        {**c.summary(), "items": sum(visible(request, i.camera) for i in c.items),
         "bookmarks": sum(visible(request, b.camera) for b in c.bookmarks), "exports": len(c.exports)}
        for c in cases]})


async def create_case(request: web.Request) -> web.Response:
    body = await json_body(request)
    number = _text(body, "number", True, _NUMBER_MAX)
    title = _text(body, "title", True, 200)
    description = _text(body, "description", False)
    store = await _store(request)
    try:
        case = await store.index.call(store.create, number, title, description, current_user(request))
    except CaseError as exc:
        raise _case_error(exc) from None
    audit(request, "case.create", case_id=case.id, number=case.number, title=case.title)
    return web.json_response(case_json(request, case), status=201, headers={"Location": f"/api/cases/{case.id}"})


async def get_case(request: web.Request) -> web.Response:
    store = await _store(request)
    case = await _case(request, store)
    audit(request, "case.view", case_id=case.id, number=case.number)
    return web.json_response(case_json(request, case))


async def add_item(request: web.Request) -> web.Response:
    body = await json_body(request)
    camera = known_camera(request, body.get("camera"))
    config = request.app[STATION].config
    start, end = params.required_range(body.get("start"), body.get("end"), config.recordings.max_range_hours * 3600)
    note = _text(body, "note", False)
    store = await _store(request)
    case = await _case(request, store)
    try:
        item = await store.index.call(store.add_item, case.id, camera, start, end, note, current_user(request))
    except CaseError as exc:
        raise _case_error(exc) from None
    audit(request, "case.item.add", camera=camera, case_id=case.id, number=case.number, item_id=item.id,
          hold_id=item.hold_id, start=iso(start), end=iso(end), note=note)
    return web.json_response({**item.json(), "playback": playback_url([camera], start, end, start)}, status=201)


async def add_bookmark(request: web.Request) -> web.Response:
    body = await json_body(request)
    camera = known_camera(request, body.get("camera"))
    at = params.required_time(body.get("at"), "at")
    note = _text(body, "note", False)
    store = await _store(request)
    case = await _case(request, store)
    try:
        mark = await store.index.call(store.add_bookmark, case.id, camera, at, note, current_user(request))
    except CaseError as exc:
        raise _case_error(exc) from None
    audit(request, "case.bookmark.add", camera=camera, case_id=case.id, number=case.number, bookmark_id=mark.id,
          at=iso(at), note=note)
    return web.json_response(mark.json(), status=201)


async def list_bookmarks(request: web.Request) -> web.Response:
    camera = known_camera(request, request.query.get("camera"))
    start, end = params.required_range(request.query.get("start"), request.query.get("end"),
                                       request.app[STATION].config.recordings.max_search_hours * 3600)
    store = await _store(request)
    marks = await store.index.call(store.bookmarks, camera, start, end)
    return web.json_response({"bookmarks": [{"id": b.id, "case_id": b.case_id, "camera": b.camera, "at": iso(b.at),
                                             "note": b.note} for b in marks]})


async def export_case(request: web.Request) -> web.Response:
    body = await json_body(request)
    reason = _text(body, "reason", True)
    station = request.app[STATION]
    store = await _store(request)
    case = await _case(request, store)
    _require_all(request, case)
    if not case.items:
        raise api_error(web.HTTPConflict, "case_empty", f"case {case.number} has no ranges to export")
    if station.recording.exports is None:
        raise api_error(web.HTTPServiceUnavailable, "storage_unavailable", "exports need the recording storage")
    ranges = tuple(export_ranges(case))
    cameras = sorted({camera for camera, _, _ in ranges})
    start, end = min(r[1] for r in ranges), max(r[2] for r in ranges)
    causes = await source_causes(request, start, end)
    export = ExportRequest(cameras, start, end, reason, current_user(request), ranges=ranges,
                           case=manifest_entry(case))
    try:
        job = await station.recording.exports.submit(export, causes)
    except QueueFull as exc:
        raise api_error(web.HTTPServiceUnavailable, "export_queue_full", str(exc)) from None
    await store.index.call(store.record_export, case.id, job.id, reason, current_user(request))
    audit_cameras(request, "case.export", cameras, case_id=case.id, number=case.number, export_id=job.id,
                  reason=reason, items=len(case.items))
    return web.json_response({**job_json(job), "case_id": case.id}, status=202,
                             headers={"Location": f"/api/exports/{job.id}"})


async def close_case(request: web.Request) -> web.Response:
    body = await json_body(request)
    reason = _text(body, "reason", True)
    release = body.get("release_holds", False)
    if not isinstance(release, bool):
        raise params.invalid("release_holds", "must be true or false")
    store = await _store(request)
    case = await _case(request, store)
    _require_all(request, case)
    try:
        closed, released = await store.index.call(store.close, case.id, current_user(request), reason, release)
    except CaseError as exc:
        raise _case_error(exc) from None
    audit(request, "case.close", case_id=case.id, number=case.number, reason=reason, release_holds=release,
          released_holds=released)
    return web.json_response({**case_json(request, closed), "released_holds": released})


async def case_history(request: web.Request) -> web.Response:
    """Every audit entry naming the case, oldest first, each entry's own hash recomputed (``hash_ok``); the
    whole log's chain is checked by ``nvr audit verify``."""
    store = await _store(request)
    case = await _case(request, store)
    log = request.app[ACCESS].audit
    who = request.get("user")
    cameras = getattr(who, "cameras", None)

    entries = [e for e in await log.db.call(log.naming_case, case.id, _HISTORY_MAX)
               if cameras is None or e.camera is None or e.camera in cameras]
    audit(request, "case.history", case_id=case.id, number=case.number, returned=len(entries))
    return web.json_response({
        "case": case.summary(),
        "entries": [{**e.json(), "hash_ok": e.intact} for e in entries],
        "generated_at": iso(time.time()),
    })


async def case_page(request: web.Request) -> web.Response:
    return await serve_page(request, "case.html")  # in the user's language and the station's time zone
