"""The console's HTTP app: the fleet page and API, live relay, and the shared access control.

Routes (documented in README, "Central console"):

- ``GET /`` the fleet page (``web/static/fleet.html``);
- ``GET /api/fleet``: stations with reachability, reason and counts, cameras
  grouped by station with state and open alarms;
- ``GET /api/fleet/alarms``: merged open alarms, most urgent first;
- ``GET /api/fleet/stream``: Server-Sent Events (``fleet`` snapshot, then
  ``station`` and ``alarm.opened`` / ``alarm.closed``);
- ``POST /api/stations/{station_id}/cameras/{camera_id}/whep`` (with its ``OPTIONS`` pre-flight) and
  ``DELETE /api/stations/{station_id}/whep/sessions/{session_id}``: WHEP relay.

Users, sessions, tokens, CSRF, the limits on sign-ins and event feeds and the
identity watch that ends streams are the station's own code (:mod:`web.access`,
:mod:`nvr.identity.authdb`, :mod:`nvr.identity.audit`, :mod:`web.identity_watch`) over the
console's database.  Camera allow-lists name cameras ``STATION/CAMERA``
(:func:`web.access.may_see`).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

from aiohttp import web

from central import witness
from central.config import ConsoleConfig
from central.fleet import Fleet
from central.live_relay import MAX_OFFER_BYTES, SDP_TYPE, LiveRelay, RelayedSession, ice_server_links
from central.station_link import StationError, StationLink
from central.witness import WITNESS_FILE, Witness
from nvr import __version__
from nvr.identity.audit import AuditLog
from nvr.identity.authdb import AuthDatabase
from nvr.identity.roles import Role
from web import access, openapi, sse
from web.access import ACCESS, audit, identity, may_see, station_camera
from web.console import STATIC_DIR, TIMEZONE, serve_page
from web.http import api_error, error_response, json_errors, read_body

log = logging.getLogger(__name__)



class ConsoleRuntime:
    """What the console's handlers share; shaped like the station's Daemon where web.access reads it."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self.auth = AuthDatabase(config.auth_database)
        self.audit = AuditLog(self.auth)
        # Checkpoints and keys of the stations, kept where no station can write (issue 11).
        self.witness = Witness(config.storage.path / WITNESS_FILE)
        self.fleet = Fleet(config, self.witness)
        self.relay = LiveRelay()
        self.sse_closers: set[Callable[[], None]] = set()


RUNTIME = web.AppKey("console_runtime", ConsoleRuntime)


def create_console_app(runtime: ConsoleRuntime) -> web.Application:

    app = web.Application(middlewares=[json_errors], client_max_size=MAX_OFFER_BYTES + 1024)
    app[RUNTIME] = runtime
    # The fleet spans stations that may keep different zones: its pages show UTC (and say so).
    app[TIMEZONE] = "UTC"
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False, append_version=False)
    app.router.add_get("/api/fleet", get_fleet)
    app.router.add_get("/api/fleet/alarms", get_alarms)
    app.router.add_get("/api/fleet/stream", stream_fleet)
    app.router.add_post("/api/stations/{station_id}/cameras/{camera_id}/whep", post_offer)
    app.router.add_route("OPTIONS", "/api/stations/{station_id}/cameras/{camera_id}/whep", options_whep)
    app.router.add_delete("/api/stations/{station_id}/whep/sessions/{session_id}", delete_session)
    app.on_shutdown.append(_close_streams)
    witness.setup(app, runtime.witness, runtime.config.console.id,
                  {s.id: s.name or s.id for s in runtime.config.stations})
    openapi.add_routes(app)
    access.setup(app, runtime)  # an AccessPort: .auth, .audit, .config.auth, .config.web
    return app


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response({"status": "ok", "version": __version__, "console": runtime.config.console.id})


async def index(request: web.Request) -> web.Response:
    return await serve_page(request, "fleet.html")


def _who(request: web.Request) -> Any:

    return identity(request)


async def get_fleet(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME].fleet.fleet_json(_who(request)))


