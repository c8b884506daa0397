"""A camera as it really is: its ONVIF clock and its own events, against the simulated ONVIF camera.

The daemon runs for real (``StationProcess``) in front of a camsim RTSP stream and
:class:`sim.onvif_camera.OnvifCamera`; hostile device services (junk, faults) are
plain loopback HTTP servers of the test's own.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from nvr.base.config import Backoff, Onvif
from recorder.index import decode_meta
from sim.onvif_camera import DIGITAL_INPUT, MOTION, TAMPER
from streams.onvif import EventKind, LinkReason, LinkState, OnvifLink
from tests.conftest import wait_until
from tests.test_recording import rows

PASSWORD = "0nv1f@pa:ss%2F!"


def entry(cam_id: str, url: str, onvif_url: str, **onvif: Any) -> dict[str, Any]:
    return {"id": cam_id, "name": cam_id, "zone": "holding_cell", "url": url,
            "onvif": {"url": onvif_url, "clock_check_seconds": 5, **onvif}}


def alarms(daemon: Any, camera: str, kind: str, open_only: bool = False) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"camera": camera, "type": kind, **({"open": "true"} if open_only else {})})
    status, body = daemon.get(f"/api/events?{query}")
    assert status == 200, body
    return body["events"]  # type: ignore[no-any-return]


def test_a_camera_clock_90_s_off_opens_clock_drift_shows_the_offset_and_closes_when_set_right(
        cameras, onvif_cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    rtsp = cameras("cell", fps=15, gop=15)
    onvif = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD, clock_offset=90)
    daemon = daemon_factory([entry("cell", rtsp.url, onvif.url_with("admin", "${ONVIF_PASS}"))],
                            env={"ONVIF_PASS": PASSWORD}, storage={"segment_seconds": 3})
    daemon.wait_state("cell", "online")

    def measured() -> dict[str, Any] | None:
        # The clock is read first (no credentials needed); the link is online once the rest answered too.
        cam = daemon.camera("cell")
        return cam if cam["clock_offset_seconds"] is not None and cam["onvif"]["state"] == "online" else None

    cam = wait_until(measured, 20, "the camera's clock was never read, or the link never came online")
    assert 88.5 <= cam["clock_offset_seconds"] <= 91.5, cam["clock_offset_seconds"]
    assert cam["onvif"]["state"] == "online" and cam["onvif"]["clock_checked_at"].endswith("Z")
    drift = wait_until(lambda: alarms(daemon, "cell", "clock_drift", open_only=True), 10, "no clock_drift alarm")
    assert drift[0]["severity"] == "critical" and 88.5 <= drift[0]["details"]["clock_offset_seconds"] <= 91.5
    assert drift[0]["details"]["tolerance_seconds"] == 2.0
    status, metrics = daemon.get("/metrics")
    found = re.search(r'^nvr_camera_clock_offset_seconds\{camera="cell"\} (\S+)$', metrics.decode(), re.M)
    assert status == 200 and found and 88.5 <= float(found.group(1)) <= 91.5
    # Each segment written meanwhile carries the offset in its (chained) index row.
    wait_until(lambda: any("clock_offset_seconds" in decode_meta(s.meta) for s in rows(daemon.storage, "cell")),
               20, "no segment carries the clock offset")

    onvif.clock_offset = 0.0  # a technician sets the camera's clock right
    wait_until(lambda: not alarms(daemon, "cell", "clock_drift", open_only=True), 15, "clock_drift never closed")
    assert abs(daemon.camera("cell")["clock_offset_seconds"]) <= 1.0
    assert daemon.camera("cell")["state"] == "online"  # recording went on throughout
    assert daemon.stop() == 0
    metas = [decode_meta(s.meta) for s in rows(daemon.storage, "cell")]
    offsets = [m["clock_offset_seconds"] for m in metas if "clock_offset_seconds" in m]
    assert any(o > 88 for o in offsets) and abs(offsets[-1]) <= 1.0
    text = daemon.log()
    for form in (PASSWORD, urllib.parse.quote(PASSWORD, safe="")):
        assert form not in text


def test_tamper_raised_by_the_camera_becomes_an_alarm_and_events_resume_after_a_reboot(
        cameras, onvif_cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    rtsp = cameras("door", fps=15, gop=15)
    onvif = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD)
    daemon = daemon_factory([entry("door", rtsp.url, onvif.url_with("admin", "${ONVIF_PASS}"))],
                            env={"ONVIF_PASS": PASSWORD}, ingest={"backoff_initial_seconds": 0.5,
                                                                  "backoff_max_seconds": 2})
    daemon.wait_state("door", "online")
    wait_until(lambda: daemon.camera("door")["onvif"]["events_subscribed"], 20, "never subscribed")
    onvif.raise_event(TAMPER, True)
    tamper = wait_until(lambda: alarms(daemon, "door", "camera_tamper", open_only=True), 10, "no tamper alarm")
    # In the camera's own words.
    assert tamper[0]["details"]["topic"] == TAMPER
    assert tamper[0]["details"]["data"] == {"State": "true"}
    assert tamper[0]["details"]["source"] == {"VideoSourceConfigurationToken": "vsconf0"}
    onvif.raise_event(TAMPER, False)
    wait_until(lambda: not alarms(daemon, "door", "camera_tamper", open_only=True), 10, "tamper never closed")
    onvif.raise_event(MOTION, True)  # counted, not an alarm
    onvif.raise_event(DIGITAL_INPUT, True, ("InputToken", "DI_1"))
    wait_until(lambda: alarms(daemon, "door", "camera_input", open_only=True), 10, "no input alarm")

    # A flapping tamper contact: 300 changes in a burst end in one open alarm, and the API stays prompt.
    before = len(alarms(daemon, "door", "camera_tamper"))
    for index in range(300):
        onvif.raise_event(TAMPER, index % 2 == 1)
    flood = wait_until(lambda: alarms(daemon, "door", "camera_tamper", open_only=True), 10, "flood lost the state")
    started = time.monotonic()
    assert daemon.camera("door")["state"] == "online" and time.monotonic() - started < 1.0
    assert len(alarms(daemon, "door", "camera_tamper")) - before <= 150
    onvif.raise_event(TAMPER, False)
    wait_until(lambda: not alarms(daemon, "door", "camera_tamper", open_only=True), 10, "tamper never closed")
    assert flood[0]["details"]["data"] == {"State": "true"}

    # The camera reboots: its subscriptions are gone. The link notices and subscribes again.
    onvif.reboot(down_seconds=2)
    wait_until(lambda: onvif.subscriptions() == 1 and daemon.camera("door")["onvif"]["events_subscribed"], 30,
               "never subscribed again after the reboot")
    onvif.raise_event(TAMPER, True)
    again = wait_until(lambda: alarms(daemon, "door", "camera_tamper", open_only=True), 10,
                       "a tamper after the reboot was not heard")
    assert again[0]["id"] != tamper[0]["id"]
    assert daemon.camera("door")["state"] == "online"
    status, metrics = daemon.get("/metrics")
    assert 'nvr_camera_onvif_events_total{camera="door",kind="motion"} 1.0' in metrics.decode()


def test_wrong_onvif_credentials_are_reported_and_recording_goes_on(
        cameras, onvif_cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    rtsp = cameras("hall", fps=15, gop=15)
    onvif = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD)
    wrong = "Wr0ng@pass:%41!"
    daemon = daemon_factory([entry("hall", rtsp.url, onvif.url_with("admin", "${ONVIF_PASS}"))],
                            env={"ONVIF_PASS": wrong}, storage={"segment_seconds": 2})
    daemon.wait_state("hall", "online")
    cam = wait_until(lambda: (c := daemon.camera("hall"))["onvif"]["state_reason"] == "auth_failed" and c, 20,
                     "wrong credentials never reported")
    assert cam["onvif"]["state"] == "offline" and cam["onvif"]["state_message"] == "the camera rejected the credentials"
    wait_until(lambda: len(rows(daemon.storage, "hall")) >= 2, 20, "recording did not go on")
    _, listing = daemon.get("/api/cameras")
    daemon.stop()
    for form in (wrong, urllib.parse.quote(wrong, safe="")):
        assert form not in daemon.log() and form not in json.dumps(listing)


# -- the link alone, against hostile device services ---------------------------------------------------


class _Hostile(BaseHTTPRequestHandler):
    answer: bytes = b""
    status = 200
    stall = 0.0  # seconds to say nothing after the request (a hung device service)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.stall)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/soap+xml")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(answer: bytes, status: int = 200, stall: float = 0.0) -> tuple[ThreadingHTTPServer, int]:
    handler = type("H", (_Hostile,), {"answer": answer, "status": status, "stall": stall})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads, server.block_on_close = True, False  # a stalled handler does not hold the test
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


_FAULT = (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault>'
          b"<s:Code><s:Value>s:Receiver</s:Value></s:Code><s:Reason><s:Text xml:lang=\"en\">Internal camera error"
          b"</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>")


def _link_outcome(url: str, seconds: float = 8.0) -> tuple[OnvifLink, list[tuple[LinkReason | None, str | None]]]:
    """Run a link until it first goes offline; what it said when it did."""
    link = OnvifLink("x", Onvif(url=url, timeout_seconds=2), Backoff(backoff_initial_seconds=0.5,
                                                                     backoff_max_seconds=1))
    said: list[tuple[LinkReason | None, str | None]] = []
    link.on_state = lambda lk: said.append((lk.reason, lk.message)) if lk.state is LinkState.OFFLINE else None

    async def go() -> None:
        task = asyncio.create_task(link.run())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and link.state is not LinkState.OFFLINE:
            await asyncio.sleep(0.05)
        link.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())
    return link, said


@pytest.mark.parametrize(("answer", "status", "reason"), [
    (b"\x00\xffthis is not XML <<<", 200, LinkReason.BAD_ANSWER),
    (b"<html><body>Welcome to the router</body></html>", 200, LinkReason.BAD_ANSWER),
    (_FAULT, 500, LinkReason.SOAP_FAULT),
    (b"", 503, LinkReason.UNREACHABLE),
])
def test_a_device_service_that_answers_junk_or_faults_is_reported_with_a_reason(answer: bytes, status: int,
                                                                                reason: LinkReason) -> None:
    server, port = _serve(answer, status)
    try:
        link, said = _link_outcome(f"http://admin:{PASSWORD}@127.0.0.1:{port}/onvif/device_service")
    finally:
        server.shutdown()
    assert said and said[0][0] is reason, said
    assert said[0][1] and PASSWORD not in said[0][1] and link.clock_offset_seconds is None


class _Flood(BaseHTTPRequestHandler):
    """A device service that answers with an endless body (chunked, so no length announces it)."""

    sent = 0
    protocol_version = "HTTP/1.1"  # chunked bodies exist only in HTTP/1.1

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/soap+xml")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"<a>" + b"x" * 65536 + b"</a>"
        try:
            head = b'<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(head), head))
            for _ in range(100_000):  # 6.5 GB if anyone read it all
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                type(self).sent += len(chunk)
        except OSError:
            pass  # the client hung up: what it should do

    def log_message(self, *args: Any) -> None:
        pass


def test_a_device_service_that_floods_its_answer_is_cut_off_and_reported() -> None:
    from streams.onvif import MAX_ANSWER_BYTES

    handler = type("F", (_Flood,), {"sent": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads, server.block_on_close = True, False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        link, said = _link_outcome(f"http://127.0.0.1:{server.server_address[1]}/onvif/device_service")
    finally:
        server.shutdown()
        server.server_close()
    assert said and said[0][0] is LinkReason.BAD_ANSWER and "MB" in (said[0][1] or ""), said
    # Read no further than the bound (and what the socket buffers held when it hung up).
    assert handler.sent < MAX_ANSWER_BYTES + (16 << 20), handler.sent
    assert link.clock_offset_seconds is None


def test_a_device_service_that_never_answers_is_given_up_on_within_its_timeout() -> None:
    server, port = _serve(b"", 200, stall=30)
    started = time.monotonic()
    try:
        _, said = _link_outcome(f"http://127.0.0.1:{port}/onvif/device_service", seconds=10)
    finally:
        server.shutdown()
        server.server_close()
    assert said and said[0] == (LinkReason.UNREACHABLE, "timed out"), said
    assert time.monotonic() - started < 2 + 4  # timeout_seconds (2) and slack


def test_nothing_listening_is_unreachable_and_parsed_events_keep_the_cameras_words(onvif_cameras) -> None:
    link, said = _link_outcome("http://127.0.0.1:9/onvif/device_service")
    assert said[0][0] is LinkReason.UNREACHABLE and link.clock_offset_seconds is None
    cam = onvif_cameras(rtsp_url="rtsp://127.0.0.1:1/x", user=None, password=None, clock_offset=-30)
    heard = []
    link = OnvifLink("y", Onvif(url=cam.device_url, timeout_seconds=2), Backoff())
    link.on_event = lambda _link, event: heard.append(event)

    async def go() -> None:
        task = asyncio.create_task(link.run())
        while not link.events_subscribed:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(cam.raise_event, DIGITAL_INPUT, True, ("InputToken", "DI_3"))
        while not heard:
            await asyncio.sleep(0.05)
        link.stop()
        await asyncio.wait_for(task, 15)

    asyncio.run(asyncio.wait_for(go(), 30))
    assert -31.5 <= (link.clock_offset_seconds or 0) <= -28.5
    event = heard[0]
    assert event.kind is EventKind.DIGITAL_INPUT and event.active is True
    assert event.source == {"InputToken": "DI_3"} and event.data == {"LogicalState": "true"}


def test_a_camera_without_events_is_online_with_its_clock_read_and_says_so(onvif_cameras) -> None:  # type: ignore[no-untyped-def]
    cam = onvif_cameras(rtsp_url="rtsp://127.0.0.1:1/x", user="admin", password=PASSWORD, events=False)
    link = OnvifLink("z", Onvif(url=cam.url_with("admin", urllib.parse.quote(PASSWORD, safe="")), timeout_seconds=2),
                     Backoff())

    async def go() -> None:
        task = asyncio.create_task(link.run())
        while link.state is not LinkState.ONLINE:
            await asyncio.sleep(0.05)
        link.stop()
        await asyncio.wait_for(task, 15)

    asyncio.run(asyncio.wait_for(go(), 30))
    assert link.clock_offset_seconds is not None and abs(link.clock_offset_seconds) <= 1.0
    assert "CreatePullPointSubscription" not in cam.requests and cam.auth_failures == 0
    assert link.sessions == 1  # no reconnect loop for a camera that simply has no events


def test_one_input_going_quiet_does_not_close_the_alarm_while_another_is_still_active() -> None:
    from nvr.health.alarms import AlarmStore, AlarmType, Severity
    from nvr.health.onvif_health import OnvifHealth
    from streams.onvif import CameraEvent

    async def scenario() -> None:
        store = AlarmStore()
        link = OnvifLink("gate", Onvif(url="http://127.0.0.1:9/onvif/device_service"), Backoff())
        health = OnvifHealth("gate", link, store, Severity.WARNING, 2.0)

        def input_event(token: str, active: bool) -> CameraEvent:
            return CameraEvent(DIGITAL_INPUT, EventKind.DIGITAL_INPUT, active, {"InputToken": token},
                               {"LogicalState": str(active).lower()})

        health.event(link, input_event("DI_1", True))
        health.event(link, input_event("DI_2", True))
        health.event(link, input_event("DI_1", False))
        assert store.is_open("gate", AlarmType.CAMERA_INPUT)
        health.event(link, input_event("DI_2", False))
        assert not store.is_open("gate", AlarmType.CAMERA_INPUT)
        # The clock: over the tolerance opens, back within closes; what segments carry follows the last reading.
        link.clock_offset_seconds, link.clock_checked_at = -3.5, time.time()
        health.clock_read(link)
        assert store.is_open("gate", AlarmType.CLOCK_DRIFT) and health.segment_meta()["clock_offset_seconds"] == -3.5
        link.clock_offset_seconds = 1.9
        health.clock_read(link)
        assert not store.is_open("gate", AlarmType.CLOCK_DRIFT)
        await store.shutdown()

    asyncio.run(scenario())


@pytest.mark.parametrize(("url", "message"), [
    ("http://admin:secret@10.0.0.5/onvif/device_service", "a literal password is not allowed"),
    ("ftp://10.0.0.5/onvif/device_service", "must be an http:// or https:// URL"),
    ("http://10.0.0.5/cgi-bin/onvif", "/onvif/device_service"),
    ("http://10.0.0.5:70000/onvif/device_service", "out of range"),
])
def test_the_onvif_url_is_checked_and_takes_a_password_only_by_reference(url: str, message: str) -> None:
    from nvr.base import config as configmod

    document = yaml.safe_dump({"station": {"id": "s", "name": "S"}, "cameras": [
        {"id": "c", "name": "C", "url": "rtsp://127.0.0.1/x", "onvif": {"url": url}}]})
    with pytest.raises(configmod.ConfigError) as raised:
        configmod.parse(document, environ={})
    assert any("cameras[0].onvif.url" in p and message in p for p in raised.value.problems), raised.value.problems
    assert all("secret" not in p for p in raised.value.problems)


def test_the_onvif_password_is_percent_encoded_and_redacted() -> None:
    from nvr.base import config as configmod
    from nvr.base import secrets

    document = yaml.safe_dump({"station": {"id": "s", "name": "S"}, "cameras": [
        {"id": "c", "name": "C", "url": "rtsp://127.0.0.1/x",
         "onvif": {"url": "http://admin:${ONVIF_PASS}@10.0.0.5/onvif/device_service"}}]})
    config = configmod.parse(document, environ={"ONVIF_PASS": PASSWORD})
    onvif = config.cameras[0].onvif
    assert onvif is not None and urllib.parse.quote(PASSWORD, safe="") in onvif.url
    assert PASSWORD not in onvif.display_url and urllib.parse.quote(PASSWORD, safe="") not in onvif.display_url
    assert PASSWORD not in secrets.redact(f"failed: {PASSWORD} / {onvif.url}")
    link = OnvifLink("c", onvif, Backoff())
    assert link._address.password == PASSWORD  # decoded for WS-Security, as typed
