"""A camera that answers RTSP with nonsense: the daemon marks it offline and goes on recording the others.

:class:`HostileCamera` is an RTSP server on loopback whose every path is a
different kind of broken reply (random bytes, an HTTP answer, a bad status
line, a header that never ends, a Content-Length that lies, a broken SDP,
silence, a wrong CSeq, an endless 401, a redirect loop, and a real camera
whose stream turns into junk after PLAY).  One daemon follows all of them
and one good simulated camera: the good one records on without a gap, each
broken one is offline with a reason, the daemon stays healthy, nothing is
logged in a loop and no traceback reaches the log.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from tests.conftest import StationProcess, wait_until
from tests.rtsp_mangler import LoopbackServer

GOOD_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 packetization-mode=1\r\na=control:track1\r\n"
)
BROKEN_SDP = (
    "v=0\r\no=- x\r\nm=video abc RTP/AVP 96 97 98\r\na=rtpmap:96 H264/0\r\na=rtpmap:97\r\n"
    "a=fmtp:96 packetization-mode=1;sprop-parameter-sets=!!!!,@@@@\r\na=control:rtsp://[::1:bad/track\r\n"
    "m=audio -5 RTP/AVP 300\r\na=rtpmap:300 PCMU/0/-1\r\n"
)


def reply(cseq: str, status: str = "200 OK", headers: str = "", body: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n{headers}{length}\r\n{body}".encode()


class HostileCamera(LoopbackServer):
    """RTSP on 127.0.0.1; the path of the first request chooses how it misbehaves."""

    MODES = ("garbage", "http", "badstatus", "hugeheader", "lyinglength", "badsdp", "silence", "wrongcseq",
             "unauthorized", "redirect", "junkafterplay")

    def __init__(self, upstream_port: int) -> None:
        super().__init__("hostile-camera")
        self.upstream_port = upstream_port  # a real camera, for junkafterplay
        self.rng = random.Random(12)
        self.connections = 0

    def url(self, mode: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mode}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            mode = head.split(b" ", 2)[1].decode(errors="replace").rsplit("/", 1)[-1]
            if mode == "junkafterplay":
                await self._junk_after_play(head, reader, writer)
            else:
                await self._answer(mode, head, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, mode: str, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            lines = head.decode(errors="replace").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            cseq = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("cseq:")), "0")
            if mode == "garbage":
                writer.write(self.rng.randbytes(4096))
                await writer.drain()
                return
            if mode == "http":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello")
            elif mode == "badstatus":
                writer.write(b"RTSP/1.0 abc\r\n\xff\xfe\r\n\r\n")
            elif mode == "hugeheader":
                writer.write(b"RTSP/1.0 200 OK\r\nCSeq: " + cseq.encode() + b"\r\nX-Junk: ")
                for _ in range(64):
                    writer.write(b"a" * 16384)
                    await writer.drain()
                await asyncio.sleep(3600)  # the header never ends
            elif mode == "silence":
                await asyncio.sleep(3600)
            elif mode == "wrongcseq":
                writer.write(reply("999", headers="Public: OPTIONS, DESCRIBE, SETUP, PLAY\r\n"))
            elif mode == "unauthorized":
                writer.write(reply(cseq, "401 Unauthorized", 'WWW-Authenticate: Digest realm="x", nonce=""\r\n'))
            elif mode == "redirect":
                writer.write(reply(cseq, "302 Moved", f"Location: rtsp://127.0.0.1:{self.port}/redirect\r\n"))
            elif method == "OPTIONS":
                writer.write(reply(cseq, headers="Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"))
            elif mode == "lyinglength" and method == "DESCRIBE":
                writer.write(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Type: application/sdp\r\n"
                             f"Content-Length: 100000000\r\n\r\n{GOOD_SDP}".encode())
                await writer.drain()
                await asyncio.sleep(3600)
            elif mode == "badsdp" and method == "DESCRIBE":
                writer.write(reply(cseq, headers="Content-Type: application/sdp\r\n", body=BROKEN_SDP))
            else:
                writer.write(reply(cseq, "400 Bad Request"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")

    async def _junk_after_play(self, head: bytes, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        """The real camera's dialogue, then random bytes instead of interleaved RTP once PLAY is answered."""
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        ours, theirs = f"127.0.0.1:{self.port}".encode(), f"127.0.0.1:{self.upstream_port}".encode()
        path = b"/junkafterplay"
        playing = asyncio.Event()

        async def requests(first: bytes) -> None:
            data = first
            while data:
                if b"PLAY " in data:
                    playing.set()
                up_writer.write(data.replace(ours, theirs).replace(path, b"/stream"))
                await up_writer.drain()
                data = await reader.read(65536)

        async def replies() -> None:
            while not playing.is_set() or not up_reader.at_eof():
                data = await up_reader.read(65536)
                if not data:
                    return
                if playing.is_set() and b"RTSP/1.0" not in data:
                    break
                writer.write(data.replace(theirs, ours).replace(b"/stream", path))
                await writer.drain()
            for _ in range(200):  # interleaved frames with wild lengths and channels, then raw junk
                junk = b"$" + bytes([self.rng.randrange(256)]) + self.rng.randbytes(2) + self.rng.randbytes(300)
                writer.write(junk if self.rng.random() < 0.7 else self.rng.randbytes(500))
                await writer.drain()
                await asyncio.sleep(0.01)

        try:
            await asyncio.gather(requests(head), replies())
        finally:
            up_writer.close()


