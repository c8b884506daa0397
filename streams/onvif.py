"""A supervised ONVIF link to one camera: its clock, and its own events (PullPoint).

Runs on the event loop beside the camera's RTSP source and never touches it:
recording does not wait for, nor depend on, anything here.  One session is:
connect (``GetServices``, with the WS-Security clock compensation of
onvif-zeep-async so a camera whose clock is off still accepts us), read the
camera's clock (``GetSystemDateAndTime``, unauthenticated as ONVIF allows; the
offset is measured against the midpoint of the round trip), subscribe to its
events (``CreatePullPointSubscription``) and long-poll ``PullMessages``,
re-reading the clock every ``onvif.clock_check_seconds`` and renewing the
subscription before it lapses.  Any failure — a timeout, a SOAP fault, wrong
credentials, an answer that does not parse, a subscription the camera forgot
because it rebooted — ends the session with a reason and a secret-free
message; the next session (after capped exponential backoff) connects and
subscribes anew, so events keep coming after a camera reboot.

What the link learns is reported through callbacks (``on_clock``,
``on_event``, ``on_state``) and a :class:`OnvifStatus` snapshot; turning it
into alarms is :mod:`nvr.health.onvif_health`'s job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import importlib
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nvr.base import secrets
from nvr.base.config import Backoff, Onvif
from streams.rtsp_source import SourceState

log = logging.getLogger(__name__)

_PULLPOINT_NS = "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription"
_EVENTS_NS = "http://www.onvif.org/ver10/events/wsdl"
# Profile G: a camera with edge storage lists both (streams/edge_storage.py uses them).
SEARCH_NS = "http://www.onvif.org/ver10/search/wsdl"
REPLAY_NS = "http://www.onvif.org/ver10/replay/wsdl"
_SUBSCRIPTION_SECONDS = 120  # asked for; renewed at half-life
_PULL_SECONDS = 20  # one long poll
_MESSAGE_LIMIT = 100
_MAX_MESSAGES = 1000  # read of one answer, whatever the camera sends despite the limit
# ONVIF clocks tick in whole seconds: the camera's true time lies in [s, s+1).
_CLOCK_RESOLUTION = 1.0
# The largest answer read from a camera: a PullMessages answer of 1,000 events is a few hundred kB. The
# library reads whole bodies with no limit, so without this a hostile device could exhaust memory.
MAX_ANSWER_BYTES = 4 << 20


# The link's states are the RTSP source's: connecting, online, offline.
LinkState = SourceState


class LinkReason(StrEnum):
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth_failed"
    SOAP_FAULT = "soap_fault"
    BAD_ANSWER = "bad_answer"
    NO_EVENTS = "no_events"  # online, but the camera offers no PullPoint events
    STOPPED = "stopped"


class EventKind(StrEnum):
    TAMPER = "tamper"
    VIDEO_LOSS = "video_loss"
    DIGITAL_INPUT = "digital_input"
    MOTION = "motion"
    OTHER = "other"


# Topic fragments as cameras name them (ONVIF core spec topics and the common vendor ones).
_KINDS: tuple[tuple[str, EventKind], ...] = (
    ("globalscenechange", EventKind.TAMPER),
    ("tamper", EventKind.TAMPER),
    ("signalloss", EventKind.VIDEO_LOSS),
    ("videoloss", EventKind.VIDEO_LOSS),
    ("digitalinput", EventKind.DIGITAL_INPUT),
    ("digital_input", EventKind.DIGITAL_INPUT),
    ("motion", EventKind.MOTION),
)
_STATE_ITEMS = ("State", "IsTamper", "LogicalState", "IsMotion", "IsInside", "Value", "Active")


@dataclass(frozen=True, slots=True)
class CameraEvent:
    """One notification from the camera, in its own words."""

    topic: str
    kind: EventKind
    active: bool | None  # the state item's value; None when the message carries none
    source: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    camera_time: float | None = None  # UtcTime, on the camera's clock
    operation: str | None = None  # Initialized / Changed / Deleted

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What identifies the thing whose state this is (one input among several)."""
        return self.topic, tuple(sorted(self.source.items()))

    def details(self) -> dict[str, Any]:
        return {"topic": self.topic, "source": dict(self.source), "data": dict(self.data),
                "camera_time": self.camera_time, "operation": self.operation}


