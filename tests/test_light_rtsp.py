"""The benchmark's light camera server (sim/light_rtsp.py) is a faithful live 1080p25 camera.

What FFmpeg and the daemon make of it (ffprobe, an ffmpeg recording decoded
again, the daemon recording it), then the wire itself with raw RTSP clients on
the server's own event loop: RTP per RFC 6184 that continues across loops of
the clip, sender reports, live (a client that comes later gets the current
frame), a client that stops reading loses frames without holding up the other
client of that camera, and requests that are not RTSP get a 4xx and break
nothing.  The tests' own cameras stay GStreamer's (sim/camsim.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.common import clip
from recorder.index import SegmentIndex
from sim.light_rtsp import Clip, LightCameras, LightRtspServer
from tests.conftest import StationProcess

FPS = 25


@pytest.fixture(scope="module")
def clip_path() -> Path:
    """A 4 s 1080p25 clip (2 s GOP): a 10 s recording crosses two loops of it."""
    return clip(1920, 1080, seconds=4)


@pytest.fixture
def light(clip_path: Path) -> Iterator[LightCameras]:
    with LightCameras(2, clip_path, fps=FPS) as cameras:
        yield cameras


def test_ffmpeg_and_the_daemon_take_a_light_camera_for_a_1080p25_h264_camera(
        light: LightCameras, daemon_factory: Callable[..., StationProcess], tmp_path: Path) -> None:
    url = light.urls[0]
    probe = subprocess.run(["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
                            "stream=codec_name,width,height,r_frame_rate", "-of", "json", url],
                           capture_output=True, text=True, timeout=20)
    assert probe.returncode == 0, probe.stderr
    assert [(s["codec_name"], s["width"], s["height"], s["r_frame_rate"]) for s in json.loads(probe.stdout)["streams"]
            ] == [("h264", 1920, 1080, "25/1")]

    # ffmpeg and the daemon on the same camera at once: all clients of a camera share its live stream
    daemon = daemon_factory([{"id": "light", "name": "light", "url": url}], storage={"segment_seconds": 4})
    out = tmp_path / "out.mp4"
    ffmpeg = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "warning", "-rtsp_transport", "tcp", "-i", url,
                               "-c", "copy", "-t", "10", str(out)], stderr=subprocess.PIPE, text=True)
    daemon.wait_state("light", "online", timeout=20)
    online = time.time()
    _, err = ffmpeg.communicate(timeout=30)
    assert ffmpeg.returncode == 0, err
    assert "missed" not in err and "error" not in err.lower(), err  # no RTP loss, nothing FFmpeg complains of
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"],
                            capture_output=True, text=True, timeout=30)
    assert decode.returncode == 0 and decode.stderr == "", decode.stderr
    count = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames",
                            "-of", "csv=p=0", str(out)], capture_output=True, text=True, timeout=30)
    # -t 10 counts from the first packet; copying starts at the first keyframe, up to 2 s of GOP later
    assert 10 * FPS * 0.75 <= int(count.stdout.strip()) <= 10 * FPS + 5, count.stdout

    camera = daemon.camera("light")
    assert (camera["codec"], camera["width"], camera["height"]) == ("h264", 1920, 1080)
    assert camera["invalid_packets"] == 0 and camera["reconnects"] == 0, camera
    assert camera["recording"], camera
    stopped = time.time()
    assert daemon.stop() == 0
    index = SegmentIndex(daemon.storage / "index.sqlite3")
    try:
        segments = index.all_segments("light")
    finally:
        index.close()
    covered = sum(max(0.0, min(s.end, stopped) - max(s.start, online)) for s in segments)
    assert covered >= 0.9 * (stopped - online), (covered, stopped - online, segments)


# ---------------------------------------------------------------------------- the wire, from raw clients


@dataclass
class RawClient:
    """An RTSP client on the test's loop that keeps every interleaved frame it gets, with when it came."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    cseq: int = 0
    session: str = ""
    rtp: list[tuple[float, bytes]] = field(default_factory=list)
    rtcp: list[bytes] = field(default_factory=list)

    @classmethod
    async def connect(cls, port: int, receive_buffer: int | None = None) -> RawClient:
        sock = socket.socket()
        if receive_buffer is not None:  # a small window, so a client that stops reading is full at once
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def request(self, method: str, url: str, **headers: str) -> tuple[int, dict[str, str], str]:
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}"]
        if self.session:
            lines.append(f"Session: {self.session}")
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await read_answer(self.reader)

    async def play(self, url: str) -> dict[str, str]:
        assert (await self.request("DESCRIBE", url, Accept="application/sdp"))[0] == 200
        status, headers, _ = await self.request("SETUP", url + "/trackID=0",
                                                Transport="RTP/AVP/TCP;unicast;interleaved=0-1")
        assert status == 200, headers
        self.session = headers["session"].split(";")[0]
        status, headers, _ = await self.request("PLAY", url, Range="npt=0.000-")
        assert status == 200, headers
        return headers

    async def receive(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                head = await asyncio.wait_for(self.reader.readexactly(4), left)
            except TimeoutError:
                return
            assert head[:1] == b"$", head
            body = await self.reader.readexactly(struct.unpack(">H", head[2:])[0])
            if head[1] == 0:
                self.rtp.append((loop.time(), body))
            else:
                self.rtcp.append(body)

    def close(self) -> None:
        self.writer.transport.abort()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], str]:
    """The next RTSP answer, past the interleaved frames that come before it."""
    while (first := await asyncio.wait_for(reader.readexactly(1), 10)) == b"$":
        await reader.readexactly(struct.unpack(">xH", await reader.readexactly(3))[0])
    head = (first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split(" ")[1]), headers, body.decode()


