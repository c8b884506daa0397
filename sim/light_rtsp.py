"""Many simulated live H.264 cameras in one asyncio process: a light RTSP/1.0 server for the benchmarks.

GStreamer's RTSP server (``sim/camsim.py``, one process per camera) costs about
2 % of a core per 1080p25 camera; at 64 cameras the simulators alone would take
most of a 2-core machine.  This server plays the same pre-encoded Annex B clip
for N cameras from one process at a small fraction of that:

- one listening port, one path per camera: ``rtsp://host:port/cam0`` ... ``/camN-1``;
- each camera is live, paced by the clock at the clip's frame rate, looping
  the clip (from its first IDR) forever.  A client that connects later gets
  the current frame, every client of a camera the same stream (one SSRC,
  sequence numbers and 90 kHz timestamps that continue across loops);
  cameras start at different places in the clip, so their keyframes do not
  all fall on the same tick, and they send in ``send_slots`` groups (4)
  spread over the frame interval, so that their readers are not all woken
  at the same instant, as with independent cameras;
- RTSP as cameras speak it to FFmpeg: OPTIONS, DESCRIBE (SDP with
  ``sprop-parameter-sets``), SETUP of ``RTP/AVP/TCP;interleaved=a-b`` only
  (anything else is 461), PLAY with ``RTP-Info``, GET_PARAMETER and OPTIONS as
  keepalives, TEARDOWN; a session that hears nothing from its client for the
  session timeout is closed.  RTCP sender reports (with an SDES CNAME) go on
  the RTCP channel when a client starts playing and every ``sr_seconds``;
- cheap: the clip is packetised once at start into one buffer per access unit
  holding each packet's ``$`` interleave header, RTP header and payload.  Per
  camera and frame only the sequence number, timestamp and SSRC are patched
  in (``struct.pack_into``) and one ``bytes`` copy is made, which every client
  of that camera gets with one ``transport.write``;
- a client that does not read (its transport holds more than ``max_buffer``
  bytes past a socket send buffer of ``send_buffer``, as small as a camera's
  rather than Linux's autotuned megabytes) loses frames, counted, until it has drained to half of that, and
  resumes on a keyframe; one stuck for a whole session timeout is closed.
  Past ``max_sessions`` connections a new one is answered 503 and closed.
  No client can hold up another, or another camera.

Everything runs on one event loop thread.  Standard library only::

    python sim/light_rtsp.py --cameras 64 --clip bench/results/clip-1080p-4000k-25fps-10s.h264 --fps 25

prints ``{"port": ..., "urls": [...]}`` on one line once it listens, and runs
until SIGTERM or SIGINT (or its parent exits); on SIGUSR1 it prints
``{"dropped_frames": {camera: count}}``, the frames lost so far by clients
that did not read (also on stderr at exit if any were).  :class:`LightCameras` starts it
as a child process from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim import rtsp_wire as rtsp

_SERVER = "nvr light camera"
_PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN"
_PATCH = struct.Struct(">HII")  # sequence number, timestamp, SSRC: bytes 2..11 of an RTP header
# Groups of cameras sending at different moments of a frame interval.  All at once (1) is cheapest here but
# wakes every reader together, which cost the daemon 1.5x its CPU with GStreamer's cameras; 4 cost it the same.
_SLOTS = 4
_MAX_LAG = 2.0  # seconds behind the clock after which the frames missed are skipped, as a live camera does


# ---------------------------------------------------------------------------- the clip, packetised once


def access_units(data: bytes) -> list[tuple[bytes, bool]]:
    """An Annex B stream cut into (access unit, has an IDR), from its first IDR (H.264 7.4.1.2.3)."""
    units: list[list[bytes]] = []
    vcl = False
    for unit in rtsp.nals(data):
        kind = unit[0] & 0x1F
        starts = kind == 9 or (kind in (6, 7, 8, 14, 15, 16, 17, 18) and vcl) or \
            (kind in (1, 5) and vcl and len(unit) > 1 and unit[1] & 0x80)  # first_mb_in_slice == 0
        if starts or not units:
            units.append([])
            vcl = False
        units[-1].append(unit)
        vcl = vcl or kind in (1, 5)
    out = [(b"".join(b"\x00\x00\x00\x01" + u for u in au), any(u[0] & 0x1F == 5 for u in au)) for au in units]
    first = next((k for k, (_, idr) in enumerate(out) if idr), None)
    if first is None:
        raise ValueError("no IDR access unit in the clip")
    return out[first:]


@dataclass(slots=True)
class Frame:
    """One access unit as it goes on the wire: ``$``, channel, length, RTP header, payload, per packet."""

    wire: bytearray
    headers: tuple[int, ...]  # offset of each packet's RTP header in ``wire``
    keyframe: bool


class Clip:
    def __init__(self, path: Path, fps: int) -> None:
        units = access_units(path.read_bytes())
        sets = rtsp.parameter_sets(rtsp.nals(units[0][0]))
        if sets is None:
            raise ValueError("the clip's first IDR has no SPS and PPS before it")
        self.sps, self.pps = sets
        self.fps = fps
        self.frames = [self._frame(au, idr) for au, idr in units]

    @staticmethod
    def _frame(au: bytes, keyframe: bool) -> Frame:
        payloads = rtsp.packetise(au)
        wire, headers = bytearray(), []
        for k, payload in enumerate(payloads):
            headers.append(len(wire) + 4)
            marker = 0x80 if k == len(payloads) - 1 else 0  # the last packet of the access unit (RFC 6184 5.1)
            wire += struct.pack(">cBH", b"$", 0, 12 + len(payload)) + bytes([0x80, marker | 96]) + bytes(10)
            wire += payload
        return Frame(wire, tuple(headers), keyframe)


# ---------------------------------------------------------------------------- cameras and their clients


@dataclass(slots=True, eq=False)
class Session:
    transport: asyncio.Transport
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    camera: LiveCamera | None = None
    channels: tuple[int, int] = (0, 1)
    playing: bool = False
    heard: float = 0.0  # loop time the client last sent anything
    full_since: float | None = None  # loop time it started losing frames for not reading
    resync: bool = True  # a sender report is due before its next frame (its first)
    dropped_frames: int = 0


@dataclass(slots=True, eq=False)
class LiveCamera:
    name: str
    offset: int  # where in the clip this camera's frame 0 is
    group: int = 0  # which of the frame interval's send slots is this camera's
    ssrc: int = field(default_factory=lambda: int.from_bytes(os.urandom(4), "big"))
    seq: int = field(default_factory=lambda: int.from_bytes(os.urandom(2), "big"))
    rtp_base: int = field(default_factory=lambda: int.from_bytes(os.urandom(4), "big"))
    packets: int = 0
    octets: int = 0
    dropped_frames: int = 0  # frames its clients lost for not reading, all sessions since start
    clients: list[Session] = field(default_factory=list)


class LightRtspServer:
    def __init__(self, clip: Clip, cameras: int, *, host: str = "127.0.0.1", port: int = 0,
                 max_buffer: int = 2 << 20, send_buffer: int = 512 << 10, session_timeout: float = 60.0,
                 sr_seconds: float = 5.0, max_sessions: int = 1024, send_slots: int = _SLOTS) -> None:
        self.clip = clip
        self.max_sessions = max_sessions
        self.host, self.port = host, port
        self.max_buffer = max_buffer
        self.send_buffer = send_buffer
        self.session_timeout = session_timeout
        self.sr_seconds = sr_seconds
        spread = len(clip.frames)
        self._slots = max(1, min(cameras, send_slots))
        self.cameras = {f"cam{i}": LiveCamera(f"cam{i}", (i * 37) % spread, i % self._slots) for i in range(cameras)}
        self._groups = [[c for c in self.cameras.values() if c.group == g] for g in range(self._slots)]
        self.sessions: set[Session] = set()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0
        self._slot = 0  # send slots since start: frames since start times the slots per frame

    @property
    def urls(self) -> list[str]:
        return [f"rtsp://{self.host}:{self.port}/{name}" for name in self.cameras]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=rtsp.MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        self._t0 = loop.time()
        self._tasks = [asyncio.create_task(self._pace(), name="light-rtsp-pace"),
                       asyncio.create_task(self._housekeep(), name="light-rtsp-housekeep")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.transport.abort()

    def stats(self) -> dict[str, int]:
        """Frames lost by clients that did not read, per camera, since start."""
        return {c.name: c.dropped_frames for c in self.cameras.values()}

    def rtp_time(self, tick: int) -> int:
        return tick * 90000 // self.clip.fps

    # -- the clock ---------------------------------------------------------------------------

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        fps, slots = self.clip.fps, self._slots
        while True:
            late = loop.time() - (self._t0 + self._slot / (fps * slots))
            if late < 0:
                await asyncio.sleep(-late)
            elif late > _MAX_LAG:  # the process was stopped or starved: the cameras' clocks ran on
                self._slot += int(late * fps) * slots
                continue
            tick, group = divmod(self._slot, slots)
            self._slot += 1
            for camera in self._groups[group]:
                self._send(camera, tick)
            if late > 0:
                await asyncio.sleep(0)  # catching up: let requests through between frames

    def _send(self, camera: LiveCamera, tick: int) -> None:
        frame = self.clip.frames[(camera.offset + tick) % len(self.clip.frames)]
        if not camera.clients:
            return
        seq = camera.seq
        camera.seq = (seq + len(frame.headers)) & 0xFFFF
        camera.packets += len(frame.headers)
        camera.octets += len(frame.wire) - 16 * len(frame.headers)  # payload only: not the $ and RTP headers
        stamp, ssrc, wire = (camera.rtp_base + self.rtp_time(tick)) & 0xFFFFFFFF, camera.ssrc, frame.wire
        for offset in frame.headers:
            _PATCH.pack_into(wire, offset + 2, seq, stamp, ssrc)
            seq = (seq + 1) & 0xFFFF
        data = bytes(wire)
        other: dict[int, bytes] = {}
        for session in camera.clients:
            if not self._room(camera, session, frame.keyframe, len(data)):
                continue
            if session.resync:
                session.resync = False
                session.transport.write(self._sender_report(camera, session.channels[1]))
            channel = session.channels[0]
            if channel == 0:
                session.transport.write(data)
                continue
            if channel not in other:
                patched = bytearray(data)
                for offset in frame.headers:
                    patched[offset - 3] = channel
                other[channel] = bytes(patched)
            session.transport.write(other[channel])

    def _room(self, camera: LiveCamera, session: Session, keyframe: bool, size: int) -> bool:
        """Whether this frame goes to that client; a client that does not read loses frames, never the others."""
        pending = session.transport.get_write_buffer_size()
        if session.full_since is None and pending + size <= self.max_buffer:
            return True
        if session.full_since is not None and keyframe and pending <= self.max_buffer // 2:
            session.full_since = None  # drained: back in on a keyframe, so its decoder starts clean
            return True
        if session.full_since is None:
            session.full_since = asyncio.get_running_loop().time()
        session.dropped_frames += 1
        camera.dropped_frames += 1
        return False

    def _sender_report(self, camera: LiveCamera, channel: int) -> bytes:
        """An RTCP compound packet (RFC 3550 6.4.1, 6.5): a sender report and an SDES with the CNAME."""
        loop = asyncio.get_running_loop()
        wall = time.time() + rtsp.NTP_EPOCH
        sent_at = self._t0 + camera.group / (self.clip.fps * self._slots)  # when its frame 0 went out
        stamp = (camera.rtp_base + round((loop.time() - sent_at) * 90000)) & 0xFFFFFFFF
        sr = struct.pack(">BBHIIIIII", 0x80, 200, 6, camera.ssrc, int(wall) & 0xFFFFFFFF,
                         int((wall % 1) * (1 << 32)) & 0xFFFFFFFF, stamp, camera.packets & 0xFFFFFFFF,
                         camera.octets & 0xFFFFFFFF)
        cname = f"{camera.name}@{self.host}".encode()[:255]
        chunk = struct.pack(">IBB", camera.ssrc, 1, len(cname)) + cname + b"\x00"
        chunk += b"\x00" * (-len(chunk) % 4)
        sdes = struct.pack(">BBH", 0x81, 202, len(chunk) // 4) + chunk
        packet = sr + sdes
        return struct.pack(">cBH", b"$", channel, len(packet)) + packet

    async def _housekeep(self) -> None:
        loop = asyncio.get_running_loop()
        last_sr = loop.time()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for session in list(self.sessions):
                stuck = session.full_since is not None and now - session.full_since > self.session_timeout
                if stuck or now - session.heard > self.session_timeout:
                    session.transport.abort()  # the session timed out, as the SETUP answer said it would
            if now - last_sr >= self.sr_seconds:
                last_sr = now
                for camera in self.cameras.values():
                    for session in camera.clients:
                        if session.full_since is None:
                            session.transport.write(self._sender_report(camera, session.channels[1]))

    # -- RTSP --------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        if len(self.sessions) >= self.max_sessions:  # a flood of connections: the ones there keep playing
            transport.write(rtsp.answer("503 Service Unavailable", "0", _SERVER))
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and self.send_buffer:
            # a camera's socket buffer, not Linux's autotuned megabytes: a client that stops reading shows here
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        session = Session(transport, heard=loop.time())
        self.sessions.add(session)
        try:
            while True:
                request = await rtsp.read_request(reader)
                session.heard = loop.time()
                if request is not None and not self._answer(request, session):
                    break
        except rtsp.BadRequest as e:
            transport.write(rtsp.answer(e.status, "0", _SERVER))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.sessions.discard(session)
            if session.camera is not None and session in session.camera.clients:
                session.camera.clients.remove(session)
            if transport.get_write_buffer_size() > self.max_buffer:
                transport.abort()
            else:
                transport.close()  # what was answered last still goes out

    def _camera_of(self, url: str) -> LiveCamera | None:
        path = urllib.parse.urlsplit(url).path.strip("/")
        return self.cameras.get(path.split("/")[0])

    def _answer(self, request: rtsp.Request, session: Session) -> bool:
        """Answer one request; False to close the connection."""
        method, cseq = request.method, request.cseq
        write = session.transport.write
        if method == "OPTIONS":
            write(rtsp.answer("200 OK", cseq, _SERVER, {"Public": _PUBLIC}))
            return True
        if method in ("PLAY", "TEARDOWN", "GET_PARAMETER") and "session" in request.headers and \
                request.headers["session"].split(";")[0].strip() != session.id:
            write(rtsp.answer("454 Session Not Found", cseq, _SERVER))
            return True
        if method == "GET_PARAMETER":  # a keepalive
            write(rtsp.answer("200 OK", cseq, _SERVER, {"Session": session.id} if session.camera else None))
            return True
        if method == "TEARDOWN":
            write(rtsp.answer("200 OK", cseq, _SERVER))
            return False
        if method not in ("DESCRIBE", "SETUP", "PLAY"):
            write(rtsp.answer("405 Method Not Allowed", cseq, _SERVER, {"Allow": _PUBLIC}))
            return True
        camera = self._camera_of(request.url)
        if camera is None:
            write(rtsp.answer("404 Not Found", cseq, _SERVER))
            return True
        if method == "DESCRIBE":
            base = f"rtsp://{self.host}:{self.port}/{camera.name}/"
            write(rtsp.answer("200 OK", cseq, _SERVER, {"Content-Base": base}, self._sdp(camera)))
            return True
        if method == "SETUP":
            self._setup(request, session, camera)
            return True
        self._play(request, session, camera)
        return True

    def _sdp(self, camera: LiveCamera) -> str:
        return (f"v=0\r\no=- {camera.ssrc} 1 IN IP4 {self.host}\r\ns={camera.name}\r\nc=IN IP4 0.0.0.0\r\n"
                "t=0 0\r\na=control:*\r\na=range:npt=now-\r\n"
                + rtsp.h264_media(self.clip.sps, self.clip.pps, "trackID=0") + f"a=framerate:{self.clip.fps}\r\n")

    def _setup(self, request: rtsp.Request, session: Session, camera: LiveCamera) -> None:
        cseq = request.cseq
        channels = rtsp.interleaved_channels(request.headers.get("transport", ""))
        if channels is None:
            session.transport.write(rtsp.answer("461 Unsupported Transport", cseq, _SERVER))
            return
        if session.camera is not None and session.camera is not camera:
            session.transport.write(rtsp.answer("459 Aggregate Operation Not Allowed", cseq, _SERVER))
            return
        session.camera, session.channels = camera, channels
        session.transport.write(rtsp.answer("200 OK", cseq, _SERVER, {
            "Transport": f"RTP/AVP/TCP;unicast;interleaved={channels[0]}-{channels[1]};ssrc={camera.ssrc:08X}",
            "Session": f"{session.id};timeout={round(self.session_timeout)}"}))

    def _play(self, request: rtsp.Request, session: Session, camera: LiveCamera) -> None:
        cseq = request.cseq
        if session.camera is not camera:
            session.transport.write(rtsp.answer("455 Method Not Valid in This State", cseq, _SERVER))
            return
        if "session" not in request.headers:
            session.transport.write(rtsp.answer("454 Session Not Found", cseq, _SERVER))
            return
        tick = (self._slot + (camera.group - self._slot) % self._slots) // self._slots  # its next frame's
        stamp = (camera.rtp_base + self.rtp_time(tick)) & 0xFFFFFFFF
        session.transport.write(rtsp.answer("200 OK", cseq, _SERVER, {
            "Session": session.id, "Range": "npt=now-",
            "RTP-Info": f"url={request.url.rstrip('/')};seq={camera.seq};rtptime={stamp}"}))
        if not session.playing:
            session.playing, session.resync = True, True
            camera.clients.append(session)


# ---------------------------------------------------------------------------- from Python: a child process


@dataclass(slots=True, frozen=True)
class LightCamera:
    """One camera of a :class:`LightCameras` process, shaped like ``sim.client.SimCamera`` where a bench reads it."""

    name: str
    url: str
    pid: int | None


class LightCameras:
    """The light server as a child process: ``start()``, ``cameras``, ``urls``, ``pid``, ``stop()``."""

    def __init__(self, count: int, clip: Path, *, fps: int = 25, host: str = "127.0.0.1", port: int = 0,
                 max_buffer: int = 2 << 20, prefix: str = "cam", send_slots: int = _SLOTS) -> None:
        self.count, self.clip, self.fps, self.host, self.port = count, clip, fps, host, port
        self.max_buffer = max_buffer
        self.prefix = prefix
        self.send_slots = send_slots
        self.urls: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def cameras(self) -> list[LightCamera]:
        return [LightCamera(f"{self.prefix}{i}", url, self.pid) for i, url in enumerate(self.urls)]

    def start(self, timeout: float = 30.0) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--cameras", str(self.count), "--clip",
                str(self.clip), "--fps", str(self.fps), "--host", self.host, "--port", str(self.port),
                "--max-buffer-kb", str(self.max_buffer // 1024), "--send-slots", str(self.send_slots)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else b""  # printed once it listens, or its end if it exits
        if not line:
            self.stop()
            raise RuntimeError(f"the light RTSP server did not start (exit status {self._proc.poll()})")
        self.urls = json.loads(line)["urls"]

    def dropped_frames(self, timeout: float = 5.0) -> int:
        """Frames the server's clients have lost so far for not reading (all cameras; it is asked by SIGUSR1)."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        proc.send_signal(signal.SIGUSR1)
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError("the light RTSP server did not answer")
        return sum(json.loads(line)["dropped_frames"].values())

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:  # it did not answer SIGTERM within 10 s
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> LightCameras:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- command line


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = LightRtspServer(Clip(Path(args.clip), args.fps), args.cameras, host=args.host, port=args.port,
                             max_buffer=args.max_buffer_kb * 1024, session_timeout=args.timeout,
                             send_slots=args.send_slots)
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps({"dropped_frames": server.stats()}), flush=True))
    print(json.dumps({"port": server.port, "urls": server.urls}), flush=True)  # ready: the handlers are in place
    parent = os.getppid()
    while not stop.is_set() and os.getppid() == parent:  # an orphaned server stops
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    await server.close()
    if any(server.stats().values()):
        print(json.dumps({"dropped_frames": server.stats()}), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=1, help="how many cameras (paths /cam0 .. /camN-1)")
    parser.add_argument("--clip", required=True, help="the Annex B H.264 clip every camera loops")
    parser.add_argument("--fps", type=int, default=25, help="the clip's frame rate, the pace of every camera")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="the listening port (0: any free one, printed)")
    parser.add_argument("--max-buffer-kb", type=int, default=2048,
                        help="unsent bytes a client may hold before it loses frames")
    parser.add_argument("--timeout", type=float, default=60, help="session timeout, seconds")
    parser.add_argument("--send-slots", type=int, default=_SLOTS,
                        help="groups of cameras sending at different moments of a frame interval (1: all at once)")
    args = parser.parse_args(argv)
    if args.cameras < 1 or args.fps < 1:
        parser.error("--cameras and --fps must be at least 1")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
