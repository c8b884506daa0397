"""Following one station: its cameras, its open alarms and whether it can be reached, and why not.

A :class:`StationLink` runs two named tasks of its own:

- the **poller** reads ``GET /api/cameras`` and ``GET /api/events?open=true``
  every ``follow.poll_seconds``; its outcome decides the station's
  reachability and, when it fails, the precise reason (``unauthorized``,
  ``forbidden``, ``tls_error``, ``connection_refused``, ``timeout``,
  ``unresolvable``, ``network_error``, ``bad_response``, ``http_error``);
  after a failure it retries with capped exponential backoff;
- the **alarm feed** follows ``GET /api/events/stream`` (Server-Sent Events)
  so that an alarm reaches the console as soon as the station opens it, and
  reconnects with its own capped backoff.

Every request is bounded by ``follow.timeout_seconds`` (the feed by
``follow.stream_idle_seconds`` of silence), so a slow or dead station only
ever delays its own link.  The token goes only into the ``Authorization``
header; it is registered as a secret, and no message built here contains it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from central.config import Follow, StationLinkConfig
from central.witness import Witness
from nvr.base import secrets
from nvr.base.timeutil import iso
from web.schema import AlarmView, CameraView, EventsView

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20
# SSE alarm changes kept to re-apply on top of a poll that started before them.
_CHANGE_MEMORY_SECONDS = 120.0


class Reachability(StrEnum):
    CONNECTING = "connecting"
    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"


class Reason(StrEnum):
    UNAUTHORIZED = "unauthorized"  # 401: wrong, unknown or revoked token
    FORBIDDEN = "forbidden"  # 403: the token's role lacks a permission
    TLS_ERROR = "tls_error"  # certificate not trusted, expired, wrong host; handshake failure
    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    UNRESOLVABLE = "unresolvable"  # the host name does not resolve
    NETWORK_ERROR = "network_error"  # reset, unreachable network, disconnected mid-answer
    BAD_RESPONSE = "bad_response"  # not JSON, or not the shape of an nvr station's answer
    HTTP_ERROR = "http_error"  # any other HTTP error status


@dataclass(frozen=True, slots=True)
class Problem:
    reason: Reason
    message: str

    def json(self) -> dict[str, str]:
        return {"reason": self.reason.value, "message": self.message}


class StationError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(reason, secrets.redact(message))

    @classmethod
    def of(cls, problem: Problem) -> StationError:
        return cls(problem.reason, problem.message)


# -- what a station answers: web.schema, the models the station builds its answers from -------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


_CAMERAS = TypeAdapter(list[CameraView])


class StationBacklog(_Lenient):
    segments: int = 0
    bytes: int = 0
    oldest_age_seconds: float = 0.0
    alarm_after_seconds: float | None = None


class StationArchive(_Lenient):
    """The station's off-site archive as its ``GET /api/archive`` says (issue 19)."""

    enabled: bool = False
    state: str | None = None
    reason: str | None = None
    message: str | None = None
    backlog: StationBacklog | None = None


_ARCHIVE = TypeAdapter(StationArchive)


class _CheckpointRow(_Lenient):
    seq: int
    body: str
    signature: str


class _Checkpoints(_Lenient):
    station: str
    fingerprint: str
    public_key_pem: str
    checkpoints: list[_CheckpointRow]


