"""Access control for every HTTP route: who is asking, may they, and the trace it leaves.

- **Authentication**: ``Authorization: Bearer <token>`` (API tokens, for
  machines) or the ``nvr_session`` cookie set by ``POST /api/login``.
- **Authorization**: :data:`ROUTES` maps every route (method, path template)
  to one :class:`~nvr.identity.roles.Permission`; a route missing from the table is
  refused (deny by default).  Camera allow-lists are applied to
  ``{camera_id}`` in the path and ``?camera=`` here; handlers filter lists
  and check bodies with :func:`require_camera` / :func:`visible`.
- **CSRF**: a state-changing request authenticated by the cookie must come
  from this origin (``Sec-Fetch-Site`` and ``Origin``).
- **Bad paths**: ``..`` or NUL in the request path, or ``/`` in an id, is
  refused with 400 and audited.
- **Limits**: sign-in attempts are reserved before the password is checked
  (:mod:`web.login_throttle`), and Argon2 runs in a bounded pool of its own
  (``auth.password_check_threads``), never in the default executor that clips
  and exports use.  Event feeds take a slot (:mod:`web.slots`) before their
  first await; every long-lived stream is closed when its identity ends
  (:mod:`web.identity_watch`).
- **Redirects**: the page to return to after sign-in is checked here
  (:func:`safe_next`), so it never leaves the site.
- Login, logout, ``/api/me`` (with the station's time zone and the page
  language), ``PUT /api/me/preferences`` (the user's language), the login page
  (in the request's language, :func:`web.console.serve_page`), ``GET
  /api/audit`` and ``GET /api/openapi.json`` (:mod:`web.openapi`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from nvr.base.timeutil import iso
from nvr.identity.audit import AuditQuery
from nvr.identity.authdb import AuthDatabase
from nvr.identity.roles import Identity, Permission, Role
from web import i18n, params
from web.console import PREFERENCES, TIMEZONE, language, serve_page
from web.http import api_error, json_body
from web.identity_watch import IdentityWatch, session_key
from web.login_throttle import LoginThrottle
from web.ports import AccessPort
from web.slots import LimitReached, Slots

log = logging.getLogger(__name__)

COOKIE = "nvr_session"
P = Permission

# The one route → permission table.  HEAD is checked as GET.
ROUTES: dict[tuple[str, str], Permission] = {
    ("GET", "/healthz"): P.PUBLIC,
    ("GET", "/login"): P.PUBLIC,
    ("GET", "/static"): P.PUBLIC,  # the console's own HTML/CSS/JS, needed by the login page
    ("POST", "/api/login"): P.PUBLIC,
    ("POST", "/api/logout"): P.PUBLIC,  # ends the cookie's session if there is one
    ("GET", "/api/me"): P.SELF,
    ("PUT", "/api/me/preferences"): P.SELF,
    ("GET", "/api/openapi.json"): P.SELF,
    ("GET", "/"): P.SELF,
    ("GET", "/api/cameras"): P.CAMERAS,
    ("GET", "/api/cameras/{camera_id}"): P.CAMERAS,
    ("POST", "/api/cameras/{camera_id}/whep"): P.LIVE,
    ("OPTIONS", "/api/cameras/{camera_id}/whep"): P.LIVE,
    ("DELETE", "/api/whep/sessions/{session_id}"): P.LIVE,
    ("PATCH", "/api/whep/sessions/{session_id}"): P.LIVE,
    ("GET", "/api/live/sessions"): P.LIVE_SESSIONS,
    ("GET", "/api/events"): P.ALARMS,
    ("GET", "/api/events/stream"): P.ALARMS,
    ("POST", "/api/cameras/{camera_id}/reference"): P.HEALTH,
    ("GET", "/metrics"): P.METRICS,
    ("GET", "/api/coverage"): P.COVERAGE,
    ("GET", "/playback"): P.RECORDINGS,
    ("GET", "/api/recordings"): P.RECORDINGS,
    ("GET", "/api/recordings/{camera_id}/clip.mp4"): P.RECORDINGS,
    ("GET", "/api/recordings/{camera_id}/index.m3u8"): P.RECORDINGS,  # HLS playback (issue 16)
    ("GET", "/api/recordings/{camera_id}/hls/{segment_id}.m4s"): P.RECORDINGS,
    ("GET", "/api/recordings/{camera_id}/thumbnail.jpg"): P.RECORDINGS,
    ("GET", "/api/recordings/{camera_id}/thumbnails"): P.RECORDINGS,
    ("GET", "/api/key"): P.RECORDINGS,
    ("GET", "/api/checkpoints"): P.CHECKPOINTS,
    ("POST", "/api/exports"): P.EXPORTS,
    ("GET", "/api/exports/{export_id}"): P.EXPORTS,
    ("GET", "/api/exports/{export_id}/download"): P.EXPORTS,
    ("GET", "/api/holds"): P.HOLDS,
    ("POST", "/api/holds"): P.HOLDS,
    ("DELETE", "/api/holds/{hold_id}"): P.HOLDS,
    ("GET", "/api/audit"): P.AUDIT,
    ("GET", "/api/archive"): P.ARCHIVE,  # the off-site archive's backlog (issue 19)
    # The central console (``nvr console``, issue 8): its fleet view and the live relay to stations.
    ("GET", "/api/fleet"): P.CAMERAS,
    ("GET", "/api/fleet/alarms"): P.ALARMS,
    ("GET", "/api/fleet/stream"): P.ALARMS,
    ("POST", "/api/stations/{station_id}/cameras/{camera_id}/whep"): P.LIVE,
    ("OPTIONS", "/api/stations/{station_id}/cameras/{camera_id}/whep"): P.LIVE,
    ("DELETE", "/api/stations/{station_id}/whep/sessions/{session_id}"): P.LIVE,
    ("GET", "/api/stations/{station_id}/checkpoints"): P.AUDIT,  # what the console witnessed (issue 11)
    ("GET", "/api/keyring"): P.AUDIT,
    # Body-worn cameras (issue 15, web/bodycams.py).
    ("GET", "/api/bodycams"): P.CAMERAS,
    ("GET", "/api/bodycams/{camera_id}/recordings"): P.RECORDINGS,
    ("POST", "/api/bodycams/{camera_id}/recordings"): P.UPLOAD,
    ("GET", "/api/bodycams/{camera_id}/assignments"): P.RECORDINGS,
    ("POST", "/api/bodycams/{camera_id}/assignments"): P.ASSIGNMENTS,
    # Incident cases (issue 15, web/cases.py).
    ("GET", "/cases/{case_id}"): P.CASES,
    ("GET", "/api/cases"): P.CASES,
    ("POST", "/api/cases"): P.CASES,
    ("GET", "/api/cases/{case_id}"): P.CASES,
    ("POST", "/api/cases/{case_id}/items"): P.CASES,
    ("POST", "/api/cases/{case_id}/bookmarks"): P.CASES,
    ("POST", "/api/cases/{case_id}/export"): P.CASES,
    ("POST", "/api/cases/{case_id}/close"): P.CASES,
    ("GET", "/api/cases/{case_id}/history"): P.CASES,
    ("GET", "/api/bookmarks"): P.RECORDINGS,
}
# Browser pages: without a session they redirect to the login page instead of answering 401.
PAGES = {"/", "/playback", "/cases/{case_id}"}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_MAX_AUDIT_ENTRIES = 10_000
_MAX_CACHE = 10_000


class RefusalReports:
    """Bounds the audit entries and log lines that refused requests leave, per client address and kind.

    Each (address, kind) may leave ``burst`` at once, then one every ``interval``
    seconds (a token bucket); the next one that is left says how many were
    suppressed.  So a flood of bad paths or locked-out sign-ins is recorded,
    but can neither fill the audit log and the journal nor take the disk's
    time from recording.  Refusals are still answered and counted in full.
    """

    def __init__(self, burst: int = 20, interval: float = 10.0) -> None:
        self.burst = burst
        self.interval = interval
        self._buckets: dict[tuple[str, str], tuple[float, float, int]] = {}  # tokens, at, suppressed
        self.suppressed_total = 0

    def allow(self, address: str, kind: str, now: float | None = None) -> int | None:
        """None: do not report this one; else how many of this kind were suppressed since the last report."""
        now = time.monotonic() if now is None else now
        key = (address, kind)
        tokens, at, suppressed = self._buckets.get(key, (float(self.burst), now, 0))
        tokens = min(float(self.burst), tokens + (now - at) / self.interval)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now, suppressed + 1)
            self.suppressed_total += 1
            return None
        if len(self._buckets) >= _MAX_CACHE and key not in self._buckets:
            self._buckets.clear()  # bounded memory; at worst a burst more is reported
        self._buckets[key] = (tokens - 1.0, now, 0)
        return suppressed


def audit_refusal(request: web.Request, action: str, message: str | None = None, **details: Any) -> None:
    """Audit (and log at WARNING, when ``message`` is given) a refused request, rate-limited.

    Per client address and action, and per signed-in identity (one user's refusals never hide
    another's, behind a central console too); anonymous requests and sign-ins (whose user name
    is the attacker's choice) share their address's budget.
    """
    who = identity(request)
    kind = f"{action}:{who.name}" if who is not None and action != "login.locked" else action
    suppressed = request.app[ACCESS].refusals.allow(request.remote or "?", kind)
    if suppressed is None:
        return
    if suppressed:
        details["suppressed_before"] = suppressed
    if message is not None:
        log.warning("%s%s", message, f" ({suppressed} more like it suppressed)" if suppressed else "")
    audit(request, action, outcome="denied", **details)


def route_key(method: str, canonical: str) -> tuple[str, str]:
    return ("GET" if method == "HEAD" else method, canonical)


class Access:
    """Per-app state: the auth database, the audit log, the login throttle and the settings."""

    def __init__(self, host: AccessPort) -> None:
        self.db: AuthDatabase = host.auth
        self.audit = host.audit
        auth = host.config.auth
        self.idle_seconds = auth.session_idle_minutes * 60
        self.max_seconds = auth.session_max_hours * 3600
        self.throttle = LoginThrottle(auth.login_max_failures, auth.login_max_failures_per_address,
                                      auth.login_window_seconds, auth.login_lockout_seconds,
                                      auth.max_pending_logins)
        # Argon2 is slow on purpose: a pool of its own, so a sign-in flood never starves clips and exports.
        self.password_pool = ThreadPoolExecutor(auth.password_check_threads, thread_name_prefix="argon2")
        web_config = host.config.web
        self.event_streams = Slots("streams", "event streams", web_config.max_event_streams,
                                   web_config.max_event_streams_per_user)
        self.tls = host.config.web.tls is not None
        self.metrics_public = host.config.web.metrics_public
        self.hsts_seconds = host.config.web.hsts_seconds
        # A revoked token or a removed user (changed by the CLI, another process) is refused
        # after at most this long; logging out in this process takes effect at once.
        self.cache_seconds = auth.identity_cache_seconds
        self._cache: dict[str, tuple[float, asyncio.Future[Identity | None]]] = {}
        # Open streams are checked as often as identities are looked up again (at least every second).
        self.watch = IdentityWatch(self.db, self.idle_seconds, self.max_seconds, max(1.0, self.cache_seconds))
        self.refusals = RefusalReports()

    async def identify(self, request: web.Request) -> tuple[Identity | None, str | None]:
        """The identity and, when credentials were sent but are no good, why."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None, "only 'Authorization: Bearer <token>' is accepted"
            identity = await self._lookup("t:" + token.strip())
            return identity, None if identity else "unknown or revoked token"
        session_id = request.cookies.get(COOKIE)
        if session_id:
            identity = await self._lookup("s:" + session_id)
            return identity, None if identity else "the session has expired or ended; log in again"
        return None, None

    async def _lookup(self, key: str) -> Identity | None:
        """Database lookup, remembered for ``auth.identity_cache_seconds`` (concurrent misses share one)."""
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return await cached[1]
        if len(self._cache) > _MAX_CACHE:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        kind, secret = key[0], key[2:]
        if kind == "t":
            future = asyncio.ensure_future(self.db.call(self.db.token_identity, secret))
        else:
            future = asyncio.ensure_future(
                self.db.call(self.db.session_identity, secret, self.idle_seconds, self.max_seconds))
        self._cache[key] = (now + self.cache_seconds, future)
        try:
            return await asyncio.shield(future)
        except Exception:
            self._cache.pop(key, None)
            raise

    def forget(self, session_id: str) -> None:
        self._cache.pop("s:" + session_id, None)


ACCESS = web.AppKey("access", Access)


def setup(app: web.Application, host: AccessPort) -> None:
    """Install the access-control middleware and mount the login, logout, me and audit routes."""
    app[ACCESS] = Access(host)
    app[PREFERENCES] = host.auth
    app.middlewares.append(access_control)
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_session_purger)
    app.cleanup_ctx.append(_stream_watch)
    app.router.add_get("/login", login_page)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/me", me)
    app.router.add_put("/api/me/preferences", set_preferences)
    app.router.add_get("/api/audit", read_audit)
    app.on_startup.append(_check_table)