@dataclass(frozen=True, slots=True)
class OnvifStatus:
    state: LinkState
    reason: LinkReason | None
    message: str | None
    clock_offset_seconds: float | None
    clock_rtt_seconds: float | None
    clock_checked_at: float | None
    events_subscribed: bool
    events_received: int
    sessions: int
    edge_storage: bool | None = None  # the camera offers ONVIF search and replay (Profile G); None: not known yet


class _LinkFailed(Exception):
    def __init__(self, reason: LinkReason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def parse_event(message: Any) -> CameraEvent | None:
    """A ``wsnt:NotificationMessage`` as zeep parsed it, or None when it is not one we can read."""
    try:
        topic_el = getattr(message, "Topic", None)
        topic = str(getattr(topic_el, "_value_1", None) or "").strip()
        body = getattr(getattr(message, "Message", None), "_value_1", None)
    except (AttributeError, TypeError):
        return None
    if not topic or body is None:
        return None
    source = _items(getattr(body, "Source", None))
    data = _items(getattr(body, "Data", None))
    lowered = topic.lower()
    kind = next((k for fragment, k in _KINDS if fragment in lowered), EventKind.OTHER)
    active = None
    for name in _STATE_ITEMS:
        if name in data:
            active = data[name].strip().lower() in ("true", "1", "on", "active")
            break
    stamp = getattr(body, "UtcTime", None)
    camera_time = stamp.timestamp() if isinstance(stamp, dt.datetime) and stamp.tzinfo else None
    operation = getattr(body, "PropertyOperation", None)
    return CameraEvent(topic, kind, active, source, data, camera_time, str(operation) if operation else None)


def _items(part: Any) -> dict[str, str]:
    items: dict[str, str] = {}
    for item in getattr(part, "SimpleItem", None) or []:
        name, value = getattr(item, "Name", None), getattr(item, "Value", None)
        if isinstance(name, str) and value is not None:
            items[name[:200]] = str(value)[:500]
    return items


@dataclass(frozen=True, slots=True)
class DeviceAddress:
    """What onvif-zeep-async needs of a device URL: host (``https://`` kept), port and the credentials."""

    host: str
    port: int
    user: str
    password: str

    @classmethod
    def of(cls, url: str) -> DeviceAddress:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        # onvif-zeep-async signs every authenticated request; a camera without accounts ignores an empty token.
        return cls(f"https://{host}" if parts.scheme == "https" else host, port,
                   urllib.parse.unquote(parts.username) if parts.username else "",
                   urllib.parse.unquote(parts.password) if parts.password else "")


class OnvifLink:
    """One camera's ONVIF device service, supervised until :meth:`stop`."""

    def __init__(self, name: str, config: Onvif, backoff: Backoff, *,
                 on_clock: Callable[[OnvifLink], None] | None = None,
                 on_event: Callable[[OnvifLink, CameraEvent], None] | None = None,
                 on_state: Callable[[OnvifLink], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.backoff = backoff
        self.on_clock, self.on_event, self.on_state = on_clock, on_event, on_state
        self._address = DeviceAddress.of(config.url)
        self.state = LinkState.CONNECTING
        self.reason: LinkReason | None = None
        self.message: str | None = None
        self.clock_offset_seconds: float | None = None
        self.clock_rtt_seconds: float | None = None
        self.clock_checked_at: float | None = None
        self.events_subscribed = False
        self.events_received = 0
        self.sessions = 0
        self.edge_storage: bool | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    def status(self) -> OnvifStatus:
        return OnvifStatus(self.state, self.reason, self.message, self.clock_offset_seconds, self.clock_rtt_seconds,
                           self.clock_checked_at, self.events_subscribed, self.events_received, self.sessions,
                           self.edge_storage)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        delay = self.backoff.backoff_initial_seconds
        failures = 0
        while not self._stopping:
            self._set_state(LinkState.CONNECTING, None, None)
            started = time.monotonic()
            try:
                await self._session()
                reason, message = LinkReason.STOPPED, "stopped"
            except _LinkFailed as exc:
                reason, message = exc.reason, exc.message
            except Exception as exc:  # noqa: BLE001 - a link failure never ends the supervisor's task
                reason, message = classify(exc)
                if reason is LinkReason.BAD_ANSWER:
                    log.debug("[%s] ONVIF session failed", self.name, exc_info=True)
            self.events_subscribed = False
            if self._stopping:
                break
            if time.monotonic() - started > 2 * self.backoff.backoff_max_seconds:
                delay, failures = self.backoff.backoff_initial_seconds, 0  # it had worked for a while
            failures += 1
            self._set_state(LinkState.OFFLINE, reason, message)
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(level, "[%s] ONVIF %s: %s; retrying in %.1f s", self.name, reason.value, self.message, delay)
            await self._sleep(delay)
            delay = min(delay * 2, self.backoff.backoff_max_seconds)
        self._set_state(LinkState.OFFLINE, LinkReason.STOPPED, "stopped")

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            pass

    async def _bounded(self, call: Any) -> Any:
        async with asyncio.timeout(self.config.timeout_seconds):
            return await call

    # -- one session ---------------------------------------------------------------------

    async def _session(self) -> None:
        # Heavy (zeep, lxml): imported off the loop, and only for a camera that has ONVIF.
        onvif = await asyncio.to_thread(importlib.import_module, "onvif")
        self.sessions += 1
        address = self._address
        camera = _bounded_camera_class(onvif)(address.host, address.port, address.user, address.password,
                                              no_cache=True, adjust_time=True)
        try:
            await self._bounded(camera.update_xaddrs())
            self.edge_storage = SEARCH_NS in camera.xaddrs and REPLAY_NS in camera.xaddrs
            device = await camera.create_devicemgmt_service()
            await self._check_clock(device)
            # Authenticated: wrong credentials are found here, not only when events are asked for.
            info = await self._bounded(device.GetDeviceInformation())
            log.info("[%s] ONVIF online: %s %s, firmware %s", self.name, _text(info, "Manufacturer"),
                     _text(info, "Model"), _text(info, "FirmwareVersion"))
            pullpoint = subscription = None
            if self.config.events and _EVENTS_NS in camera.xaddrs:
                pullpoint, subscription = await self._subscribe(camera)
            self._set_state(LinkState.ONLINE, None if pullpoint or not self.config.events else LinkReason.NO_EVENTS,
                            None if pullpoint or not self.config.events else "the camera offers no PullPoint events")
            next_clock = time.monotonic() + self.config.clock_check_seconds
            renew_at = time.monotonic() + _SUBSCRIPTION_SECONDS / 2
            while not self._stopping:
                if time.monotonic() >= next_clock:
                    await self._check_clock(device)
                    next_clock = time.monotonic() + self.config.clock_check_seconds
                if pullpoint is None:
                    await self._sleep(next_clock - time.monotonic())
                    continue
                if subscription is not None and time.monotonic() >= renew_at:
                    await self._bounded(subscription.Renew({"TerminationTime": f"PT{_SUBSCRIPTION_SECONDS}S"}))
                    renew_at = time.monotonic() + _SUBSCRIPTION_SECONDS / 2
                await self._pull(pullpoint, min(_PULL_SECONDS, max(next_clock - time.monotonic(), 1.0)))
        finally:
            if self.events_subscribed and subscription is not None:
                try:
                    async with asyncio.timeout(2):
                        await subscription.Unsubscribe()
                except Exception:  # noqa: BLE001 - the camera drops it at its termination time anyway
                    log.debug("[%s] unsubscribe failed", self.name)
            self.events_subscribed = False
            await camera.close()

    async def _check_clock(self, device: Any) -> None:
        sent_wall, sent = time.time(), time.monotonic()
        answer = await self._bounded(device.authless_GetSystemDateAndTime())
        rtt = time.monotonic() - sent
        try:
            utc = answer.UTCDateTime
            camera_time = dt.datetime(utc.Date.Year, utc.Date.Month, utc.Date.Day, utc.Time.Hour, utc.Time.Minute,
                                      utc.Time.Second, tzinfo=dt.UTC).timestamp()
        except (AttributeError, TypeError, ValueError, OverflowError):
            raise _LinkFailed(LinkReason.BAD_ANSWER, "GetSystemDateAndTime has no valid UTCDateTime") from None
        offset = camera_time + _CLOCK_RESOLUTION / 2 - (sent_wall + rtt / 2)
        self.clock_offset_seconds = round(offset, 3)
        self.clock_rtt_seconds = round(rtt, 4)
        self.clock_checked_at = time.time()
        log.debug("[%s] camera clock offset %+.3f s (round trip %.1f ms)", self.name, offset, rtt * 1000)
        if self.on_clock is not None:
            self.on_clock(self)

    async def _subscribe(self, camera: Any) -> tuple[Any, Any]:
        events = await camera.create_events_service()
        answer = await self._bounded(events.CreatePullPointSubscription(
            {"InitialTerminationTime": f"PT{_SUBSCRIPTION_SECONDS}S"}))
        try:
            address = str(answer.SubscriptionReference.Address._value_1)
        except AttributeError:
            raise _LinkFailed(LinkReason.BAD_ANSWER, "CreatePullPointSubscription gave no address") from None
        parts = urllib.parse.urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _LinkFailed(LinkReason.BAD_ANSWER, "CreatePullPointSubscription gave an address that is not http(s)")
        camera.xaddrs[_PULLPOINT_NS] = address
        pullpoint = await camera.create_pullpoint_service()
        subscription = await camera.create_subscription_service("PullPointSubscription")
        self.events_subscribed = True
        log.info("[%s] subscribed to the camera's events", self.name)
        return pullpoint, subscription

    async def _pull(self, pullpoint: Any, seconds: float) -> None:
        # A long poll (cheap while nothing happens), no longer than until the next clock reading, that
        # stop() cuts short.
        pull = asyncio.ensure_future(pullpoint.PullMessages(
            {"Timeout": dt.timedelta(seconds=round(seconds)), "MessageLimit": _MESSAGE_LIMIT}))
        stopped = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((pull, stopped), timeout=seconds + self.config.timeout_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not pull.done():
                pull.cancel()
        if not pull.done() or pull.cancelled():
            if self._stopping:
                return
            raise TimeoutError
        answer = pull.result()
        latest: dict[tuple[str, tuple[tuple[str, str], ...]], CameraEvent] = {}
        for message in (getattr(answer, "NotificationMessage", None) or [])[:_MAX_MESSAGES]:
            event = parse_event(message)
            if event is None:
                log.debug("[%s] an event message that does not parse was skipped", self.name)
                continue
            self.events_received += 1
            # A flapping input or a flood: per thing, only its last state in this batch counts (in order).
            latest.pop(event.key, None)
            latest[event.key] = event
        for event in latest.values():
            if self.on_event is not None:
                self.on_event(self, event)

    def _set_state(self, state: LinkState, reason: LinkReason | None, message: str | None) -> None:
        message = secrets.redact(message) if message else None
        if (state, reason, message) == (self.state, self.reason, self.message):
            return
        self.state, self.reason, self.message = state, reason, message
        if self.on_state is not None:
            self.on_state(self)


def _text(obj: Any, name: str) -> str:
    value = getattr(obj, name, None)
    return secrets.redact(str(value))[:100] if value is not None else "?"


class AnswerTooLarge(Exception):
    """A camera's answer went over :data:`MAX_ANSWER_BYTES`; the connection was closed without reading on."""


@functools.cache
def _bounded_camera_class(onvif: Any) -> type:
    """``onvif.ONVIFCamera`` whose every service reads at most :data:`MAX_ANSWER_BYTES` of an answer.

    The library makes one aiohttp session per service and reads each answer whole; the bound is put
    on each session's response class as the service is made (the only place it can go in).
    """
    import aiohttp

    class BoundedResponse(aiohttp.ClientResponse):
        async def read(self) -> bytes:
            if self._body is None:
                if (self.content_length or 0) > MAX_ANSWER_BYTES:
                    self.close()
                    raise AnswerTooLarge(f"the camera announced a {self.content_length}-byte answer")
                chunks, size = [], 0
                try:
                    async for chunk in self.content.iter_any():
                        size += len(chunk)
                        if size > MAX_ANSWER_BYTES:
                            raise AnswerTooLarge(f"the camera's answer went over {MAX_ANSWER_BYTES >> 20} MB")
                        chunks.append(chunk)
                except BaseException:
                    self.close()
                    raise
                self._body = b"".join(chunks)
            return await super().read()

    class BoundedCamera(onvif.ONVIFCamera):
        async def create_onvif_service(self, *args: Any, **kwargs: Any) -> Any:
            service = await super().create_onvif_service(*args, **kwargs)
            session = getattr(service, "_session", None)
            if session is None or not hasattr(session, "_response_class"):
                raise RuntimeError("onvif-zeep-async changed: its services have no aiohttp session to bound")
            session._response_class = BoundedResponse
            return service

    return BoundedCamera


def classify(exc: BaseException) -> tuple[LinkReason, str]:
    """An exception from onvif-zeep-async, zeep or aiohttp as a reason and a message without secrets."""
    import aiohttp
    import zeep.exceptions
    from onvif.exceptions import ONVIFError

    if isinstance(exc, AnswerTooLarge):
        return LinkReason.BAD_ANSWER, str(exc)
    if isinstance(exc, zeep.exceptions.Fault):
        text = f"{exc.message or ''} {exc.subcodes or ''} {exc.code or ''}".lower()
        if "notauthorized" in text.replace(" ", "") or "not authorized" in text or "unauthorized" in text:
            return LinkReason.AUTH_FAILED, "the camera rejected the credentials"
        return LinkReason.SOAP_FAULT, secrets.redact(f"SOAP fault: {(exc.message or 'no reason')[:200]}")
    if isinstance(exc, TimeoutError):
        return LinkReason.UNREACHABLE, "timed out"
    if isinstance(exc, zeep.exceptions.TransportError):
        if exc.status_code in (401, 403):
            return LinkReason.AUTH_FAILED, "the camera rejected the credentials"
        if 200 <= (exc.status_code or 0) < 300:
            return LinkReason.BAD_ANSWER, f"the device service's answer is not SOAP (HTTP {exc.status_code})"
        return LinkReason.UNREACHABLE, f"the device service answered HTTP {exc.status_code}"
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status in (401, 403):
            return LinkReason.AUTH_FAILED, "the camera rejected the credentials"
        return LinkReason.UNREACHABLE, f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return LinkReason.UNREACHABLE, secrets.redact(type(exc).__name__ + (f": {exc}" if str(exc) else ""))[:200]
    if isinstance(exc, ONVIFError):
        text = str(exc)
        if "Unauthorized" in text or "NotAuthorized" in text or "401" in text:
            return LinkReason.AUTH_FAILED, "the camera rejected the credentials"
        if "timed out" in text.lower() or "Cannot connect" in text or "connect" in text.lower():
            return LinkReason.UNREACHABLE, secrets.redact(text)[:200]
        return LinkReason.BAD_ANSWER, secrets.redact(text)[:200]
    if isinstance(exc, zeep.exceptions.Error):
        return LinkReason.BAD_ANSWER, secrets.redact(f"the camera's answer does not parse: {type(exc).__name__}")
    return LinkReason.BAD_ANSWER, secrets.redact(f"{type(exc).__name__}: {exc}")[:200]