async def get_alarms(request: web.Request) -> web.Response:
    return web.json_response({"alarms": request.app[RUNTIME].fleet.alarms_json(_who(request))})


async def stream_fleet(request: web.Request) -> web.StreamResponse:

    runtime = request.app[RUNTIME]
    fleet = runtime.fleet
    who = _who(request)

    def subscribe(publish: sse.Publish) -> Callable[[], None]:
        def listener(name: str, body: dict[str, Any]) -> None:
            if name.startswith("alarm.") and not may_see(who, station_camera(body["station"],
                                                                             body["alarm"].get("camera"))):
                return
            publish(sse.Event(name, body))

        fleet.listeners.append(listener)
        return lambda: fleet.listeners.remove(listener) if listener in fleet.listeners else None

    def coalesce(events: list[sse.Event]) -> list[sse.Event]:
        # One snapshot of each station that changed, however many changes queued.
        changed = sorted({e.body["station"] for e in events if e.name == "station"})
        return [e for e in events if e.name != "station"] + [
            sse.Event("station", fleet.station_json(station_id, who)) for station_id in changed]

    return await sse.serve(request, "fleet feed", subscribe, lambda: [sse.Event("fleet", fleet.fleet_json(who))],
                           runtime.sse_closers, batch=coalesce)


async def _close_streams(app: web.Application) -> None:
    runtime = app[RUNTIME]
    await sse.close_all(runtime.sse_closers)
    await runtime.fleet.stop()


# -- live relay -----------------------------------------------------------------------------


def _link(request: web.Request) -> StationLink:
    station_id = request.match_info["station_id"]
    link = request.app[RUNTIME].fleet.links.get(station_id)
    if link is None:
        raise api_error(web.HTTPNotFound, "unknown_station", f"no station with id {station_id!r}")
    return link


def _station_error(body: bytes) -> tuple[str, str]:
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            return str(parsed.get("error", "station_error"))[:64], str(parsed.get("message", ""))[:500]
    except ValueError:
        pass
    return "station_error", ""


async def post_offer(request: web.Request) -> web.Response:

    link = _link(request)
    runtime = request.app[RUNTIME]
    camera_id = request.match_info["camera_id"]
    if request.content_type != SDP_TYPE:
        response = error_response(415, "unsupported_media_type", f"send the SDP offer as {SDP_TYPE}")
        response.headers["Accept-Post"] = SDP_TYPE
        return response
    body = await read_body(request, MAX_OFFER_BYTES, "an SDP offer")
    if not body.lstrip().startswith(b"v=0"):
        return error_response(400, "bad_offer", "the body is not an SDP offer (it must start with v=0)")
    who = _who(request)
    user = who.name if who is not None else "anonymous"
    try:
        status, headers, answer = await link.request(
            "POST", _station_whep(camera_id), data=body,
            headers={"Content-Type": SDP_TYPE, **link.central_headers(user)})
    except StationError as exc:
        audit(request, "live.start", camera=camera_id, outcome="failed", station=link.id,
              reason=exc.problem.reason.value)
        return _unreachable(link, exc)
    if status != 201:
        code, _ = _station_error(answer)
        audit(request, "live.start", camera=camera_id, outcome="failed", station=link.id, station_status=status,
              error=code)
        return _refused(link, status, answer)
    session_id = LiveRelay.station_session(headers.get("Location"))
    if session_id is None:
        audit(request, "live.start", camera=camera_id, outcome="failed", station=link.id, error="bad_location")
        return error_response(502, "station_error", f"station {link.id} answered without a session Location")

    session = runtime.relay.add(link, camera_id, session_id, user)
    session.unwatch = request.app[ACCESS].watch.watch(
        who, f"live session {session_id[:8]} of {link.id}/{camera_id}",
        lambda reason: _end_for_identity(runtime, link, session, reason))
    location = LiveRelay.location(session)
    audit(request, "live.start", camera=camera_id, station=link.id, session=session_id[:8])
    log.info("[%s] live view of %s relayed for %s: session %s", link.id, camera_id, user, session_id[:8])
    return web.Response(status=201, body=answer, content_type=SDP_TYPE,
                        headers={"Location": location, "Cache-Control": "no-store", **ice_server_links(headers)})


