"""The central monitoring room: two real stations, simulated cameras and one `nvr console`, on loopback.

What the operator in the central room checks: every station's cameras and their states on one
screen, a camera's alarm within seconds, a dead station shown as such while the others carry on,
a misconfigured station shown with a precise reason (and its token never shown), live video of
any station's camera in the browser; and what the station's auditor checks: that a live view that
came through the console names the console and the central user.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import http.server
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, StationProcess, free_port, wait_until

CAMERA = {"width": 320, "height": 240, "fps": 10}


class Console:
    """The real ``nvr console`` in a subprocess, with its log captured to a file."""

    def __init__(self, workdir: Path, stations: list[dict[str, Any]], env: dict[str, str]) -> None:
        from nvr.identity.accounts_cli import create_token
        from nvr.identity.roles import Role

        workdir.mkdir()
        self.port = free_port()
        self.storage = workdir / "console"
        self.config_path = workdir / "console.yaml"
        self.log_path = workdir / "console.log"
        self.env = {**os.environ, **env}
        config = {
            "console": {"id": "central", "name": "Central test room", "listen": f"127.0.0.1:{self.port}"},
            "storage": {"path": str(self.storage)},
            "follow": {"poll_seconds": 1, "timeout_seconds": 2, "backoff_initial_seconds": 0.5,
                       "backoff_max_seconds": 2},
            "log": {"level": "debug"},
            "stations": stations,
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.auth_db = self.storage / "auth.sqlite3"
        self.token = create_token(self.auth_db, "test-admin", Role.ADMIN)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_user(self, name: str, role: str, password: str) -> None:
        from nvr.identity.authdb import AuthDatabase
        from nvr.identity.roles import Role

        db = AuthDatabase(self.auth_db)
        try:
            db.add_user(name, Role(role), password, None)
        finally:
            db.close()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "nvr", "console", "-c", str(self.config_path)],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self.env)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"console exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                return self.get("/healthz")[0] == 200
            except OSError:
                return False

        wait_until(up, 20, "console did not start")

    def get(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.base_url + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def raw(self, path: str) -> str:
        req = urllib.request.Request(self.base_url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read().decode()

    def fleet(self) -> dict[str, Any]:
        status, body = self.get("/api/fleet")
        assert status == 200, body
        return {s["id"]: s for s in body["stations"]}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def console_factory(tmp_path: Path) -> Iterator[Callable[..., Console]]:
    made: list[Console] = []

    def make(stations: list[dict[str, Any]], env: dict[str, str]) -> Console:
        console = Console(tmp_path / f"console{len(made)}", stations, env)
        made.append(console)
        console.start()
        return console

    yield make
    for console in made:
        console.stop()


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """An HTTP server that is not an nvr station: 200 and HTML to everything."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"<html><body>It works!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def station(daemon_factory: Callable[..., StationProcess], station_id: str, cameras: list[dict[str, Any]]) -> tuple[StationProcess, str]:
    """A running station daemon and a fresh role-central token for the console."""
    from nvr.identity.accounts_cli import create_token
    from nvr.identity.roles import Role

    daemon = daemon_factory(cameras, station={"id": station_id, "name": f"Station {station_id}"})
    token = create_token(daemon.auth_db, "central", Role.CENTRAL)
    return daemon, token


