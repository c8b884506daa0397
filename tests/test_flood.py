"""Hostile HTTP clients: idle and half-sent connections, slow bodies, floods.

The story: a compromised PC on the station network opens thousands of
connections to the API port and never finishes a request.  The cameras must
keep recording on time, a signed-in technician must still get answers, the
daemon must stay within its descriptors and its log must not fill the disk.

The first tests run the web server in-process (``start_web`` on a tiny app) to
check each limit on its own; the last ones flood the real daemon, started with
the descriptor limit a systemd service gets (soft 1024).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import resource
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from nvr.base.config import WebLimits
from nvr.service import start_web
from tests.conftest import REPO, StationProcess, free_port, wait_until
from tests.test_access_process import self_signed
from tests.test_recording import rows as segments
from web import conn_limits

# -- each limit on its own, in-process ------------------------------------------------------------


@dataclass
class Site:
    port: int
    registry: CollectorRegistry
    release: asyncio.Event
    runner: web.AppRunner

    def metric(self, name: str, reason: str | None = None) -> float:
        labels = f'{{reason="{reason}"}}' if reason else ""
        text = generate_latest(self.registry).decode()
        match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    async def connect(self, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))

    async def get(self, path: str = "/hello", source: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
        reader, writer = await self.connect(source)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            return parse(await asyncio.wait_for(reader.read(), 5))
        finally:
            writer.close()


def parse(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else {}


async def keepalive_get(site: Site) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that made one request and stays open (keep-alive), like a browser's."""
    reader, writer = await site.connect()
    writer.write(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture
async def site_factory() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def make(ssl_context: ssl.SSLContext | None = None, **limits: Any) -> Site:
        release = asyncio.Event()

        async def hello(_request: web.Request) -> web.Response:
            return web.json_response({"hello": "world"})

        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"bytes": len(await request.read())})

        async def slow(_request: web.Request) -> web.Response:
            await release.wait()
            return web.json_response({"slow": True})

        app = web.Application()
        app.router.add_get("/hello", hello)
        app.router.add_post("/echo", echo)
        app.router.add_get("/slow", slow)
        registry = CollectorRegistry(auto_describe=False)
        port = free_port()
        runner = await start_web(app, "127.0.0.1", port, ssl_context, limits=WebLimits(**limits), registry=registry)
        runners.append(runner)
        return Site(port, registry, release, runner)

    yield make
    for runner in runners:
        await runner.cleanup()