def classify(exc: BaseException, timeout: float) -> Problem:
    """A precise, secret-free reason for a failed request."""
    if isinstance(exc, StationError):
        return exc.problem
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        detail = getattr(cert_error, "verify_message", None) or str(cert_error)
        return Problem(Reason.TLS_ERROR, f"the station's certificate is not accepted: {detail}")
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return Problem(Reason.TLS_ERROR, f"TLS handshake failed: {_short(exc)}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return Problem(Reason.CONNECTION_REFUSED, "connection refused (nothing listens at the station's address)")
        if isinstance(os_error, socket.gaierror):
            return Problem(Reason.UNRESOLVABLE, f"the host name does not resolve ({os_error.strerror})")
        if isinstance(os_error, TimeoutError):
            return Problem(Reason.TIMEOUT, f"no connection within {timeout:g} s")
        return Problem(Reason.NETWORK_ERROR, f"cannot connect: {os_error.strerror or _short(os_error)}")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return Problem(Reason.TIMEOUT, f"no answer within {timeout:g} s")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Problem(Reason.NETWORK_ERROR, "the station closed the connection without answering")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Problem(Reason.BAD_RESPONSE, "the answer was cut off or malformed")
    if isinstance(exc, aiohttp.ClientResponseError):  # a malformed HTTP answer
        return Problem(Reason.BAD_RESPONSE, f"not a valid HTTP answer ({exc.status}: {_short(exc.message)})")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return Problem(Reason.NETWORK_ERROR, _short(exc))
    return Problem(Reason.NETWORK_ERROR, f"unexpected error: {type(exc).__name__}")


def _short(exc: object) -> str:
    return secrets.redact(str(exc) or type(exc).__name__)[:300]


def status_problem(status: int, body: bytes) -> Problem:
    code = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            code = f" ({parsed['error'][:64]})"
    except ValueError:
        pass
    if status == 401:
        return Problem(Reason.UNAUTHORIZED, f"the station refused the token: HTTP 401{code}; wrong, unknown or revoked")
    if status == 403:
        return Problem(Reason.FORBIDDEN, f"the station's token may not do this: HTTP 403{code}; give it role central")
    return Problem(Reason.HTTP_ERROR, f"the station answered HTTP {status}{code}")


def tls_context(config: StationLinkConfig) -> ssl.SSLContext | None:
    if not config.url.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(slots=True)
class StationState:
    """What the console knows about one station; replaced field by field on the loop only."""

    reachability: Reachability = Reachability.CONNECTING
    problem: Problem | None = None
    since: float = 0.0
    last_ok_at: float | None = None
    cameras: tuple[CameraView, ...] = ()
    alarms: dict[str, AlarmView] | None = None
    feed_connected: bool = False
    feed_problem: Problem | None = None
    archive: StationArchive | None = None  # None: not known (an older station, or the token may not read it)


ChangeListener = Callable[["StationLink", str, Any], None]


class StationLink:
    """Follows one station; ``on_change(link, kind, payload)`` is called on every change (loop thread)."""

    def __init__(self, config: StationLinkConfig, follow: Follow, console_id: str, on_change: ChangeListener,
                 witness: Witness | None = None) -> None:
        self.config = config
        self.witness = witness
        self.checkpoints_collected = 0
        self._checkpoint_problem: str | None = None
        self.follow = follow
        self.console_id = console_id
        self.on_change = on_change
        self.state = StationState(since=time.time())
        self.state.alarms = {}
        self.polls_ok = 0
        self.polls_failed = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._changes: list[tuple[float, AlarmView]] = []

    @property
    def id(self) -> str:
        return self.config.id

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        try:
            context = tls_context(self.config)
        except (OSError, ssl.SSLError) as exc:
            # A bad 'ca' file: the station is shown with the reason, nothing else is affected.
            context = None
            self._set_unreachable(Problem(Reason.TLS_ERROR, f"cannot load ca {self.config.ca}: {_short(exc)}"))
            return
        connector = aiohttp.TCPConnector(ssl=context if context is not None else True, limit=8,
                                         ttl_dns_cache=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"Authorization": f"Bearer {self.config.token}", "User-Agent": f"nvr-console/{self.console_id}"},
            raise_for_status=False,
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._poll_loop(), name=f"station-poll:{self.id}"),
            loop.create_task(self._feed_loop(), name=f"station-feed:{self.id}"),
        ]
        if self.witness is not None:
            self._tasks.append(loop.create_task(self._checkpoint_loop(), name=f"station-checkpoints:{self.id}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests -------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise StationError(Reason.TLS_ERROR, self.state.problem.message if self.state.problem else "not started")
        return self._session

    async def get_json(self, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=self.follow.timeout_seconds)
        async with self.session.get(self.config.url + path, timeout=timeout, allow_redirects=False) as resp:
            body = await _read_all(resp, MAX_BODY_BYTES + 1)
            if resp.status != 200:
                raise StationError.of(status_problem(resp.status, body))
            if len(body) > MAX_BODY_BYTES:
                raise StationError(Reason.BAD_RESPONSE, f"{path}: the answer is larger than {MAX_BODY_BYTES} bytes")
            try:
                return json.loads(body)
            except ValueError:
                ctype = resp.headers.get("Content-Type", "?")[:60]
                raise StationError(Reason.BAD_RESPONSE, f"{path}: the answer is not JSON ({ctype})") from None

    async def request(self, method: str, path: str, *, data: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One bounded request for a relay (WHEP); raises StationError with a precise reason."""
        timeout = aiohttp.ClientTimeout(total=self.follow.timeout_seconds)
        try:
            async with self.session.request(method, self.config.url + path, data=data, headers=headers,
                                            timeout=timeout, allow_redirects=False) as resp:
                body = await _read_all(resp, MAX_BODY_BYTES)
                return resp.status, dict(resp.headers), body
        except StationError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reason
            problem = classify(exc, self.follow.timeout_seconds)
            raise StationError(problem.reason, problem.message) from None

    def central_headers(self, user: str) -> dict[str, str]:
        """Who, at the console, a relayed request is for (honoured by stations for role-central tokens)."""
        return {"X-NVR-Via-Console": self.console_id, "X-NVR-Central-User": user}

    # -- the witness: collecting signed checkpoints (central/witness.py) --------------------

    async def _checkpoint_loop(self) -> None:
        assert self.witness is not None
        while True:
            try:
                await self.collect_checkpoints()
                self._note_checkpoint_problem(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                problem = classify(exc, self.follow.timeout_seconds)
                self._note_checkpoint_problem(f"{problem.reason.value}: {problem.message}")
            await asyncio.sleep(self.follow.checkpoint_seconds)

    async def collect_checkpoints(self) -> int:
        """Fetch every checkpoint newer than the last one kept, check and keep them; returns how many."""
        witness = self.witness
        assert witness is not None
        stored_total = 0
        while True:
            after = await witness.call(witness.last_seq, self.id)
            page = _parse(TypeAdapter(_Checkpoints), await self.get_json(f"/api/checkpoints?after={after}&limit=500"),
                          "/api/checkpoints")
            if page.station != self.id:
                raise StationError(Reason.BAD_RESPONSE, f"/api/checkpoints: checkpoints of station {page.station!r}")
            try:
                previous = await witness.call(witness.record_key, self.id, page.public_key_pem, time.time())
            except ValueError as exc:
                raise StationError(Reason.BAD_RESPONSE, f"/api/checkpoints: unusable station key ({exc})") from None
            if previous is not None:
                log.warning("[%s] the station's signing key changed from %s to %s; both are kept in the keyring",
                            self.id, previous, page.fingerprint)
            rows = [(c.seq, c.body, c.signature) for c in page.checkpoints]
            stored, problems = await witness.call(witness.add_checkpoints, self.id, page.public_key_pem, rows,
                                                  time.time())
            for problem in problems[:5]:
                log.warning("[%s] checkpoint refused: %s", self.id, secrets.redact(problem))
            stored_total += stored
            self.checkpoints_collected += stored
            if len(page.checkpoints) < 500 or not stored:
                return stored_total

    def _note_checkpoint_problem(self, problem: str | None) -> None:
        if problem == self._checkpoint_problem:
            if problem is not None:
                log.debug("[%s] checkpoints still not collected: %s", self.id, problem)
            return
        if problem is None:
            log.info("[%s] collecting checkpoints again", self.id)
        else:
            log.warning("[%s] cannot collect the station's checkpoints: %s", self.id, problem)
        self._checkpoint_problem = problem

    # -- the poller -----------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        backoff = self.follow.backoff_initial_seconds
        while True:
            started = time.monotonic()
            try:
                cameras = _parse(_CAMERAS, await self.get_json("/api/cameras"), "/api/cameras")
                events = _parse(TypeAdapter(EventsView), await self.get_json("/api/events?open=true"),
                                "/api/events").events
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is a reason shown on the console
                self.polls_failed += 1
                problem = classify(exc, self.follow.timeout_seconds)
                if problem.reason is Reason.NETWORK_ERROR and not isinstance(exc, (StationError, aiohttp.ClientError,
                                                                                   OSError)):
                    log.warning("[%s] unexpected error while polling the station", self.id, exc_info=True)
                self._set_unreachable(problem)
                delay = backoff
                backoff = min(backoff * 2, self.follow.backoff_max_seconds)
            else:
                self.polls_ok += 1
                self._apply_poll(tuple(cameras), events, started, await self._poll_archive())
                backoff = self.follow.backoff_initial_seconds
                delay = self.follow.poll_seconds
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def _poll_archive(self) -> StationArchive | None:
        """The archive's backlog: best effort, a station that cannot tell is still followed."""
        try:
            archive: StationArchive = _parse(_ARCHIVE, await self.get_json("/api/archive"), "/api/archive")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - shown as "unknown" on the console
            log.debug("[%s] no archive state: %s", self.id, exc)
            return None
        return archive

    def _apply_poll(self, cameras: tuple[CameraView, ...], events: list[AlarmView], started: float,
                    archive: StationArchive | None = None) -> None:
        state = self.state
        # Alarm changes from the feed that arrived after this poll started are newer than its answer.
        alarms = {a.id: a for a in events if a.open}
        cutoff = time.monotonic() - _CHANGE_MEMORY_SECONDS
        self._changes = [(t, a) for t, a in self._changes if t >= cutoff]
        for at, alarm in self._changes:
            if at >= started:
                _apply_alarm(alarms, alarm)
        changed = cameras != state.cameras or alarms != state.alarms or archive != state.archive
        state.cameras = cameras
        state.alarms = alarms
        state.archive = archive
        state.last_ok_at = time.time()
        if state.reachability is not Reachability.REACHABLE:
            was = state.problem
            state.reachability, state.problem, state.since = Reachability.REACHABLE, None, time.time()
            if was is not None:
                log.warning("[%s] station reachable again: %d camera(s), %d open alarm(s)", self.id, len(cameras),
                            len(alarms))
            else:
                log.info("[%s] station reachable: %d camera(s), %d open alarm(s)", self.id, len(cameras), len(alarms))
            changed = True
        if changed:
            self.on_change(self, "station", None)

    def _set_unreachable(self, problem: Problem) -> None:
        state = self.state
        if state.reachability is Reachability.UNREACHABLE and state.problem == problem:
            log.debug("[%s] station still unreachable: %s: %s", self.id, problem.reason.value, problem.message)
            return
        if state.reachability is Reachability.UNREACHABLE and state.problem is not None \
                and state.problem.reason is problem.reason:
            state.problem = problem  # same reason, new detail: no new warning
            log.debug("[%s] station unreachable: %s: %s", self.id, problem.reason.value, problem.message)
        else:
            log.warning("[%s] station unreachable: %s: %s (retrying with backoff up to %g s)", self.id,
                        problem.reason.value, problem.message, self.follow.backoff_max_seconds)
            state.problem = problem
            if state.reachability is not Reachability.UNREACHABLE:
                state.since = time.time()
            state.reachability = Reachability.UNREACHABLE
        self.on_change(self, "station", None)

    # -- the alarm feed -------------------------------------------------------------------

    async def _feed_loop(self) -> None:
        backoff = self.follow.backoff_initial_seconds
        while True:
            try:
                await self._follow_feed()
                problem = Problem(Reason.NETWORK_ERROR, "the station ended the alarm feed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                problem = classify(exc, self.follow.stream_idle_seconds)
            if self.state.feed_connected:
                backoff = self.follow.backoff_initial_seconds
            self._feed_down(problem)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.follow.backoff_max_seconds)

    async def _follow_feed(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.follow.timeout_seconds,
                                        sock_read=self.follow.stream_idle_seconds)
        async with self.session.get(self.config.url + "/api/events/stream", timeout=timeout,
                                    allow_redirects=False, headers={"Accept": "text/event-stream"}) as resp:
            if resp.status != 200:
                body = await resp.content.read(4096)
                raise StationError.of(status_problem(resp.status, body))
            if resp.content_type != "text/event-stream":
                raise StationError(Reason.BAD_RESPONSE, f"the alarm feed is not an event stream ({resp.content_type})")
            self._feed_up()
            event: str = ""
            data: list[str] = []
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        self._feed_event(event, "\n".join(data))
                    event, data = "", []
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)

    def _feed_up(self) -> None:
        state = self.state
        if state.feed_problem is not None:
            log.info("[%s] alarm feed connected again", self.id)
        else:
            log.info("[%s] alarm feed connected", self.id)
        state.feed_connected, state.feed_problem = True, None
        self._wake.set()  # a station that answers again: poll it now, not after the backoff
        self.on_change(self, "station", None)

    def _feed_down(self, problem: Problem) -> None:
        state = self.state
        if state.feed_problem != problem:
            level = logging.WARNING if state.feed_problem is None else logging.DEBUG
            log.log(level, "[%s] alarm feed lost: %s: %s (reconnecting)", self.id, problem.reason.value,
                    problem.message)
        was_connected = state.feed_connected
        state.feed_connected, state.feed_problem = False, problem
        if was_connected:
            self.on_change(self, "station", None)

    def _feed_event(self, event: str, data: str) -> None:
        if event not in ("alarm.open", "alarm.opened", "alarm.closed"):
            return
        try:
            body = json.loads(data)
            alarm = AlarmView.model_validate(body["alarm"])
        except (ValueError, KeyError, TypeError, ValidationError):
            log.debug("[%s] ignoring a malformed %s event", self.id, event)
            return
        if event == "alarm.closed" and alarm.open:
            alarm = alarm.model_copy(update={"open": False})
        self._changes.append((time.monotonic(), alarm))
        assert self.state.alarms is not None
        before = self.state.alarms.get(alarm.id)
        _apply_alarm(self.state.alarms, alarm)
        if before != self.state.alarms.get(alarm.id):
            self.on_change(self, "opened" if alarm.open else "closed", alarm)

    # -- views ----------------------------------------------------------------------------

    def open_alarms(self) -> list[AlarmView]:
        return list((self.state.alarms or {}).values())

    def json_state(self) -> dict[str, Any]:
        state = self.state
        return {
            "state": state.reachability.value,
            "reachable": state.reachability is Reachability.REACHABLE,
            "reason": state.problem.reason.value if state.problem else None,
            "message": state.problem.message if state.problem else None,
            "since": iso(state.since),
            "last_ok_at": iso(state.last_ok_at),
            "archive": state.archive.model_dump() if state.archive is not None else None,
            "alarm_feed": {
                "connected": state.feed_connected,
                "reason": state.feed_problem.reason.value if state.feed_problem else None,
                "message": state.feed_problem.message if state.feed_problem else None,
            },
        }


async def _read_all(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes: ``content.read(n)`` returns only what has arrived so far, so a
    camera list or an SDP answer split across TCP segments or TLS records would be cut short."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _apply_alarm(alarms: dict[str, AlarmView], alarm: AlarmView) -> None:
    if alarm.open and alarm.closed_at is None:
        alarms[alarm.id] = alarm
    else:
        alarms.pop(alarm.id, None)


def _parse(adapter: TypeAdapter[Any], data: Any, path: str) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise StationError(Reason.BAD_RESPONSE,
                           f"{path}: not an nvr station's answer ({where}: {first['msg']})") from None