def test_console_follows_stations_alarms_outages_and_bad_stations(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], console_factory: Callable[..., Console],
        garbage_server: str) -> None:
    hall_a, cell_a, hall_b = cameras("hall-a", **CAMERA), cameras("cell-a", **CAMERA), cameras("hall-b", **CAMERA)
    st_a, token_a = station(daemon_factory, "st-a", [
        {"id": "hall-1", "name": "Front hall", "zone": "hall", "url": hall_a.url},
        {"id": "cell-1", "name": "Holding cell 1", "zone": "holding_cell", "url": cell_a.url},
    ])
    st_b, token_b = station(daemon_factory, "st-b", [{"id": "hall-1", "name": "B hall", "zone": "hall",
                                                      "url": hall_b.url}])
    wrong_token = "nvr_" + "W" * 43  # well-formed, unknown to the station
    console = console_factory([
        {"id": "st-a", "url": st_a.base_url, "token": "${TOKEN_A}"},
        {"id": "st-b", "url": st_b.base_url, "token": "${TOKEN_B}"},
        {"id": "st-wrong", "url": st_a.base_url, "token": "${TOKEN_WRONG}"},
        {"id": "st-garbage", "url": garbage_server, "token": "${TOKEN_A}"},
        {"id": "st-nothing", "url": f"http://127.0.0.1:{free_port()}", "token": "${TOKEN_B}"},
    ], env={"TOKEN_A": token_a, "TOKEN_B": token_b, "TOKEN_WRONG": wrong_token})

    # Both stations' cameras, with their states, on one screen.
    def all_online() -> dict[str, Any] | None:
        fleet = console.fleet()
        states = {(sid, c["id"]): c["state"] for sid in ("st-a", "st-b") for c in fleet[sid]["cameras"]}
        ok = states == {("st-a", "hall-1"): "online", ("st-a", "cell-1"): "online", ("st-b", "hall-1"): "online"}
        return fleet if ok and fleet["st-a"]["alarm_feed"]["connected"] else None

    fleet = wait_until(all_online, 40, "the console never showed every camera online")
    assert fleet["st-a"]["reachable"] and fleet["st-a"]["counts"]["online"] == 2
    assert fleet["st-b"]["counts"] == {"cameras": 1, "online": 1, "offline": 0, "other": 0, "alarms_open": 0,
                                       "critical_open": 0}
    assert [c["zone"] for c in fleet["st-a"]["cameras"]] == ["hall", "holding_cell"]

    # Misconfigured stations: each with its precise reason, retried, never blocking the others.
    def reasons() -> dict[str, str | None] | None:
        fleet = console.fleet()
        got = {sid: fleet[sid]["reason"] for sid in ("st-wrong", "st-garbage", "st-nothing")}
        return got if all(got.values()) else None

    got = wait_until(reasons, 15, "bad stations never got a reason")
    assert got == {"st-wrong": "unauthorized", "st-garbage": "bad_response", "st-nothing": "connection_refused"}
    fleet = console.fleet()
    assert not fleet["st-wrong"]["reachable"] and "401" in fleet["st-wrong"]["message"]
    assert "not JSON" in fleet["st-garbage"]["message"]

    # A holding-cell camera stops: its critical alarm reaches the console within seconds, cells first.
    cell_a.stop()

    def cell_alarm() -> list[dict[str, Any]] | None:
        status, body = console.get("/api/fleet/alarms")
        assert status == 200
        alarms = [a for a in body["alarms"] if a["type"] != "station_unreachable"]
        return alarms if any(a["station"] == "st-a" and a["camera"] == "cell-1" for a in alarms) else None

    alarms = wait_until(cell_alarm, 15, "the holding cell's alarm never reached the console", interval=0.1)
    first = alarms[0]
    assert (first["station"], first["camera"], first["type"], first["severity"], first["zone"]) == (
        "st-a", "cell-1", "offline", "critical", "holding_cell")
    assert first["camera_name"] == "Holding cell 1" and first["station_name"] == "st-a"
    cam = next(c for c in console.fleet()["st-a"]["cameras"] if c["id"] == "cell-1")
    assert [a["type"] for a in cam["open_alarms"]] == ["offline"]
    unreachable = [a for a in console.get("/api/fleet/alarms")[1]["alarms"] if a["type"] == "station_unreachable"]
    assert {a["station"] for a in unreachable} == {"st-wrong", "st-garbage", "st-nothing"}

    # A whole station goes down: shown unreachable; the other keeps streaming.
    st_b.stop()

    def b_down() -> dict[str, Any] | None:
        fleet = console.fleet()
        return fleet if fleet["st-b"]["state"] == "unreachable" else None

    fleet = wait_until(b_down, 15, "the stopped station was never shown unreachable")
    assert fleet["st-b"]["reason"] == "connection_refused"
    assert all(c["stale"] for c in fleet["st-b"]["cameras"])
    before = fleet["st-a"]["last_ok_at"]
    wait_until(lambda: console.fleet()["st-a"]["last_ok_at"] != before, 10, "st-a stopped being followed")
    hall = next(c for c in console.fleet()["st-a"]["cameras"] if c["id"] == "hall-1")
    assert hall["state"] == "online" and not hall["stale"]
    assert st_a.camera("hall-1")["state"] == "online"

    # The camera comes back: its alarm closes on the console.
    cell_a.start()
    wait_until(lambda: not cell_alarm(), 30, "the holding cell's alarm never closed on the console")

    # No station token anywhere: not in the console's log, API answers or event stream.
    stream = _read_stream(console, "/api/fleet/stream")
    outputs = {"log": console.log(), "fleet": console.raw("/api/fleet"), "alarms": console.raw("/api/fleet/alarms"),
               "stream": stream}
    assert "event: fleet" in stream
    for name, text in outputs.items():
        for token in (token_a, token_b, wrong_token):
            assert token not in text, f"a station token leaked into the console's {name}"
    assert "unauthorized" in console.log()  # the reason is logged, once
    assert console.log().count("[st-wrong] station unreachable: unauthorized") == 1