async def _check_table(app: web.Application) -> None:
    for route in app.router.routes():
        resource = route.resource
        if resource is not None and route_key(route.method, resource.canonical) not in ROUTES:
            log.error("route %s %s is missing from the access table: every request to it is refused",
                      route.method, resource.canonical)


async def _session_purger(app: web.Application) -> AsyncIterator[None]:
    access = app[ACCESS]

    async def purge() -> None:
        while True:
            try:
                await access.db.call(access.db.purge_sessions, access.idle_seconds, access.max_seconds)
            except Exception:
                log.warning("purging expired sessions failed", exc_info=True)
            await asyncio.sleep(600)

    task = asyncio.get_running_loop().create_task(purge(), name="session-purge")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _stream_watch(app: web.Application) -> AsyncIterator[None]:
    access = app[ACCESS]
    access.watch.start()
    yield
    await access.watch.stop()
    access.password_pool.shutdown(wait=False, cancel_futures=True)


# -- helpers for handlers -------------------------------------------------------------------


def identity(request: web.Request) -> Identity | None:
    user = request.get("user")
    return user if isinstance(user, Identity) else None


def may_see(who: Identity | None, camera_id: str | None) -> bool:
    """Camera allow-list check (None: station-wide data, visible to all).

    On the central console cameras are ``STATION/CAMERA`` (:func:`station_camera`), and
    ``STATION/*`` in an allow-list stands for every camera of that station.
    """
    if who is None or who.may_see(camera_id):
        return True
    station, sep, _ = (camera_id or "").partition("/")
    return bool(sep) and who.cameras is not None and f"{station}/*" in who.cameras