async def options_whep(request: web.Request) -> web.Response:
    """The WHEP pre-flight (RFC 9725 4.6), relayed: the station's STUN/TURN servers, with credentials for this user.

    Media flows between the station and the browser, so the servers that matter are the station's (its own
    peer connection gathers with them, and a TURN credential made from its secret is one the console never
    holds).  The same access control as the POST: the live-view permission and the camera allow-list
    (:data:`web.access.ROUTES`), so nobody else learns a credential.  Not audited: nothing is watched.
    """
    link = _link(request)
    camera_id = request.match_info["camera_id"]
    who = _who(request)
    try:
        status, headers, body = await link.request(
            "OPTIONS", _station_whep(camera_id), headers=link.central_headers(who.name if who else "anonymous"))
    except StationError as exc:
        return _unreachable(link, exc)
    if status not in (200, 204):
        return _refused(link, status, body)
    return web.Response(status=204, headers={"Accept-Post": SDP_TYPE, "Allow": "OPTIONS, POST",
                                             "Cache-Control": "no-store", **ice_server_links(headers)})


def _station_whep(camera_id: str) -> str:
    return f"/api/cameras/{urllib.parse.quote(camera_id, safe='')}/whep"


def _unreachable(link: StationLink, exc: StationError) -> web.Response:
    return error_response(502, "station_unreachable",
                          f"station {link.id}: {exc.problem.reason.value}: {exc.problem.message}")


def _refused(link: StationLink, status: int, body: bytes) -> web.Response:
    """The viewer's answer when the station refused a relayed WHEP request with ``status``."""
    code, message = _station_error(body)
    if status in (401, 403):  # the console's own token is refused: not the viewer's fault
        return error_response(502, "station_refused",
                              f"station {link.id} refused the console's token (HTTP {status}, {code})")
    if status in (400, 404, 409, 413, 415, 429, 503):
        return error_response(status, code, f"station {link.id}: {message}")
    return error_response(502, "station_error", f"station {link.id} answered HTTP {status} ({code})")


async def delete_session(request: web.Request) -> web.Response:

    link = _link(request)
    runtime = request.app[RUNTIME]
    session_id = request.match_info["session_id"]
    session = runtime.relay.get(link.id, session_id)
    if session is None:
        return error_response(404, "unknown_session", "no such live session")
    who = _who(request)
    if who is not None and who.role is not Role.ADMIN and session.user != who.name:
        return error_response(403, "forbidden", "this live session belongs to someone else")
    runtime.relay.remove(link.id, session_id)
    status = await _stop_at_station(link, session_id, who.name if who is not None else "anonymous")
    audit(request, "live.stop", camera=session.camera, station=link.id, session=session_id[:8],
          station_status=status, reason="ended by the viewer")
    return web.Response(status=204)


async def _stop_at_station(link: StationLink, session_id: str, user: str) -> int:
    """Relay the end of a live session to its station; its HTTP status, 0 when it cannot be reached."""
    try:
        status, _, _ = await link.request("DELETE", f"/api/whep/sessions/{session_id}",
                                          headers=link.central_headers(user))
    except StationError as exc:
        log.info("[%s] ending live session %s: %s", link.id, session_id[:8], exc.problem.message)
        return 0
    return status


async def _end_for_identity(runtime: ConsoleRuntime, link: StationLink, session: RelayedSession,
                            reason: str) -> None:
    """The console user who opened a relayed session logged out, expired or was removed: end it at the station."""
    if runtime.relay.remove(link.id, session.session_id) is None:
        return  # already ended
    status = await _stop_at_station(link, session.session_id, session.user)
    runtime.audit.record("live.stop", actor=session.user, camera=session.camera, station=link.id,
                         session=session.session_id[:8], station_status=status, reason=reason)