def _certificate(tmp: Path, name: str, valid_days: float = 1.0) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (IP SAN); expired when ``valid_days`` is negative."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=valid_days)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(now, not_after) - datetime.timedelta(days=2)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_station(daemon_factory: Callable[..., StationProcess], station_id: str, cameras: list[dict[str, Any]],
                cert: Path, key: Path) -> tuple[StationProcess, str]:
    """A station serving HTTPS with ``cert``; the test itself talks to it without verifying (it may be expired)."""
    from nvr.identity.accounts_cli import create_token
    from nvr.identity.roles import Role

    daemon = daemon_factory(cameras, start=False, station={"id": station_id, "name": f"Station {station_id}"},
                            web={"tls": {"cert": str(cert), "key": str(key)}})
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    daemon.ssl_context = context
    daemon.start()
    assert daemon.base_url.startswith("https://")
    return daemon, create_token(daemon.auth_db, "central", Role.CENTRAL)


def test_console_verifies_station_tls_pinned_untrusted_foreign_and_expired(
        tmp_path: Path, cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess],
        console_factory: Callable[..., Console]) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = _certificate(certs, "station")
    other, _ = _certificate(certs, "other")
    expired, expired_key = _certificate(certs, "expired", valid_days=-1)
    hall = cameras("tls-hall", **CAMERA)
    st_tls, token = tls_station(daemon_factory, "st-tls", [{"id": "hall-1", "name": "TLS hall", "url": hall.url}],
                                cert, key)
    # A station whose certificate has expired still starts (it only loads the pair) and serves HTTPS.
    st_old, old_token = tls_station(daemon_factory, "st-old", [], expired, expired_key)
    assert st_old.get("/healthz")[0] in (200, 503)
    console = console_factory([
        {"id": "st-pinned", "url": st_tls.base_url, "token": "${TOKEN}", "ca": str(cert)},
        {"id": "st-system", "url": st_tls.base_url, "token": "${TOKEN}"},
        {"id": "st-foreign", "url": st_tls.base_url, "token": "${TOKEN}", "ca": str(other)},
        {"id": "st-expired", "url": st_old.base_url, "token": "${OLD_TOKEN}", "ca": str(expired)},
    ], env={"TOKEN": token, "OLD_TOKEN": old_token})

    # Pinned to its own certificate: followed over HTTPS, its camera listed.
    def pinned() -> dict[str, Any] | None:
        fleet = console.fleet()
        ok = fleet["st-pinned"]["reachable"] and [c["id"] for c in fleet["st-pinned"]["cameras"]] == ["hall-1"]
        return fleet if ok and all(fleet[s]["reason"] for s in ("st-system", "st-foreign", "st-expired")) else None

    fleet = wait_until(pinned, 25, "the pinned station was never followed, or a bad one never got a reason")
    assert fleet["st-pinned"]["reason"] is None and fleet["st-pinned"]["cameras"][0]["name"] == "TLS hall"

    # System trust, a foreign pin, an expired certificate: each unreachable, with a TLS reason that says why.
    for sid in ("st-system", "st-foreign", "st-expired"):
        assert not fleet[sid]["reachable"] and fleet[sid]["state"] == "unreachable", fleet[sid]
        assert fleet[sid]["reason"] == "tls_error", fleet[sid]
        assert fleet[sid]["cameras"] == [], fleet[sid]
    assert "self-signed" in fleet["st-system"]["message"] or "self signed" in fleet["st-system"]["message"]
    assert "not accepted" in fleet["st-foreign"]["message"]
    assert "self-signed" in fleet["st-foreign"]["message"] or "self signed" in fleet["st-foreign"]["message"]
    assert "expired" in fleet["st-expired"]["message"]
    assert not fleet["st-system"]["alarm_feed"]["connected"]
    assert fleet["st-system"]["alarm_feed"]["reason"] == "tls_error"

    # The stations' tokens never reach the console's log or its answers.
    log, answer = console.log(), console.raw("/api/fleet")
    assert "[st-system] station unreachable: tls_error" in log
    assert "[st-expired] station unreachable: tls_error" in log
    for name, text in {"log": log, "fleet": answer, "alarms": console.raw("/api/fleet/alarms")}.items():
        for secret in (token, old_token):
            assert secret not in text, f"a station token leaked into the console's {name}"


