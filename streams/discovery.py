"""Finding cameras: a WS-Discovery probe for ONVIF devices, and reading their profiles and stream URIs.

Used by ``nvr discover`` (run by a technician setting a station up, not by the
daemon).  :func:`probe` sends a WS-Discovery ``Probe`` for
``dn:NetworkVideoTransmitter`` (multicast 239.255.255.250:3702, or unicast to
one address) with the WSDiscovery library and collects the ``ProbeMatch``
answers; answers that are not ONVIF devices with an http(s) device-service
address are left out and counted.  :func:`describe` reads, with credentials,
the device information (manufacturer, model, firmware, serial) and every
media profile's RTSP stream URI via onvif-zeep-async.  :func:`camera_entries`
turns that into ``cameras:`` entries for ``config.yaml`` with the password as a
``${NAME}`` reference, never the password itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import yaml

from nvr.base import secrets
from streams.onvif import classify

log = logging.getLogger(__name__)

_ONVIF_TYPE = ("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter")
_SCOPE_PREFIX = "onvif://www.onvif.org/"


@dataclass(frozen=True, slots=True)
class StreamProfile:
    token: str
    name: str
    uri: str  # without credentials
    width: int = 0
    height: int = 0


@dataclass(slots=True)
class Device:
    """One ONVIF device that answered the probe (and, once described, what it said with credentials)."""

    device_url: str
    address: str  # where the answer came from
    scopes: list[str] = field(default_factory=list)
    manufacturer: str | None = None
    model: str | None = None
    firmware: str | None = None
    serial: str | None = None
    profiles: list[StreamProfile] = field(default_factory=list)
    error: str | None = None

    def scope(self, kind: str) -> str | None:
        for scope in self.scopes:
            if scope.startswith(_SCOPE_PREFIX + kind + "/"):
                return urllib.parse.unquote(scope[len(_SCOPE_PREFIX) + len(kind) + 1:]).replace("_", " ")
        return None


@dataclass(slots=True)
class ProbeResult:
    devices: list[Device]
    ignored: int  # answers that were not usable ONVIF devices


def probe(timeout: float = 3.0, address: str | None = None, port: int = 3702) -> ProbeResult:
    """Blocking: probe for ONVIF devices for ``timeout`` seconds (multicast, or unicast to ``address``)."""
    from wsdiscovery import QName
    from wsdiscovery.discovery import ThreadedWSDiscovery

    # The library warns of every Hello it has no handler for, and its IPv6 thread dies on an IPv4 peer
    # (a traceback on stderr): neither is the technician's business.
    logging.getLogger("wsdiscovery").setLevel(logging.ERROR)
    previous_hook = threading.excepthook

    def quiet(hook_args: threading.ExceptHookArgs) -> None:
        if isinstance(hook_args.exc_value, OSError):
            log.debug("WS-Discovery thread: %s", hook_args.exc_value)
        else:
            previous_hook(hook_args)

    threading.excepthook = quiet
    discovery = ThreadedWSDiscovery()
    discovery.start()
    try:
        services = discovery.searchServices(types=[QName(*_ONVIF_TYPE, "dn")], timeout=timeout,
                                            address=address, port=port if address else None)
    finally:
        discovery.stop()
        threading.excepthook = previous_hook
    devices: dict[str, Device] = {}
    ignored = 0
    for service in services:
        url = next((x for x in (service.getXAddrs() or []) if _usable_url(x)), None)
        if url is None:
            ignored += 1
            continue
        scopes = [str(s.getValue()) if hasattr(s, "getValue") else str(s) for s in service.getScopes() or []]
        host = urllib.parse.urlsplit(url).hostname or "?"
        devices.setdefault(url, Device(device_url=url, address=host, scopes=[s[:300] for s in scopes[:50]]))
    return ProbeResult(sorted(devices.values(), key=lambda d: d.device_url), ignored)


def _usable_url(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 2000 or any(ch.isspace() for ch in value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


async def describe(device: Device, user: str, password: str, timeout: float = 10.0) -> Device:
    """Fill in the device's information and stream profiles; on failure ``device.error`` says why."""
    from onvif import ONVIFCamera

    parts = urllib.parse.urlsplit(device.device_url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        host = f"https://{host}"
    camera = ONVIFCamera(host, parts.port or (443 if parts.scheme == "https" else 80), user, password,
                         no_cache=True, adjust_time=True)
    try:
        async with asyncio.timeout(timeout):
            await camera.update_xaddrs()
            devicemgmt = await camera.create_devicemgmt_service()
            info = await devicemgmt.GetDeviceInformation()
            device.manufacturer = _text(info, "Manufacturer")
            device.model = _text(info, "Model")
            device.firmware = _text(info, "FirmwareVersion")
            device.serial = _text(info, "SerialNumber")
            media = await camera.create_media_service()
            for profile in await media.GetProfiles() or []:
                token = str(getattr(profile, "token", "") or "")
                answer = await media.GetStreamUri({
                    "StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                    "ProfileToken": token})
                uri = str(getattr(answer, "Uri", "") or "")
                if not uri.startswith(("rtsp://", "rtsps://")):
                    continue
                encoder = getattr(profile, "VideoEncoderConfiguration", None)
                resolution = getattr(encoder, "Resolution", None)
                device.profiles.append(StreamProfile(
                    token, _text(profile, "Name") or token, _strip_userinfo(uri),
                    int(getattr(resolution, "Width", 0) or 0), int(getattr(resolution, "Height", 0) or 0)))
    except Exception as exc:  # noqa: BLE001 - one device's failure is reported, the others are still listed
        device.error = f"{classify(exc)[0].value}: {classify(exc)[1]}"
    finally:
        await camera.close()
    return device


def _text(obj: Any, name: str) -> str | None:
    value = getattr(obj, name, None)
    return secrets.redact(str(value))[:200] if value is not None else None


def _strip_userinfo(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _with_user(url: str, user: str, password_ref: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"{urllib.parse.quote(user, safe='')}:{password_ref}@{parts.netloc}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def camera_id(device: Device, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_-]+", "-", (device.model or device.scope("hardware") or "camera").lower()).strip("-")
    base = (base or "camera")[:40]
    suffix = re.sub(r"[^a-z0-9]+", "", (device.serial or "").lower())[-6:] or device.address.replace(".", "-")
    candidate = f"{base}-{suffix}"[:64]
    index = 2
    while candidate in taken:
        candidate = f"{base}-{suffix}-{index}"[:64]
        index += 1
    taken.add(candidate)
    return candidate


def camera_entries(devices: list[Device], user: str | None, password_env: str | None) -> str:
    """``cameras:`` YAML for the described devices (those without a stream URI are left out)."""
    taken: set[str] = set()
    entries: list[dict[str, Any]] = []
    for device in devices:
        if not device.profiles:
            continue
        ref = f"${{{password_env}}}" if password_env else None
        main, *others = device.profiles
        entry: dict[str, Any] = {
            "id": camera_id(device, taken),
            "name": " ".join(x for x in (device.manufacturer, device.model, device.serial) if x)[:200] or "Camera",
            "zone": "other",
            "url": _with_user(main.uri, user, ref) if user and ref else main.uri,
        }
        if others:
            entry["live_url"] = _with_user(others[0].uri, user, ref) if user and ref else others[0].uri
        entry["onvif"] = {"url": _with_user(device.device_url, user, ref) if user and ref else device.device_url}
        entries.append(entry)
    return yaml.safe_dump({"cameras": entries}, sort_keys=False, allow_unicode=True)