def run(clip_path: Path, story: Callable[[LightRtspServer], Any], **options: Any) -> None:
    async def main() -> None:
        server = LightRtspServer(Clip(clip_path, FPS), 2, **options)
        await server.start()
        try:
            await story(server)
        finally:
            await server.close()

    asyncio.run(main())


def test_a_light_camera_is_live_rfc_6184_over_tcp_continuing_across_loops_of_the_clip(clip_path: Path) -> None:
    async def story(server: LightRtspServer) -> None:
        # cam1 starts 37 frames into the 4 s clip: 3.5 s of it cross the clip's end
        first = await RawClient.connect(server.port)
        info = await first.play(server.urls[1])
        await first.receive(1.0)
        later = await RawClient.connect(server.port)
        later_info = await later.play(server.urls[1])
        await asyncio.gather(first.receive(2.5), later.receive(2.5))
        first.close()
        later.close()

        packets = [struct.unpack(">BBHII", body[:12]) for _, body in first.rtp]
        assert {p[0] for p in packets} == {0x80} and {p[1] & 0x7F for p in packets} == {96}
        seqs = [p[2] for p in packets]
        assert seqs[0] == int(info["rtp-info"].split("seq=")[1].split(";")[0])
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), "sequence numbers skip"
        assert len({p[4] for p in packets}) == 1, "one SSRC"
        # one timestamp per access unit, the marker on its last packet, 3600 ticks (1/25 s) from one to the next
        units = [p[3] for p in packets if p[1] & 0x80]
        assert all((b - a) & 0xFFFFFFFF == 90000 // FPS for a, b in zip(units, units[1:], strict=False))
        assert 3.5 * FPS * 0.8 <= len(units) <= 3.5 * FPS + 3  # paced by the clock: 25 a second, not faster
        assert len(units) > len(server.clip.frames) - server.cameras["cam1"].offset  # the clip looped
        assert units[0] == int(info["rtp-info"].split("rtptime=")[1])
        # FU-A fragments (type 28) of the 1080p slices, each NAL started and ended once; SPS+PPS in a STAP-A
        kinds = [body[12] & 0x1F for _, body in first.rtp]
        assert 28 in kinds and 24 in kinds
        starts = sum(1 for _, b in first.rtp if b[12] & 0x1F == 28 and b[13] & 0x80)
        ends = sum(1 for _, b in first.rtp if b[12] & 0x1F == 28 and b[13] & 0x40)
        assert abs(starts - ends) <= 1
        assert all(len(b) <= 1400 + 14 for _, b in first.rtp)
        # a sender report (with the same SSRC) came as it started playing, then every few seconds
        assert first.rtcp and all(r[1] == 200 and struct.unpack(">I", r[4:8])[0] == packets[0][4] for r in first.rtcp)

        # live: the later client got the frame of the moment (the same stream), not the clip's first
        later_packets = [struct.unpack(">BBHII", body[:12]) for _, body in later.rtp]
        assert later_packets[0][4] == packets[0][4]
        assert later_packets[0][2] == int(later_info["rtp-info"].split("seq=")[1].split(";")[0])
        behind = (later_packets[0][3] - units[0]) & 0xFFFFFFFF
        assert 0.8 * 90000 <= behind <= 2.0 * 90000, behind  # it came a second (and a handshake) later
        assert set(later_packets[:100]) <= set(packets)

    run(clip_path, story)


def test_a_client_that_stops_reading_loses_frames_and_does_not_hold_up_another_client(clip_path: Path) -> None:
    limit = 256 * 1024

    async def story(server: LightRtspServer) -> None:
        stuck = await RawClient.connect(server.port, receive_buffer=4096)
        await stuck.play(server.urls[0])
        stuck.writer.transport.pause_reading()  # and never reads again
        reading = await RawClient.connect(server.port)
        await reading.play(server.urls[0])
        await reading.receive(2.5)
        frames = sum(1 for _, body in reading.rtp if body[1] & 0x80)
        assert frames >= 2.5 * FPS * 0.8, frames
        gaps = [b - a for (a, _), (b, _) in zip(reading.rtp, reading.rtp[1:], strict=False)]
        assert max(gaps) < 0.5, max(gaps)  # never held up behind the stuck one
        seqs = [struct.unpack(">H", body[2:4])[0] for _, body in reading.rtp]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        session = next((s for s in server.sessions if s.dropped_frames), None)
        assert session is not None, "the client that stopped reading lost no frames: the server holds them all"
        largest = max(len(f.wire) for f in server.clip.frames)
        assert session.transport.get_write_buffer_size() <= limit + largest  # bounded, not all it was not sent
        assert session.dropped_frames >= 10  # counted
        assert server.stats()["cam0"] == session.dropped_frames and server.stats()["cam1"] == 0
        stuck.close()
        reading.close()

    run(clip_path, story, max_buffer=limit, send_buffer=64 * 1024)


def test_requests_that_are_not_rtsp_get_a_4xx_and_the_camera_plays_on(clip_path: Path) -> None:
    async def story(server: LightRtspServer) -> None:
        url = server.urls[1]
        watching = await RawClient.connect(server.port)
        await watching.play(url)
        watcher = asyncio.ensure_future(watching.receive(2.5))
        cases: list[tuple[bytes, int]] = [
            (b"HELLO\r\n\r\n", 400),
            (b"DESCRIBE " + url.encode() + b" HTTP/1.1\r\nCSeq: 1\r\n\r\n", 400),
            (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX: " + b"A" * 20000, 431),
            (b"ANNOUNCE " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\nContent-Length: x\r\n\r\n", 400),
            (b"ANNOUNCE " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 999999999\r\n\r\n", 400),
            (b"RECORD " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\n\r\n", 405),
            (b"DESCRIBE rtsp://127.0.0.1/cam99 RTSP/1.0\r\nCSeq: 1\r\n\r\n", 404),
            (b"DESCRIBE rtsp://127.0.0.1/../../etc/passwd RTSP/1.0\r\nCSeq: 1\r\n\r\n", 404),
            (b"SETUP " + url.encode() + b"/trackID=0 RTSP/1.0\r\nCSeq: 1\r\n"
             b"Transport: RTP/AVP;unicast;client_port=5000-5001\r\n\r\n", 461),
            (b"SETUP " + url.encode() + b"/trackID=0 RTSP/1.0\r\nCSeq: 1\r\n"
             b"Transport: RTP/AVP/TCP;interleaved=900-901\r\n\r\n", 461),
            (b"PLAY " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\n\r\n", 455),
            (b"PLAY " + url.encode() + b" RTSP/1.0\r\nCSeq: 1\r\nSession: forged\r\n\r\n", 454),
        ]
        for raw, status in cases:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            assert (await read_answer(reader))[0] == status, raw[:60]
            writer.transport.abort()
        # a client that sends an interleaved frame it never finishes, and one that leaves mid-request
        for raw in (b"$\x00\xff\xff" + b"x" * 100, b"OPTIONS " + url.encode() + b" RTSP/1.0\r\nCSe"):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            await writer.drain()
            writer.transport.abort()
        await watcher
        frames = sum(1 for _, body in watching.rtp if body[1] & 0x80)
        assert frames >= 2.5 * FPS * 0.8, frames
        status, headers, _ = await watching.request("GET_PARAMETER", url)  # the keepalive
        assert status == 200
        status, headers, _ = await watching.request("OPTIONS", url)
        assert status == 200 and "GET_PARAMETER" in headers["public"]
        watching.close()
        await asyncio.sleep(0.1)
        assert len(server.sessions) == 0, "connections left behind"

    run(clip_path, story)


def test_a_flood_of_connections_is_answered_503_past_the_limit_and_the_players_play_on(clip_path: Path) -> None:
    async def story(server: LightRtspServer) -> None:
        watching = await RawClient.connect(server.port)
        await watching.play(server.urls[0])
        idle = await RawClient.connect(server.port)
        assert (await idle.request("OPTIONS", server.urls[0]))[0] == 200
        flood = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
        for reader, _ in flood:
            assert (await read_answer(reader))[0] == 503
            assert await reader.read() == b""  # and closed
        idle.close()
        await asyncio.sleep(0.2)
        again = await RawClient.connect(server.port)
        assert (await again.request("OPTIONS", server.urls[0]))[0] == 200  # room again
        await watching.receive(1.0)
        assert sum(1 for _, body in watching.rtp if body[1] & 0x80) >= 0.8 * FPS
        again.close()
        watching.close()

    run(clip_path, story, max_sessions=2)


def test_the_light_server_process_serves_every_camera_and_stops(light: LightCameras) -> None:
    assert [c.name for c in light.cameras] == ["cam0", "cam1"]
    assert len({c.url for c in light.cameras}) == 2 and {c.pid for c in light.cameras} == {light.pid}
    for url in light.urls:
        with socket.create_connection(("127.0.0.1", int(url.split(":")[2].split("/")[0])), timeout=5) as sock:
            sock.sendall(f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 7\r\n\r\n".encode())
            answer = b""
            while b"a=control:trackID=0" not in answer:
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"RTSP/1.0 200 OK\r\nCSeq: 7\r\n") and b"sprop-parameter-sets=Z" in answer
    assert light.dropped_frames() == 0  # what the benchmark asks after each phase
    pid = light.pid
    assert pid is not None
    light.stop()
    assert not Path(f"/proc/{pid}").exists()