def station_camera(station_id: str, camera_id: str | None) -> str | None:
    """A camera as the central console's allow-lists name it: ``STATION/CAMERA`` (None stays None)."""
    return f"{station_id}/{camera_id}" if camera_id is not None else None


def visible(request: web.Request, camera_id: str | None) -> bool:
    """May the requester see this camera's data? (None: station-wide data.)"""
    return may_see(identity(request), camera_id)


def require_camera(request: web.Request, camera_id: str) -> None:
    """403 unless the requester's camera allow-list includes ``camera_id``."""
    if not visible(request, camera_id):
        audit_refusal(request, "access.denied", camera=camera_id, reason="camera not in allow-list",
                      method=request.method, path=request.path)
        raise api_error(web.HTTPForbidden, "camera_forbidden", f"you may not access camera {camera_id!r}")


def audit(request: web.Request, action: str, *, camera: str | None = None, outcome: str = "ok",
          actor: str | None = None, **details: Any) -> None:
    """Queue an audit entry for this request (never blocks)."""
    who = identity(request)
    request.app[ACCESS].audit.record(
        action, actor=actor or (who.name if who else "anonymous"), role=who.role.value if who else None,
        camera=camera, outcome=outcome, address=request.remote, **{**via_console(request), **details},
    )


# -- requests relayed by a central console (issue 8) ----------------------------------------

