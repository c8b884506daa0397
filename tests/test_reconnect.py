"""Back within seconds: a camera that returns after an outage of any length is recorded again at once.

The expensive RTSP set-up backs off (capped exponential); a cheap probe (RTSP ``OPTIONS``) runs every
``ingest.probe_interval_seconds`` meanwhile and ends the wait the moment a camera that was not
answering answers again.
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time

import pytest

from streams.rtsp_source import probe_rtsp
from tests.conftest import wait_until
from tests.test_recording import rows

# The daemon's backoff grows to 30 s here, as in production: without the probe, a camera that returns
# after a long outage waits up to that long for the next set-up.
INGEST = {"backoff_initial_seconds": 0.5, "backoff_max_seconds": 30}  # the probe at its defaults


def entry(cam_id: str, url: str) -> dict[str, object]:
    return {"id": cam_id, "name": cam_id, "zone": "holding_cell", "url": url}


def scheduled_attempts(seconds: float) -> int:
    """Set-ups the capped backoff allows in ``seconds`` of outage."""
    delay, elapsed, count = INGEST["backoff_initial_seconds"], 0.0, 0
    while elapsed + delay <= seconds:
        elapsed += delay
        count += 1
        delay = min(delay * 2, INGEST["backoff_max_seconds"])
    return count


def _outage_then_back(cameras, daemon_factory, outage: float) -> None:  # type: ignore[no-untyped-def]
    cell = cameras("cell", fps=15, gop=15)
    other = cameras("other", fps=15, gop=15)
    # This one answers the probe all along but refuses our credentials: its backoff is never cut short.
    secure = cameras("secure", user="viewer", password="right")
    daemon = daemon_factory([entry("cell", cell.url), entry("other", other.url),
                             entry("bad", f"rtsp://viewer:${{BAD_PASS}}@127.0.0.1:{secure.port}/stream")],
                            env={"BAD_PASS": "wrong"}, ingest=INGEST, storage={"segment_seconds": 4})
    daemon.wait_state("cell", "online")
    daemon.wait_state("other", "online")
    daemon.wait_state("bad", "offline", reason="auth_failed", timeout=15)
    cell.stop()
    daemon.wait_state("cell", "offline", timeout=6)
    down_at = time.monotonic()
    before = daemon.camera("cell")["reconnects"]
    bad_before = daemon.camera("bad")["reconnects"]
    while time.monotonic() - down_at < outage:
        assert daemon.camera("other")["state"] == "online"  # the other camera records throughout
        time.sleep(1.0)
    attempts = daemon.camera("cell")["reconnects"] - before
    # Backoff still holds for the set-up: 0.5, 1, 2, 4, 8, 16, 30 … not one set-up per probe.
    assert attempts <= scheduled_attempts(outage) + 1, attempts
    assert daemon.camera("bad")["reconnects"] - bad_before <= scheduled_attempts(outage) + 1
    cell.start()  # returns once the camera's RTSP server is up
    returned_wall, returned = time.time(), time.monotonic()
    wait_until(lambda: daemon.camera("cell")["state"] == "online", 8, "the camera never came back", interval=0.05)
    # "online" waits for FFmpeg's stream probing too (the packets it buffers meanwhile are recorded).
    back_after = time.monotonic() - returned
    assert back_after < 4.0, f"online {back_after:.2f} s after the camera answered again"
    time.sleep(2)
    assert daemon.stop() == 0
    after = [s for s in rows(daemon.storage, "cell") if s.start > returned_wall - 1]
    assert after, "nothing recorded after the camera's return"
    # Recorded from within 2 s of the camera's return (the segment's start is its first frame's wall time).
    assert after[0].start - returned_wall < 2.0, after[0].start - returned_wall
    assert "[cell] the camera answers again; reconnecting now" in daemon.log()
    assert "[bad] the camera answers again" not in daemon.log()


def test_camera_down_16_s_after_backoff_grew_is_recording_within_2_s_of_return(cameras, daemon_factory
                                                                              ) -> None:  # type: ignore[no-untyped-def]
    # After 0.5 + 1 + 2 + 4 + 8 s of failed set-ups the next waits 16 s: without the probe, a camera back
    # at 16 s would wait until 31.5 s.
    _outage_then_back(cameras, daemon_factory, outage=16)


@pytest.mark.extended
def test_camera_down_90_s_is_recording_within_2_s_of_return(cameras, daemon_factory
                                                           ) -> None:  # type: ignore[no-untyped-def]
    _outage_then_back(cameras, daemon_factory, outage=90)


class BootingCamera:
    """What a camera's RTSP port says while it boots: it answers, but every request is 503."""

    def __init__(self, port: int) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), self.Handler, bind_and_activate=False)
        self.server.allow_reuse_address = True
        self.server.daemon_threads = True
        self.server.server_bind()
        self.server.server_activate()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while True:
                request = b""
                while not request.endswith(b"\r\n\r\n"):
                    chunk = self.rfile.readline()
                    if not chunk:
                        return
                    request += chunk
                cseq = next((line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                             if line.lower().startswith(b"cseq:")), b"1")
                self.wfile.write(b"RTSP/1.0 503 Service Unavailable\r\nCSeq: " + cseq + b"\r\n\r\n")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.extended  # 20 s: kept out of the default suite's time budget