def recorded(daemon: StationProcess, camera: str) -> list[Any]:
    from recorder.index import SegmentIndex

    index = SegmentIndex(daemon.storage / "index.sqlite3")
    try:
        return list(index.all_segments(camera))
    finally:
        index.close()


def test_cameras_answering_rtsp_with_nonsense_never_stop_the_good_one_recording(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    good = cameras("good", width=320, height=240, fps=10, gop=10)
    hostile = HostileCamera(good.port)
    hostile.start()
    try:
        entries = [{"id": "good", "name": "Good", "url": good.url}]
        entries += [{"id": mode, "name": mode, "url": hostile.url(mode)} for mode in HostileCamera.MODES]
        # At INFO: the expected failures leave their tracebacks at DEBUG only; any traceback is a bug.
        daemon = daemon_factory(entries, storage={"segment_seconds": 2}, log={"level": "info"},
                                ingest={"open_timeout_seconds": 3, "read_timeout_seconds": 3,
                                        "backoff_initial_seconds": 0.5, "backoff_max_seconds": 2})
        daemon.wait_state("good", "online", timeout=30)
        started = time.time()
        wait_until(lambda: hostile.connections >= 3 * len(HostileCamera.MODES), 40,
                   "the daemon did not keep retrying the broken cameras")
        time.sleep(max(0.0, started + 20 - time.time()))  # at least 20 s of nonsense

        states = {mode: daemon.camera(mode) for mode in HostileCamera.MODES}
        for mode, state in states.items():
            if mode != "junkafterplay":  # that one connects for real before the junk arrives
                assert state["state"] != "online", (mode, state)
            assert state["state_message"] is None or "Traceback" not in state["state_message"]
        assert daemon.get("/healthz")[0] == 200
        assert daemon.camera("good")["state"] == "online"
        segments = [s for s in recorded(daemon, "good") if s.end > started]
        assert len(segments) >= 7, f"only {len(segments)} segments of the good camera in 20 s"
        ends = sorted((s.start, s.end) for s in segments)
        gaps = [b[0] - a[1] for a, b in zip(ends, ends[1:], strict=False)]
        assert max(gaps, default=0.0) < 0.5, f"the good camera's recording has gaps: {gaps}"
        log = daemon.log()
        assert "Traceback" not in log, log[log.find("Traceback") - 1500:log.find("Traceback") + 2500]
        lines = log.count("\n")
        assert lines < 20_000, f"{lines} log lines in about 25 s: something logs in a loop"
    finally:
        hostile.stop()
