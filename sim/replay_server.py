"""The simulated camera's replay server: its SD card over RTSP, per the ONVIF Streaming Specification (replay).

A small asyncio RTSP/1.0 server written from the specification (GStreamer's
rtsp-onvif server cannot be fed from a card of our own from Python):

- ``DESCRIBE rtsp://host:port/replay/<recording token>`` answers an SDP with
  one H.264 track (``sprop-parameter-sets`` from the card) and
  ``a=range:clock=`` of what the card holds;
- ``SETUP`` accepts RTP over the RTSP connection only
  (``RTP/AVP/TCP;interleaved=a-b``; anything else is 461);
- ``PLAY`` with ``Require: onvif-replay`` takes ``Range: clock=<start>-<end>``
  (``YYYYMMDDTHHMMSS[.sss]Z``) and ``Rate-Control: no`` (as fast as the
  connection takes it; ``yes``, the default, paces at recorded speed).  Every
  RTP packet carries the ONVIF header extension 0xABAC: the access unit's
  time on the camera's clock as a 64-bit NTP timestamp, then the C (clean
  point: a keyframe), E (last access unit before a hole or of the range), D
  (first after a hole) and T (the last packet of the range) flags and the low
  byte of the PLAY request's CSeq.  A plain ``PLAY`` (an ordinary RTSP client
  such as ffprobe) plays the card from its start at recorded speed;
- H.264 is packetised per RFC 6184: single NAL unit packets, SPS and PPS in a
  STAP-A, large slices in FU-A fragments; the marker bit ends an access unit.

Faults a test can switch on (attributes of :class:`ReplayServer`):
``stop_after_frames`` (the connection is dropped after that many access
units, a replay that stops half-way), ``junk`` (interleaved frames of random
bytes and RTP packets of a wrong version among the real ones),
``speed_limit`` (a camera's card is read at most that many times real time).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
import re
import struct
import uuid

from sim.rtsp_wire import (
    NTP_EPOCH,
    BadRequest,
    answer,
    h264_media,
    interleaved_channels,
    nals,
    packetise,
    parameter_sets,
    read_request,
)
from sim.sd_card import CardFrame, SdCard

_CLOCK = re.compile(r"^(\d{8}T\d{6}(?:\.\d+)?Z)?-(\d{8}T\d{6}(?:\.\d+)?Z)?$")


def clock_text(at: float) -> str:
    when = dt.datetime.fromtimestamp(at, dt.UTC)
    return when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z"


def _parse_clock(text: str) -> float:
    base, _, fraction = text.rstrip("Z").partition(".")
    when = dt.datetime.strptime(base, "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    return when.timestamp() + (float("0." + fraction) if fraction else 0.0)


class ReplayServer:
    def __init__(self, card: SdCard, token: str, *, user: str | None = None, password: str | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.card, self.token = card, token
        self.user, self.password = user, password
        self.host, self.port = host, port
        self.stop_after_frames: int | None = None
        self.junk = False
        self.speed_limit: float | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []  # (method, headers), for tests
        self.frames_sent = 0
        self._server: asyncio.Server | None = None
        self._realm = "SimCam replay"
        self._nonce = uuid.uuid4().hex

    @property
    def base_url(self) -> str:
        return f"rtsp://{self.host}:{self.port}/replay/"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    # -- one connection --------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = {"id": uuid.uuid4().hex[:16], "channel": None, "task": None}
        try:
            while True:
                request = await read_request(reader)
                if request is None:  # interleaved from the client (RTCP receiver reports): skipped
                    continue
                self.requests.append((request.method, request.headers))
                if not await self._answer(request.method, request.url, request.headers, session, writer):
                    break
        except BadRequest as e:
            writer.write(answer(e.status, "0", "SimCam replay"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            task = session["task"]
            if isinstance(task, asyncio.Task):
                task.cancel()
            writer.transport.abort()

    def _reply(self, writer: asyncio.StreamWriter, status: str, cseq: str, extra: dict[str, str] | None = None,
               body: str = "") -> None:
        writer.write(answer(status, cseq, "SimCam replay", extra, body))

    def _authorized(self, method: str, headers: dict[str, str]) -> bool:
        if self.user is None:
            return True
        given = headers.get("authorization", "")
        if given.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(given[6:]).decode().partition(":")
            except ValueError:
                return False
            return (user, password) == (self.user, self.password)
        if not given.lower().startswith("digest "):
            return False
        fields = dict((k.strip(), v.strip().strip('"')) for k, _, v in
                      (part.partition("=") for part in re.split(r",\s*(?=\w+=)", given[7:])))
        ha1 = hashlib.md5(f"{self.user}:{self._realm}:{self.password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{method}:{fields.get('uri', '')}".encode()).hexdigest()
        expected = hashlib.md5(f"{ha1}:{self._nonce}:{ha2}".encode()).hexdigest()
        return fields.get("username") == self.user and fields.get("nonce") == self._nonce and \
            fields.get("response") == expected

    async def _answer(self, method: str, url: str, headers: dict[str, str], session: dict[str, object],
                      writer: asyncio.StreamWriter) -> bool:
        cseq = headers.get("cseq", "0")
        if method == "OPTIONS":
            self._reply(writer, "200 OK", cseq, {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN"})
            return True
        if not self._authorized(method, headers):
            self._reply(writer, "401 Unauthorized", cseq,
                        {"WWW-Authenticate": f'Digest realm="{self._realm}", nonce="{self._nonce}"'})
            return True
        path = re.sub(r"^rtsp://[^/]+", "", url)
        if not path.startswith(f"/replay/{self.token}"):
            self._reply(writer, "404 Not Found", cseq)
            return True
        if method == "DESCRIBE":
            sdp = self._sdp()
            if sdp is None:
                self._reply(writer, "404 Not Found", cseq)
            else:
                self._reply(writer, "200 OK", cseq, {"Content-Base": f"{self.base_url}{self.token}/"}, sdp)
            return True
        if method == "SETUP":
            channels = interleaved_channels(headers.get("transport", ""))
            if channels is None:
                self._reply(writer, "461 Unsupported Transport", cseq)
                return True
            session["channel"] = channels[0]
            self._reply(writer, "200 OK", cseq, {
                "Transport": f"RTP/AVP/TCP;unicast;interleaved={channels[0]}-{channels[1]}",
                "Session": f"{session['id']};timeout=60"})
            return True
        if method in ("PLAY", "PAUSE", "TEARDOWN") and headers.get("session", "").split(";")[0] != session["id"]:
            self._reply(writer, "454 Session Not Found", cseq)
            return True
        if method == "PLAY":
            return self._play(headers, session, writer, cseq)
        if method == "PAUSE":
            task = session["task"]
            if isinstance(task, asyncio.Task):
                task.cancel()
            self._reply(writer, "200 OK", cseq, {"Session": str(session["id"])})
            return True
        if method == "TEARDOWN":
            self._reply(writer, "200 OK", cseq)
            await writer.drain()
            return False
        self._reply(writer, "405 Method Not Allowed", cseq, {"Allow": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN"})
        return True

    def _play(self, headers: dict[str, str], session: dict[str, object], writer: asyncio.StreamWriter,
              cseq: str) -> bool:
        if session["channel"] is None:
            self._reply(writer, "455 Method Not Valid in This State", cseq)
            return True
        span = self.card.span()
        replay = "onvif-replay" in headers.get("require", "").lower()
        start, end = (span[0], None) if span else (0.0, None)
        requested = headers.get("range", "")
        if requested.startswith("clock="):
            found = _CLOCK.match(requested[6:].strip())
            if found is None:
                self._reply(writer, "457 Invalid Range", cseq)
                return True
            start = _parse_clock(found.group(1)) if found.group(1) else start
            end = _parse_clock(found.group(2)) if found.group(2) else None
        fast = replay and headers.get("rate-control", "yes").lower() == "no"
        frames = self.card.frames(start, end)
        first_at = frames[0].at if frames else start
        self._reply(writer, "200 OK", cseq, {
            "Session": str(session["id"]), "Range": f"clock={clock_text(first_at)}-",
            "RTP-Info": f"url={self.base_url}{self.token}/track1;seq=0;rtptime=0"})
        assert isinstance(session["channel"], int)
        session["task"] = asyncio.ensure_future(self._stream(writer, frames, session["channel"], fast,
                                                             int(cseq) & 0xFF if cseq.isdigit() else 0))
        return True

    def _sdp(self) -> str | None:
        frames = self.card.frames(0.0)
        key = next((f for f in frames if f.keyframe), None)
        if key is None:
            return None
        sets = parameter_sets(nals(key.data))
        if sets is None:
            return None
        span = self.card.span()
        assert span is not None
        return ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=ONVIF replay\r\nt=0 0\r\na=control:*\r\n"
                f"a=range:clock={clock_text(span[0])}-{clock_text(span[1])}\r\n" + h264_media(*sets, "track1"))

    # -- RTP ------------------------------------------------------------------------------

    async def _stream(self, writer: asyncio.StreamWriter, frames: list[CardFrame], channel: int, fast: bool,
                      cseq: int) -> None:
        loop = asyncio.get_running_loop()
        seq, ssrc = 0, int.from_bytes(os.urandom(4), "big")
        started, first_at = loop.time(), frames[0].at if frames else 0.0
        try:
            for n, frame in enumerate(frames):
                if self.stop_after_frames is not None and n >= self.stop_after_frames:
                    writer.transport.abort()  # the camera drops the replay half-way
                    return
                pace = None if fast else 1.0  # times real time; None: as fast as the connection takes it
                if self.speed_limit:
                    pace = self.speed_limit if pace is None else min(pace, self.speed_limit)
                if pace:
                    due = started + (frame.at - first_at) / pace
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                last = n == len(frames) - 1
                before_hole = not last and frames[n + 1].run != frame.run
                after_hole = n == 0 or frames[n - 1].run != frame.run
                payloads = packetise(frame.data)
                for k, payload in enumerate(payloads):
                    flags = (0x80 if frame.keyframe else 0) | (0x40 if (last or before_hole) else 0) | \
                        (0x20 if after_hole and k == 0 else 0) | (0x10 if last and k == len(payloads) - 1 else 0)
                    packet = self._rtp(payload, seq, round((frame.at - first_at) * 90000) & 0xFFFFFFFF, ssrc,
                                       k == len(payloads) - 1, frame.at, flags, cseq)
                    seq = (seq + 1) & 0xFFFF
                    if self.junk and n % 7 == 3 and k == 0:
                        writer.write(b"$" + bytes([channel]) + struct.pack(">H", 40) + os.urandom(40))  # not RTP
                        writer.write(b"$\x09" + struct.pack(">H", 12) + os.urandom(12))  # a channel never set up
                    writer.write(b"$" + bytes([channel]) + struct.pack(">H", len(packet)) + packet)
                self.frames_sent += 1
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    @staticmethod
    def _rtp(payload: bytes, seq: int, stamp: int, ssrc: int, marker: bool, at: float, flags: int,
             cseq: int) -> bytes:
        seconds = int(at) + NTP_EPOCH
        fraction = int((at - int(at)) * (1 << 32)) & 0xFFFFFFFF
        extension = struct.pack(">HHIIBBH", 0xABAC, 3, seconds & 0xFFFFFFFF, fraction, flags, cseq, 0)
        header = struct.pack(">BBHII", 0x90, (0x80 if marker else 0) | 96, seq, stamp, ssrc)
        return header + extension + payload