VIA_CONSOLE_HEADER = "X-NVR-Via-Console"
CENTRAL_USER_HEADER = "X-NVR-Central-User"
_VIA = "via_console"
_CONSOLE_ID = re.compile(r"^[a-z0-9-]{1,64}$")
_CENTRAL_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,99}$")


def via_console(request: web.Request) -> dict[str, str]:
    """``{"via_console": id, "central_user": name}`` when a central console relayed this request, else {}."""
    via = request.get(_VIA)
    return dict(via) if isinstance(via, dict) else {}


def _read_via_console(request: web.Request, who: Identity) -> None:
    """Honour the console's headers only for a token of role central, so no one else can claim them."""
    console, user = request.headers.get(VIA_CONSOLE_HEADER), request.headers.get(CENTRAL_USER_HEADER)
    if console is None and user is None:
        return
    if who.kind != "token" or who.role is not Role.CENTRAL:
        log.info("ignoring %s/%s headers from %s (%s): only role-central tokens may send them",
                 VIA_CONSOLE_HEADER, CENTRAL_USER_HEADER, who.name, who.kind)
        return
    if not _CONSOLE_ID.match(console or "") or not _CENTRAL_USER.match(user or ""):
        raise api_error(web.HTTPBadRequest, "bad_via_console",
                        f"{VIA_CONSOLE_HEADER} must be a console id and {CENTRAL_USER_HEADER} a user name")
    request[_VIA] = {"via_console": console, "central_user": user}