async def test_a_half_sent_request_is_cut_off_after_the_header_timeout(site_factory) -> None:  # type: ignore[no-untyped-def]
    site = await site_factory(header_timeout_seconds=0.5)
    silent_reader, _silent = await site.connect()
    half_reader, half = await site.connect()
    half.write(b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    assert await closed_by_server(silent_reader, 3) and await closed_by_server(half_reader, 3)
    assert site.metric("nvr_http_connections_closed_total", "header_timeout") == 2
    assert await site.get() == (200, {"hello": "world"})  # a complete request in time is served


async def test_a_body_sent_too_slowly_gets_408(site_factory) -> None:  # type: ignore[no-untyped-def]
    site = await site_factory(body_timeout_seconds=0.5)
    reader, writer = await site.connect()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    status, body = parse(await asyncio.wait_for(reader.read(), 15))
    writer.close()
    assert (status, body["error"]) == (408, "request_timeout")
    assert site.metric("nvr_http_connections_closed_total", "body_timeout") == 1


async def test_an_idle_keepalive_connection_closes_after_the_keepalive_timeout(site_factory) -> None:  # type: ignore[no-untyped-def]
    site = await site_factory(keepalive_timeout_seconds=0.5)
    reader, _writer = await keepalive_get(site)
    assert await closed_by_server(reader, 3)


async def test_at_the_cap_a_client_from_another_address_takes_the_place_of_the_longest_idle(site_factory) -> None:  # type: ignore[no-untyped-def]
    site = await site_factory(max_connections=3)
    idle = [await keepalive_get(site) for _ in range(3)]  # all from 127.0.0.1
    assert site.metric("nvr_http_connections") == 3
    status, body = await site.get(source="127.0.0.1")  # the address holding them all gets no more
    assert (status, body["error"]) == (503, "too_many_connections")
    assert site.metric("nvr_http_connections_refused_total", "max_connections") == 1
    assert await site.get(source="127.0.0.2") == (200, {"hello": "world"})
    assert await closed_by_server(idle[0][0], 2), "the oldest idle keep-alive connection was not the one closed"
    assert site.metric("nvr_http_connections_closed_total", "evicted") == 1


async def test_busy_connections_are_kept_and_one_too_many_gets_503(site_factory) -> None:  # type: ignore[no-untyped-def]
    site = await site_factory(max_connections_per_address=2)
    busy = []
    for _ in range(2):
        reader, writer = await site.connect()
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        busy.append((reader, writer))
    await asyncio.sleep(0.2)  # both requests are being handled
    status, body = await site.get()
    assert (status, body["error"]) == (503, "too_many_connections")
    assert site.metric("nvr_http_connections_refused_total", "per_address") == 1
    site.release.set()
    for reader, _writer in busy:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    for _reader, writer in busy:
        writer.close()
    await asyncio.sleep(0.2)
    assert await site.get() == (200, {"hello": "world"})


async def test_under_tls_a_connection_that_never_handshakes_is_closed_and_clients_are_served(  # type: ignore[no-untyped-def]
        site_factory, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    site = await site_factory(ssl_context=server_context, header_timeout_seconds=0.5)
    silent_reader, _silent = await site.connect()  # TCP only: no ClientHello, ever
    client_context = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port, ssl=client_context)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert parse(await asyncio.wait_for(reader.read(), 5)) == (200, {"hello": "world"})
    writer.close()
    assert await closed_by_server(silent_reader, 3)
    assert site.metric("nvr_http_connections_closed_total", "header_timeout") == 1


async def test_accept_out_of_descriptors_pauses_accepting_and_logs_once(  # type: ignore[no-untyped-def]
        site_factory, caplog: pytest.LogCaptureFixture) -> None:
    site = await site_factory()
    listener = next(iter(site.runner.sites))._server
    assert isinstance(listener, conn_limits._Listener)

    class Exhausted:
        def accept(self) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

    with caplog.at_level(logging.DEBUG, logger="web.conn_limits"):
        for _ in range(100):  # as if the kernel said EMFILE to a hundred wake-ups
            listener._accept(Exhausted())  # type: ignore[arg-type]
        assert site.metric("nvr_http_connections_refused_total", "out_of_descriptors") == 100
        assert len([r for r in caplog.records if r.name == "web.conn_limits"]) == 1
        await asyncio.sleep(1.2)  # accepting resumes by itself
        assert await site.get() == (200, {"hello": "world"})


# -- a flood against the real daemon -----------------------------------------------------------

FLOOD_CONNECTIONS = 2000
FLOOD_ADDRESSES = 40  # 127.0.1.1-40: 50 connections each, under the per-address cap, so the total cap is hit
FLOOD_SECONDS = 15.0
SEGMENT_SECONDS = 4


class Flood:
    """2,000 connections from loopback that never finish a request; reopened when the daemon closes one.

    Runs in a process of its own (this file as a script), so that it competes with the
    daemon for CPU as an attacker's machine would not, but never with the test's own client.
    """

    def __init__(self, port: int, stats: Path) -> None:
        self.stats = stats
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.test_flood", str(port), str(stats)], cwd=REPO)

    def counts(self) -> dict[str, int]:
        try:
            return json.loads(self.stats.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {"opened": 0, "closed_by_server": 0, "failed_connects": 0}

    def stop(self) -> dict[str, int]:
        self.proc.terminate()
        self.proc.wait(30)
        return self.counts()


async def flood(port: int, stats: Path) -> None:
    counts = {"opened": 0, "closed_by_server": 0, "failed_connects": 0}

    async def slot(i: int) -> None:
        source = f"127.0.1.{1 + i % FLOOD_ADDRESSES}"
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
            except OSError:  # refused (backlog full) or timed out: the daemon is not accepting
                counts["failed_connects"] += 1
                await asyncio.sleep(1)
                continue
            counts["opened"] += 1
            if i % 2:  # half of them start a request and never finish its headers
                writer.write(b"GET /api/cameras HTTP/1.1\r\nHost: station\r\nX-Slow: ")
            try:
                await reader.read()
            except OSError:
                pass
            counts["closed_by_server"] += 1
            writer.close()
            await asyncio.sleep(1)  # an attacker would reopen at once; once a second is pressure enough

    slots = [asyncio.create_task(slot(i)) for i in range(FLOOD_CONNECTIONS)]
    while True:
        tmp = stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts))
        tmp.replace(stats)
        await asyncio.sleep(0.5)
    del slots


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def soft_nofile(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open files"))
    return int(line.split()[3])


def metric(daemon: StationProcess, name: str) -> float:
    text = daemon.get("/metrics")[1].decode()
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


@pytest.mark.parametrize("hard", [1024, 4096], ids=["hard-1024", "hard-4096"])
def test_a_flood_of_idle_connections_neither_stops_recording_nor_locks_out_a_technician(  # type: ignore[no-untyped-def]
        cameras, daemon_factory, hard: int) -> None:
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > FLOOD_CONNECTIONS + 100, "the test itself needs the fds"
    a = cameras("fa", fps=15, gop=15)
    b = cameras("fb", fps=15, gop=15)
    daemon = daemon_factory(
        [{"id": "a", "name": "a", "url": a.url}, {"id": "b", "name": "b", "url": b.url}],
        nofile=(1024, hard), storage={"segment_seconds": SEGMENT_SECONDS},
    )
    assert daemon.proc is not None
    pid = daemon.proc.pid
    assert soft_nofile(pid) == hard, "the daemon did not raise its soft descriptor limit to the hard one"
    for camera in ("a", "b"):
        wait_until(lambda c=camera: len(segments(daemon.storage, c)) >= 1, 30, f"camera {camera} never recorded")
    baseline_fds = open_fds(pid)
    budget = metric(daemon, "nvr_http_descriptor_budget")
    limit = metric(daemon, "nvr_http_connections_limit")
    assert budget == hard - 256 - 2 * 16 and limit <= min(1024, budget)  # reserve: 256 + 16 per camera stream

    # Segments are noted when they first appear in the index, to tell a late one from an on-time one.
    seen: dict[tuple[str, int], float] = {}
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            now = time.time()
            for camera in ("a", "b"):
                for row in segments(daemon.storage, camera):
                    seen.setdefault((camera, row.id), now)
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, name="segments", daemon=True)
    watcher.start()
    log_before = len(daemon.log().splitlines())
    flood = Flood(daemon.port, daemon.workdir / "flood.json")
    started = time.time()
    answers: list[float] = []
    most_fds = 0
    try:
        # Every connection of the flood is attempted at once; those the daemon does not accept
        # wait in the kernel's queue or time out, as they would on a station.
        deadline = time.monotonic() + 15
        while flood.counts()["opened"] < FLOOD_CONNECTIONS and time.monotonic() < deadline:
            assert flood.proc.poll() is None, "the flood process died"
            time.sleep(0.2)
        measuring = time.time()
        while time.time() - measuring < FLOOD_SECONDS:
            most_fds = max(most_fds, open_fds(pid))
            t0 = time.monotonic()
            request = urllib.request.Request(daemon.base_url + "/api/cameras",
                                             headers={"Authorization": f"Bearer {daemon.token}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                listed = json.loads(response.read())
            answers.append(time.monotonic() - t0)
            assert {c["id"] for c in listed} == {"a", "b"}
            time.sleep(0.5)
        refused = metric(daemon, "nvr_http_connections_refused_total")
        closed = metric(daemon, "nvr_http_connections_closed_total")
        open_now = metric(daemon, "nvr_http_connections")
    finally:
        flooded = flood.stop()
        ended = time.time()
        time.sleep(SEGMENT_SECONDS + 2)
        watching.set()
        watcher.join(10)
    log_lines = daemon.log().splitlines()[log_before:]

    assert max(answers) < 1.0, f"/api/cameras took up to {max(answers):.2f} s under the flood"
    assert most_fds <= budget + baseline_fds < hard, (most_fds, budget, baseline_fds)
    assert open_now <= limit
    assert refused + closed > 0, "the flood never reached the limits"
    assert flooded["closed_by_server"] > 0
    for camera in ("a", "b"):
        rows = [r for r in segments(daemon.storage, camera) if r.end > started and r.start < ended]
        assert len(rows) >= (ended - started) // (SEGMENT_SECONDS + 1) - 1, f"camera {camera}: segments lost"
        for before, after in zip(rows, rows[1:], strict=False):
            assert after.start - before.end < 0.1, f"camera {camera}: a gap of {after.start - before.end:.1f} s"
        for row in rows:
            late = seen[(camera, row.id)] - row.end
            assert late < SEGMENT_SECONDS, f"camera {camera}: segment {row.id} indexed {late:.1f} s after its end"
    # The log says what happened, in a few lines, not once per connection.
    assert len(log_lines) < 200, f"{len(log_lines)} log lines during the flood:\n" + "\n".join(log_lines[-20:])
    assert not [line for line in log_lines if "Traceback" in line or "out of system resource" in line]
    assert any("HTTP connections refused or closed by the limits" in line for line in log_lines) or refused == 0


if __name__ == "__main__":
    asyncio.run(flood(int(sys.argv[1]), Path(sys.argv[2])))