def _read_stream(console: Console, path: str) -> str:
    req = urllib.request.Request(console.base_url + path, headers={"Authorization": f"Bearer {console.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read1(256 * 1024).decode() if hasattr(resp, "read1") else resp.read(65536).decode()


@pytest.fixture
def browser() -> Iterator[Any]:
    from tests.test_live import CHROMIUM_ARGS

    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


FRAMES = """async (key) => {
  const player = window.nvrFleet.players[key];
  const tile = document.querySelector(`.tile[data-key="${key}"]`);
  const video = tile && tile.querySelector("video");
  return { frames: player ? await player.framesDecoded() : 0, width: video ? video.videoWidth : 0 };
}"""


def fleet_page(page: Any, console: Console) -> None:
    """Sign ``page`` in as alice (a monitor) and open the fleet page."""
    login = page.request.post(console.base_url + "/api/login",
                              data=json.dumps({"username": "alice", "password": "correct horse battery"}),
                              headers={"Content-Type": "application/json"})
    assert login.status == 200, login.text()
    page.goto(console.base_url + "/")


def test_live_video_of_each_station_through_the_console_is_audited_on_the_station(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], console_factory: Callable[..., Console],
        browser: Any) -> None:
    cam_a, cam_b = cameras("live-a", **CAMERA), cameras("live-b", **CAMERA)
    st_a, token_a = station(daemon_factory, "st-a", [{"id": "cell-1", "name": "Cell A", "zone": "holding_cell",
                                                      "url": cam_a.url}])
    st_b, token_b = station(daemon_factory, "st-b", [{"id": "hall-1", "name": "Hall B", "url": cam_b.url}])
    console = console_factory([
        {"id": "st-a", "url": st_a.base_url, "token": "${TOKEN_A}"},
        {"id": "st-b", "url": st_b.base_url, "token": "${TOKEN_B}"},
    ], env={"TOKEN_A": token_a, "TOKEN_B": token_b})
    console.add_user("alice", "monitor", "correct horse battery")
    st_a.wait_state("cell-1", "online", timeout=30)
    st_b.wait_state("hall-1", "online", timeout=30)
    wait_until(lambda: all(s["reachable"] and s["counts"]["online"] == 1 for s in console.fleet().values()), 20,
               "the console never saw both cameras online")

    page = browser.new_page(viewport={"width": 1600, "height": 900})
    fleet_page(page, console)
    page.wait_for_selector('.station-card[data-station-id="st-b"] li[data-camera-id="hall-1"]', timeout=15000)
    page.click('.station-card[data-station-id="st-a"] li[data-camera-id="cell-1"] .live-button')
    page.click('.station-card[data-station-id="st-b"] li[data-camera-id="hall-1"] .live-button')
    for key in ("st-a/cell-1", "st-b/hall-1"):
        start = page.evaluate(FRAMES, key)["frames"]
        wait_until(lambda key=key, start=start: (s := page.evaluate(FRAMES, key))["frames"] >= start + 10
                   and s["width"] == 320, 30, f"no moving picture from {key} through the console", interval=0.3)

    # The station's auditor sees who watched: via the central console, and which central user.
    def station_audit() -> list[dict[str, Any]] | None:
        status, body = st_a.get("/api/audit?action=live.start")
        assert status == 200, body
        return [e for e in body["entries"] if e["camera"] == "cell-1"] or None

    entries = wait_until(station_audit, 10, "the station never audited the live view")
    assert entries[-1]["actor"] == "token:central" and entries[-1]["role"] == "central"
    assert entries[-1]["details"]["via_console"] == "central"
    assert entries[-1]["details"]["central_user"] == "alice"

    # And the console's own audit log has the view, by alice, naming the station.
    status, body = console.get("/api/audit?action=live.start")
    assert status == 200, body
    mine = [(e["actor"], e["camera"], e["details"].get("station")) for e in body["entries"] if e["outcome"] == "ok"]
    assert ("alice", "cell-1", "st-a") in mine and ("alice", "hall-1", "st-b") in mine

    # Closing the tile ends the station's session (DELETE relayed), audited with the central user too.
    page.click('.tile[data-key="st-a/cell-1"] .tile-close')

    def stopped() -> list[dict[str, Any]] | None:
        _, body = st_a.get("/api/audit?action=live.stop")
        return [e for e in body["entries"] if e["details"].get("central_user") == "alice"] or None

    stop = wait_until(stopped, 10, "the station never ended the relayed session")
    assert stop[-1]["details"]["via_console"] == "central"
    page.close()

    # Anyone else sending the console's headers is not believed: an admin token claiming to be "mallory".
    status, answer = st_a.request("POST", "/api/cameras/cell-1/whep", body=_offer_sync(), headers={
        "Authorization": f"Bearer {st_a.token}", "Content-Type": "application/sdp",
        "X-NVR-Via-Console": "central", "X-NVR-Central-User": "mallory"})
    assert status == 201, answer
    spoofed = wait_until(lambda: [e for e in st_a.get("/api/audit?action=live.start")[1]["entries"]
                                  if e["actor"] == "token:test-admin"], 10, "the admin's live view was not audited")
    assert "central_user" not in spoofed[-1]["details"] and "via_console" not in spoofed[-1]["details"]


def _offer_sync() -> bytes:
    """An aiortc offer, made on a thread of its own (Playwright's sync API owns this thread's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _offer()).result(30)


async def _offer() -> bytes:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp.encode()


TURN_SECRET = "central-relay-turn-secret-5d1e"  # noqa: S105 - the test's own coturn


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[str]:
    if not shutil.which("turnserver"):
        pytest.skip("coturn is not installed (the Makefile's APT_PACKAGES installs it)")
    with loopback_coturn(tmp_path) as url:
        yield url


@contextlib.contextmanager
def loopback_coturn(tmp_path: Path) -> Iterator[str]:
    """Debian's coturn on loopback with ``use-auth-secret`` (TURN REST credentials); yields its ``turn:`` URL."""
    port = free_port()
    conf = tmp_path / "turnserver.conf"
    conf.write_text("\n".join([
        "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={port}", "use-auth-secret",
        f"static-auth-secret={TURN_SECRET}", "realm=nvr.test", "fingerprint", "no-tls", "no-dtls", "no-cli",
        "allow-loopback-peers", "log-file=stdout", "simple-log", "verbose", f"pidfile={tmp_path / 'turn.pid'}",
        f"userdb={tmp_path / 'turndb'}", ""]))
    log = (tmp_path / "turn.log").open("w")
    proc = subprocess.Popen(["turnserver", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: f"127.0.0.1:{port}" in (tmp_path / "turn.log").read_text() or proc.poll() is not None,
                   15, "coturn did not start")
        assert proc.poll() is None, (tmp_path / "turn.log").read_text()
        yield f"turn:127.0.0.1:{port}?transport=udp"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _options(console: Console, path: str, token: str | None) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(console.base_url + path, method="OPTIONS", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), None
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def test_a_fleet_tile_learns_the_stations_turn_servers_before_its_offer_and_opens_one_session(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], console_factory: Callable[..., Console],
        browser: Any, coturn: str) -> None:
    from nvr.identity.accounts_cli import create_token
    from nvr.identity.roles import Role

    cam = cameras("preflight", **CAMERA)
    st_a = daemon_factory([{"id": "cell-1", "name": "Cell A", "url": cam.url},
                           {"id": "yard", "name": "Yard A", "url": cam.url}],
                          station={"id": "st-a", "name": "Station st-a"}, env={"TURN_SECRET": TURN_SECRET},
                          live={"ice_servers": [{"urls": [coturn], "auth_secret": "${TURN_SECRET}"}]})
    token_a = create_token(st_a.auth_db, "central", Role.CENTRAL)
    silent = socket.socket()  # a "station" that takes connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    console = console_factory([
        {"id": "st-a", "url": st_a.base_url, "token": "${TOKEN_A}"},
        {"id": "st-silent", "url": f"http://127.0.0.1:{silent.getsockname()[1]}", "token": "${TOKEN_A}"},
        {"id": "st-wrong", "url": st_a.base_url, "token": "${TOKEN_WRONG}"},
    ], env={"TOKEN_A": token_a, "TOKEN_WRONG": "nvr_" + "W" * 43})
    console.add_user("alice", "monitor", "correct horse battery")
    st_a.wait_state("cell-1", "online", timeout=30)
    wait_until(lambda: console.fleet()["st-a"]["reachable"], 20, "the console never reached the station")

    page = browser.new_page(viewport={"width": 1600, "height": 900})
    relayed: list[tuple[str, int, str]] = []  # (method, status, Link header) of every request to the relay
    page.on("response", lambda r: relayed.append((r.request.method, r.status, r.headers.get("link", "")))
            if r.url.endswith("/api/stations/st-a/cameras/cell-1/whep") else None)
    fleet_page(page, console)
    page.click('.station-card[data-station-id="st-a"] li[data-camera-id="cell-1"] .live-button', timeout=15000)
    key = "st-a/cell-1"
    wait_until(lambda: (s := page.evaluate(FRAMES, key))["frames"] >= 10 and s["width"] == 320, 30,
               "no moving picture through the console", interval=0.3)
    page.wait_for_timeout(1000)  # a second session would follow the first answer at once (events kept coming)

    # The pre-flight is answered with the station's TURN server and a credential made for alice, and the
    # tile makes one offer with it: one session at the station, none thrown away.
    methods = [m for m, _, _ in relayed]
    assert methods == ["OPTIONS", "POST"], relayed
    status, link = relayed[0][1], relayed[0][2]
    assert status == 204 and f"<{coturn}>" in link and 'rel="ice-server"' in link, relayed
    assert re.search(r'username="\d+:alice"', link), link
    assert relayed[1][1] == 201
    _, body = st_a.get("/api/audit?action=live.start")
    assert [e["details"].get("central_user") for e in body["entries"] if e["camera"] == "cell-1"] == ["alice"]
    _, live = st_a.get("/api/live/sessions")
    assert [s["camera_id"] for s in live["sessions"]] == ["cell-1"], live
    page.close()

    # The pre-flight hands out TURN credentials: the same access control as the offer.
    path = "/api/stations/st-a/cameras/cell-1/whep"
    status, headers, body = _options(console, path, None)
    assert status == 401 and "Link" not in headers, (status, headers, body)
    from nvr.identity.authdb import AuthDatabase

    db = AuthDatabase(console.auth_db)
    try:
        auditor = db.create_token("auditor", Role.AUDITOR, None, "test")
        yard_only = db.create_token("yard-monitor", Role.MONITOR, frozenset({"st-a/yard"}), "test")
    finally:
        db.close()
    status, headers, body = _options(console, path, auditor)  # no live-view permission
    assert status == 403 and "Link" not in headers, (status, headers, body)
    status, headers, body = _options(console, path, yard_only)  # not this camera
    assert status == 403 and body["error"] == "camera_forbidden" and "Link" not in headers, body
    status, headers, _ = _options(console, "/api/stations/st-a/cameras/yard/whep", yard_only)
    assert status == 204 and 'username="' in headers["Link"] and ':token_yard-monitor"' in headers["Link"], headers
    status, headers, body = _options(console, "/api/stations/st-z/cameras/cell-1/whep", console.token)
    assert status == 404 and body["error"] == "unknown_station", body
    status, headers, body = _options(console, "/api/stations/st-a/cameras/no-such/whep", console.token)
    assert status == 404 and "Link" not in headers, body
    # The console's token refused by the station: not the viewer's fault, and said so.
    status, headers, body = _options(console, "/api/stations/st-wrong/cameras/cell-1/whep", console.token)
    assert status == 502 and body["error"] == "station_refused" and "Link" not in headers, body
    # A station that never answers: the pre-flight is bounded (follow.timeout_seconds, 2 s here), and
    # viewers that hang up while the console waits on it leave nothing behind.
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", console.port)) as gone:
            gone.sendall(b"OPTIONS /api/stations/st-silent/cameras/cell-1/whep HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + console.token.encode() + b"\r\n\r\n")
    started = time.monotonic()
    status, headers, body = _options(console, "/api/stations/st-silent/cameras/cell-1/whep", console.token)
    assert status == 502 and body["error"] == "station_unreachable" and "timeout" in body["message"], body
    assert time.monotonic() - started < 5
    assert _options(console, path, console.token)[0] == 204  # the console still serves the others
    silent.close()
    # A station that is down: a clear 502 naming it, quickly, not a hung pre-flight.
    st_a.stop()
    started = time.monotonic()
    status, headers, body = _options(console, path, console.token)
    assert status == 502 and body["error"] == "station_unreachable" and "st-a" in body["message"], body
    assert time.monotonic() - started < 5
    for text in (console.log(), st_a.log()):
        assert TURN_SECRET not in text