def test_a_camera_still_booting_when_it_answers_again_is_retried_soon_not_after_the_grown_backoff(
        cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    cell = cameras("cell", fps=15, gop=15)
    daemon = daemon_factory([entry("cell", cell.url)], ingest=INGEST)
    daemon.wait_state("cell", "online")
    cell.stop()
    daemon.wait_state("cell", "offline", timeout=6)
    time.sleep(8)  # the set-up backoff has grown to 8 s, then 16 s
    booting = BootingCamera(cell.port)
    try:
        daemon.wait_state("cell", "offline", reason="stream_error", timeout=4)  # tried at once: 503
        time.sleep(2)
    finally:
        booting.stop()
    cell.start()
    returned = time.monotonic()
    daemon.wait_state("cell", "online", timeout=15)
    # The backoff started again from 0.5 s when the camera answered: back within its first few steps.
    assert time.monotonic() - returned < 6.0


# -- the probe on its own, against hostile listeners ---------------------------------------------------


async def _serve(handler) -> tuple[asyncio.Server, int]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_probe_counts_only_an_rtsp_answer_and_is_bounded() -> None:
    async def scenario() -> None:
        async def rtsp_401(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            # No credentials go out in the probe, even when the camera's URL carries them.
            assert b"secret" not in request and request.startswith(b"OPTIONS rtsp://127.0.0.1:")
            writer.write(b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n\r\n")
            await writer.drain()
            writer.close()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)  # accepts, never answers (a dead stack behind a port forward)

        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
            await writer.drain()
            writer.close()

        servers = []
        ports = {}
        for name, handler in (("rtsp", rtsp_401), ("silent", silent), ("http", http)):
            server, ports[name] = await _serve(handler)
            servers.append(server)
        closed_server, closed = await _serve(http)
        closed_server.close()
        await closed_server.wait_closed()
        try:
            assert await probe_rtsp(f"rtsp://admin:secret@127.0.0.1:{ports['rtsp']}/stream", 1.0) is True
            started = time.monotonic()
            assert await probe_rtsp(f"rtsp://127.0.0.1:{ports['silent']}/stream", 0.5) is False
            assert time.monotonic() - started < 1.5  # bounded by its timeout
            assert await probe_rtsp(f"rtsp://127.0.0.1:{ports['http']}/stream", 1.0) is False
            assert await probe_rtsp(f"rtsp://127.0.0.1:{closed}/stream", 1.0) is False
            assert await probe_rtsp(f"rtsps://127.0.0.1:{ports['silent']}/stream", 1.0) is True  # TCP only
            assert await probe_rtsp("rtsp://127.0.0.1:99999/stream", 1.0) is False  # bad port: no exception
        finally:
            for server in servers:
                server.close()

    asyncio.run(scenario())