# -- middleware -----------------------------------------------------------------------------


def _bad_path(request: web.Request) -> str | None:
    raw = request.raw_path.split("?", 1)[0]
    decoded = raw
    for _ in range(3):  # double and triple encoding
        decoded = urllib.parse.unquote(decoded)
    if "\x00" in decoded:
        return "NUL byte in the path"
    if ".." in decoded.replace("\\", "/").split("/"):
        return "'..' in the path"
    resource = request.match_info.route.resource
    if resource is not None and resource.canonical != "/static":
        for name, value in request.match_info.items():
            if "/" in value or "\\" in value or value.startswith("."):
                return f"{name} is not a plain id"
    return None


def _same_origin(request: web.Request) -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site is None and origin is None:
        return False
    if site is not None and site != "same-origin":
        return False
    return origin is None or origin == f"{request.scheme}://{request.host}"


def _cross_site(request: web.Request) -> bool:
    """Definitely sent by another site (used where a request without browser headers is fine)."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    return (site is not None and site not in ("same-origin", "none")) or (
        origin is not None and origin != f"{request.scheme}://{request.host}")


def _unauthorized(message: str) -> web.HTTPException:
    exc = api_error(web.HTTPUnauthorized, "unauthorized", message)
    exc.headers["WWW-Authenticate"] = 'Bearer realm="nvr"'
    return exc


@web.middleware
async def access_control(request: web.Request, handler: Any) -> web.StreamResponse:
    access = request.app[ACCESS]
    resource = request.match_info.route.resource
    bad = _bad_path(request)
    if bad is not None:
        who, _ = await access.identify(request)
        if who is not None:
            request["user"] = who
        audit_refusal(request, "request.rejected",
                      f"refused {request.method} {request.raw_path[:200]} from {request.remote}: {bad}",
                      reason=bad, method=request.method, path=request.raw_path[:500])
        raise api_error(web.HTTPBadRequest, "bad_path", f"refused: {bad}")
    if resource is None:  # no such route (404) or method (405): nothing to protect
        response: web.StreamResponse = await handler(request)
        return response
    method = request.method
    permission = ROUTES.get(route_key(method, resource.canonical))
    if permission is None:
        log.error("refused %s %s: the route is missing from the access table", method, resource.canonical)
        raise api_error(web.HTTPForbidden, "route_not_authorized", "this route is not in the access table")
    if permission is P.METRICS and access.metrics_public:
        permission = P.PUBLIC
    who, problem = await access.identify(request)
    if who is not None:
        request["user"] = who
        _read_via_console(request, who)
    if permission is P.PUBLIC:
        response = await handler(request)
        return response
    if who is None:
        if resource.canonical in PAGES and method in ("GET", "HEAD"):
            raise web.HTTPFound("/login?" + urllib.parse.urlencode({"next": request.path_qs}))
        raise _unauthorized(problem or "sign in, or send 'Authorization: Bearer <token>'")
    if who.kind == "session" and method not in _SAFE_METHODS and not _same_origin(request):
        audit_refusal(request, "access.denied", reason="cross-site request", method=method,
                      path=request.path, origin=request.headers.get("Origin"))
        raise api_error(web.HTTPForbidden, "csrf", "cross-site request refused (Origin / Sec-Fetch-Site)")
    if not who.can(permission):
        audit_refusal(request, "access.denied", reason=f"role {who.role.value} lacks {permission.value}",
                      method=method, path=request.path)
        raise api_error(web.HTTPForbidden, "forbidden", f"the {who.role.value} role may not do this")
    station_id = request.match_info.get("station_id")
    for camera_id in (request.match_info.get("camera_id"), request.query.get("camera")):
        if camera_id:
            # Before the handler looks the camera up: an unknown camera answers like a forbidden one.
            require_camera(request, f"{station_id}/{camera_id}" if station_id else camera_id)
    response = await handler(request)
    return response


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    access = request.app[ACCESS]
    if access.tls and access.hsts_seconds:
        headers.setdefault("Strict-Transport-Security", f"max-age={access.hsts_seconds}")
    if request.path.startswith("/api/") and "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"


# -- login, logout, me ----------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    return await serve_page(request, "login.html")


def limit_error(limit: LimitReached) -> web.HTTPException:
    """The JSON error for a limit (429, else 503), with ``Retry-After`` when it says one."""
    kind = web.HTTPTooManyRequests if limit.status == 429 else web.HTTPServiceUnavailable
    exc = api_error(kind, limit.code, limit.message)
    if limit.retry_after is not None:
        exc.headers["Retry-After"] = str(limit.retry_after)
    return exc


# Anything a browser's URL parser drops or turns into '/' (tab, CR, LF, other controls, backslash).
_UNSAFE_IN_NEXT = re.compile(r"[\x00-\x1f\x7f\\]")
_MAX_NEXT = 2000


def safe_next(value: Any) -> str:
    """The page to go to after sign-in: ``value`` if it is a path on this site, else ``/``.

    Browsers remove tabs and newlines from a URL and read ``\\`` as ``/``, so
    ``/<TAB>/evil.example`` and ``/\\evil.example`` would become ``//evil.example``, another
    site.  The value is checked as sent and percent-decoded (up to three times,
    for encoded variants): no control character or backslash, one leading ``/``
    and no second one, no scheme and no host.
    """
    if not isinstance(value, str) or not value or len(value) > _MAX_NEXT:
        return "/"
    decoded = value
    for _ in range(3):
        decoded = urllib.parse.unquote(decoded)
    for text in (value, decoded):
        if _UNSAFE_IN_NEXT.search(text) or not text.startswith("/") or text.startswith("//"):
            return "/"
    parts = urllib.parse.urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


def identity_json(who: Identity) -> dict[str, Any]:
    return {"name": who.name, "role": who.role.value, "kind": who.kind,
            "cameras": sorted(who.cameras) if who.cameras is not None else None}


async def login(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    if _cross_site(request):
        raise api_error(web.HTTPForbidden, "csrf", "cross-site login refused")
    body = await json_body(request)
    name, password = body.get("username"), body.get("password")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise api_error(web.HTTPBadRequest, "invalid_username", "username: a string of 1..64 characters")
    if not isinstance(password, str) or not password or len(password) > 1024:
        raise api_error(web.HTTPBadRequest, "invalid_password", "password: a string of 1..1024 characters")
    address = request.remote or "?"
    try:
        # Reserved before any await: concurrent guesses cannot all get past the limit.
        attempt = access.throttle.begin(name, address)
    except LimitReached as limit:
        audit_refusal(request, "login.locked", actor=name, reason=limit.code)
        raise limit_error(limit) from None
    with attempt:  # an attempt abandoned half-way (client gone) counts as failed
        record = await access.db.call(access.db.password_record, name)
        ok = await asyncio.get_running_loop().run_in_executor(
            access.password_pool, access.db.verify_password, record[1] if record else None, password)
        if record is None or not ok:
            attempt.failed()
            audit(request, "login.failed", actor=name, outcome="failed")
            raise api_error(web.HTTPUnauthorized, "invalid_credentials", "wrong user name or password")
        attempt.succeeded()
    user = record[0]
    # Always a new id at login; a session id the browser already had is ended (no fixation).
    session_id = await access.db.call(access.db.create_session, user.name, address, request.cookies.get(COOKIE))
    who = Identity(user.name, user.role, user.cameras, "session")
    request["user"] = who
    audit(request, "login.ok")
    response = web.json_response({**identity_json(who), "idle_timeout_seconds": access.idle_seconds,
                                  "expires_at": iso(time.time() + access.max_seconds),
                                  "next": safe_next(body.get("next"))})
    response.set_cookie(COOKIE, session_id, max_age=int(access.max_seconds), path="/", httponly=True,
                        samesite="Strict", secure=access.tls or request.secure)
    return response


async def logout(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    session_id = request.cookies.get(COOKIE)
    if session_id:
        if _cross_site(request):
            raise api_error(web.HTTPForbidden, "csrf", "cross-site request refused (Origin / Sec-Fetch-Site)")
        access.forget(session_id)
        access.watch.end(session_key(session_id), "logout")  # its event feeds and live views end now
        user = await access.db.call(access.db.end_session, session_id)
        if user:
            audit(request, "logout", actor=user)
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/", samesite="Strict", secure=access.tls or request.secure, httponly=True)
    return response


async def me(request: web.Request) -> web.Response:
    who = identity(request)
    assert who is not None
    return web.json_response(await _me_json(request, who))


async def _me_json(request: web.Request, who: Identity) -> dict[str, Any]:
    access = request.app[ACCESS]
    stored = await access.db.call(access.db.language, who.name) if who.kind == "session" else None
    return {**identity_json(who), "timezone": request.app.get(TIMEZONE, "UTC"), "lang": await language(request),
            "preferences": {"lang": stored}}


async def set_preferences(request: web.Request) -> web.Response:
    """``PUT /api/me/preferences`` ``{"lang": "fa"}``: the signed-in user's language (null: the browser's)."""
    access = request.app[ACCESS]
    who = identity(request)
    assert who is not None
    body = await json_body(request)
    unknown = sorted(set(body) - {"lang"})
    if unknown:
        raise api_error(web.HTTPBadRequest, "invalid_preferences", f"unknown preference {unknown[0][:64]!r}")
    if "lang" not in body:
        raise api_error(web.HTTPBadRequest, "invalid_lang", "lang: required (a language code, or null)")
    lang = body["lang"]
    if lang is not None and (not isinstance(lang, str) or lang not in i18n.LANGUAGES):
        raise api_error(web.HTTPBadRequest, "invalid_lang",
                        f"lang: one of {', '.join(i18n.LANGUAGES)}, or null for the browser's language")
    if who.kind != "session":
        raise api_error(web.HTTPConflict, "not_a_user", "only signed-in users have preferences (this is a token)")
    previous = await access.db.call(access.db.language, who.name)
    await access.db.call(access.db.set_language, who.name, lang)
    audit(request, "user.preferences", lang=lang, previous_lang=previous)
    return web.json_response(await _me_json(request, who))


# -- the audit log --------------------------------------------------------------------------


async def read_audit(request: web.Request) -> web.Response:
    access = request.app[ACCESS]
    who = identity(request)
    limit = params.integer(request, "limit", 1000, 1, _MAX_AUDIT_ENTRIES)
    since, until = params.time_range(request.query.get("since"), request.query.get("until"), None,
                                     "since", "until", required=False)
    query = AuditQuery(
        actor=request.query.get("user") or None, action=request.query.get("action") or None,
        since=since, until=until, limit=limit, cameras=who.cameras if who is not None else None,
    )
    entries = await access.audit.db.call(access.audit.query, query)
    audit(request, "audit.read", filter_user=query.actor, filter_action=query.action, since=iso(query.since),
          until=iso(query.until), returned=len(entries))
    return web.json_response({"entries": [entry.json() for entry in entries]})
