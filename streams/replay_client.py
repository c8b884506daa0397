"""ONVIF replay over RTSP: a camera's recorded H.264, by its own clock, as access units with absolute times.

FFmpeg (and so PyAV) cannot send what ONVIF replay needs (``Require:
onvif-replay``, ``Range: clock=...``, ``Rate-Control: no``), so this is a
small RTSP/1.0 client of its own, on the event loop, over one TCP connection:

- ``DESCRIBE`` (answering a Basic or Digest challenge once), ``SETUP`` of the
  H.264 track with RTP interleaved on the RTSP connection, ``PLAY`` of a clock
  range as fast as the camera sends it, ``TEARDOWN`` at the end;
- RTP is depacketised per RFC 6184 (single NAL unit, STAP-A, FU-A); an access
  unit ends at the marker bit or a new RTP timestamp;
- each access unit's time is the NTP timestamp of the ONVIF header extension
  0xABAC on its first packet (the camera's clock; RTP timestamps only order
  frames), with its C/E/D/T flags (a keyframe, the last frame before a hole,
  the first after one, the end of the range).

Everything is bounded: the size of an RTSP answer and of an access unit, the
wait for every read (``timeout``), the bytes per second read (``max_bytes_per
second``: a backfill never takes the camera's uplink from live view).  What
the network sends that is not a valid interleaved RTP packet of our channel is
dropped and counted; what cannot be read on from (text that is not RTSP, a
stream that ends before the range does) raises :class:`ReplayError` with a
reason and a message free of credentials.  Access units already yielded stay
the caller's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import re
import struct
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum

from nvr.base import secrets

ONVIF_EXTENSION = 0xABAC
_NTP_EPOCH = 2208988800
MAX_HEADER_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10
MAX_ACCESS_UNIT_BYTES = 8 << 20
# Consecutive packets that are not ours before the stream is given up as junk.
MAX_JUNK_IN_A_ROW = 500
_START = b"\x00\x00\x00\x01"


class ReplayReason(StrEnum):
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth_failed"
    REFUSED = "refused"  # an RTSP error status
    BAD_ANSWER = "bad_answer"  # not RTSP, no H.264 track, no ONVIF timestamps
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # the camera ended the replay before the end of the range


class ReplayError(secrets.ReasonedError[ReplayReason]):
    """Why a replay failed (``reason``) and what to tell the technician (``message``, no secrets)."""


@dataclass(frozen=True, slots=True)
class AccessUnit:
    at: float  # on the camera's clock (epoch seconds), from the 0xABAC extension
    data: bytes  # Annex-B
    keyframe: bool
    discontinuity: bool = False  # D: the first frame after a hole on the card
    end_of_run: bool = False  # E: the last frame before a hole (or of the range)


@dataclass(slots=True)
class ReplayStats:
    packets: int = 0
    bytes: int = 0
    access_units: int = 0
    junk: int = 0  # interleaved frames or packets that were not our RTP
    dropped: int = 0  # access units lost (a sequence gap inside one, too large, no timestamp)
    terminal: bool = False  # the camera said the range ended (T)


@dataclass(slots=True)
class _Building:
    stamp: int
    at: float | None
    flags: int
    nals: list[bytes] = field(default_factory=list)
    size: int = 0
    broken: bool = False
    fu: bytearray | None = None


def clock(at: float) -> str:
    """An ONVIF ``Range: clock=`` time: YYYYMMDDTHHMMSS.sssZ (UTC)."""
    when = dt.datetime.fromtimestamp(at, dt.UTC)
    return when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z"


class ReplayClient:
    def __init__(self, uri: str, user: str = "", password: str = "", *, timeout: float = 10.0,
                 max_bytes_per_second: float | None = None) -> None:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme != "rtsp" or not parts.hostname:
            raise ReplayError(ReplayReason.BAD_ANSWER, "the replay URI is not rtsp://")
        self.user = urllib.parse.unquote(parts.username) if parts.username else user
        self.password = urllib.parse.unquote(parts.password) if parts.password else password
        self.host, self.port = parts.hostname, parts.port or 554
        self.uri = urllib.parse.urlunsplit(parts._replace(netloc=f"{self.host}:{self.port}"))
        self.timeout = timeout
        self.max_bytes_per_second = max_bytes_per_second
        self.stats = ReplayStats()
        self.extradata = b""  # SPS and PPS (Annex-B) from the SDP
        self._cseq = 0
        self._auth: str | None = None
        self._challenge: dict[str, str] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._session: str | None = None
        self._channel = 0
        self._payload_type = 96

    async def close(self) -> None:
        writer = self._writer
        self._writer = None
        if writer is None:
            return
        if self._session is not None:
            try:
                writer.write(self._request("TEARDOWN", self.uri, {"Session": self._session}))
                async with asyncio.timeout(1):
                    await writer.drain()
            except (OSError, TimeoutError):
                pass
        writer.transport.abort()

    async def replay(self, start: float, end: float) -> AsyncIterator[AccessUnit]:
        """The access units of [start, end] on the camera's clock, as fast as the camera sends them."""
        try:
            await self._open()
            control = await self._describe()
            await self._setup(control)
            await self._play(start, end)
            async for unit in self._units(end):
                yield unit
        finally:
            await self.close()

    # -- the RTSP dialogue ----------------------------------------------------------------

    async def _open(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 17)
        except TimeoutError:
            raise ReplayError(ReplayReason.TIMEOUT, "the replay server did not accept a connection in time") from None
        except OSError as exc:
            raise ReplayError(ReplayReason.UNREACHABLE, f"cannot connect: {exc.strerror or type(exc).__name__}"
                              ) from None

    def _request(self, method: str, url: str, headers: dict[str, str]) -> bytes:
        self._cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self._cseq}", "User-Agent: nvr-backfill"]
        authorization = self._authorization(method, url)
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _authorization(self, method: str, url: str) -> str | None:
        if self._challenge is None or not self.user:
            return None
        if self._challenge.get("scheme") == "basic":
            return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        realm, nonce = self._challenge.get("realm", ""), self._challenge.get("nonce", "")
        ha1 = hashlib.md5(f"{self.user}:{realm}:{self.password}".encode()).hexdigest()  # noqa: S324 - RFC 2617
        ha2 = hashlib.md5(f"{method}:{url}".encode()).hexdigest()  # noqa: S324
        response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()  # noqa: S324
        return (f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{url}", '
                f'response="{response}"')

    async def _exchange(self, method: str, url: str, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
        for attempt in (0, 1):
            assert self._writer is not None
            self._writer.write(self._request(method, url, headers))
            status, answer, body = await self._response()
            if status == 401 and attempt == 0 and self.user:
                self._challenge = _challenge(answer.get("www-authenticate", ""))
                if self._challenge is not None:
                    continue
            if status in (401, 403):
                raise ReplayError(ReplayReason.AUTH_FAILED, f"{method}: the camera rejected the credentials")
            if status != 200:
                raise ReplayError(ReplayReason.REFUSED, f"{method} answered RTSP {status}")
            return answer, body
        raise ReplayError(ReplayReason.AUTH_FAILED, f"{method}: the camera rejected the credentials")

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        """The next RTSP answer; interleaved packets before it (a camera may start early) are skipped."""
        while True:
            first = await self._read(1)
            if first == b"$":
                header = await self._read(3)
                await self._read(struct.unpack(">H", header[1:])[0])
                continue
            return await self._answer(first)

    async def _answer(self, first: bytes, more: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = bytearray(first + more + await self._read(7 - len(first + more)))
        if head != b"RTSP/1.":  # neither an interleaved frame nor an RTSP message: nothing to read on from
            raise ReplayError(ReplayReason.BAD_ANSWER, "the replay server sent something that is not RTSP")
        while not head.endswith(b"\r\n\r\n"):
            head += await self._read_line()
            if len(head) > MAX_HEADER_BYTES:
                raise ReplayError(ReplayReason.BAD_ANSWER, "an RTSP answer's header is over 16 kB")
        lines = head.decode("latin-1").split("\r\n")
        found = re.match(r"^RTSP/1\.\d (\d{3})", lines[0])
        if found is None:
            raise ReplayError(ReplayReason.BAD_ANSWER, "the replay server's answer is not RTSP")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            raise ReplayError(ReplayReason.BAD_ANSWER, "an RTSP answer has a bad Content-Length") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise ReplayError(ReplayReason.BAD_ANSWER, f"an RTSP answer's body of {length} bytes is too large")
        body = await self._read(length) if length else b""
        return int(found.group(1)), headers, body

    async def _describe(self) -> str:
        headers, body = await self._exchange("DESCRIBE", self.uri, {"Accept": "application/sdp",
                                                                    "Require": "onvif-replay"})
        base = headers.get("content-base") or headers.get("content-location") or self.uri
        control, self._payload_type, self.extradata = _h264_track(body.decode("utf-8", "replace"))
        if control.startswith("rtsp://"):
            return control
        return base.rstrip("/") + "/" + control if control not in ("", "*") else base

    async def _setup(self, control: str) -> None:
        headers, _ = await self._exchange("SETUP", control, {
            "Transport": "RTP/AVP/TCP;unicast;interleaved=0-1", "Require": "onvif-replay"})
        session = headers.get("session", "").split(";")[0].strip()
        if not session:
            raise ReplayError(ReplayReason.BAD_ANSWER, "SETUP gave no session")
        found = re.search(r"interleaved=(\d+)", headers.get("transport", ""))
        self._channel = int(found.group(1)) if found else 0
        self._session = session

    async def _play(self, start: float, end: float) -> None:
        assert self._session is not None
        await self._exchange("PLAY", self.uri, {"Session": self._session, "Require": "onvif-replay",
                                                "Range": f"clock={clock(start)}-{clock(end)}",
                                                "Rate-Control": "no"})

    # -- reading --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _bounded(self) -> AsyncIterator[asyncio.StreamReader]:
        """The reader, for reads that must end within ``timeout``; every way they fail as a ReplayError."""
        assert self._reader is not None
        try:
            async with asyncio.timeout(self.timeout):
                yield self._reader
        except TimeoutError:
            raise ReplayError(ReplayReason.TIMEOUT, f"nothing from the camera for {self.timeout:.0f} s") from None
        except asyncio.LimitOverrunError:
            raise ReplayError(ReplayReason.BAD_ANSWER, "an RTSP header line is too long") from None
        except asyncio.IncompleteReadError:
            raise ReplayError(ReplayReason.STOPPED, "the camera closed the replay connection") from None
        except OSError as exc:
            raise ReplayError(ReplayReason.STOPPED, f"the replay connection failed: {exc.strerror or exc}") from None

    async def _read(self, size: int) -> bytes:
        async with self._bounded() as reader:
            return await reader.readexactly(size)

    async def _read_line(self) -> bytes:
        async with self._bounded() as reader:
            return await reader.readuntil(b"\n")

    async def _frame(self) -> tuple[int, bytes | None]:
        """One interleaved frame (channel, payload), or (-1, None) after an RTSP message; one bound for both
        reads (a timer per read would cost more than the parsing at the speeds a card replays)."""
        async with self._bounded() as reader:
            header = await reader.readexactly(4)
            if header[0] != 0x24:  # not '$'
                if header != b"RTSP":
                    raise ReplayError(ReplayReason.BAD_ANSWER, "the replay server sent something that is not RTSP")
                await self._answer(header[:1], header[1:])
                return -1, None
            return header[1], await reader.readexactly(int.from_bytes(header[2:4], "big"))

    async def _units(self, end: float) -> AsyncIterator[AccessUnit]:
        building: _Building | None = None
        expected_seq: int | None = None
        junk_in_a_row = 0
        started = time.monotonic()
        while True:
            channel, payload = await self._frame()
            if payload is None:
                continue  # an RTSP message in the stream (an answer to a keep-alive)
            self.stats.bytes += 4 + len(payload)
            await self._pace(started)
            packet = _rtp(payload, self._payload_type) if channel == self._channel else None
            if packet is None:
                self.stats.junk += 1
                junk_in_a_row += 1
                if junk_in_a_row > MAX_JUNK_IN_A_ROW:
                    raise ReplayError(ReplayReason.BAD_ANSWER, f"{MAX_JUNK_IN_A_ROW} packets in a row were not RTP")
                continue
            junk_in_a_row = 0
            self.stats.packets += 1
            seq, stamp, marker, at, flags, body = packet
            if building is not None and stamp != building.stamp:
                unit = self._finish(building)
                building = None
                if unit is not None:
                    yield unit
                    if unit.at > end:
                        return
            if building is None:
                building = _Building(stamp, at, flags or 0)
            elif building.at is None and at is not None:
                building.at, building.flags = at, flags or 0
            if expected_seq is not None and seq != expected_seq:
                building.broken = True  # a packet of this access unit is missing
            expected_seq = (seq + 1) & 0xFFFF
            _depacketise(building, body)
            if flags is not None and flags & 0x10:
                self.stats.terminal = True
            if marker or self.stats.terminal:
                unit = self._finish(building)
                building = None
                if unit is not None:
                    yield unit
                    if unit.at > end:
                        return
                if self.stats.terminal:
                    return

    def _finish(self, building: _Building) -> AccessUnit | None:
        if building.broken or building.at is None or not building.nals or building.size > MAX_ACCESS_UNIT_BYTES:
            self.stats.dropped += 1
            return None
        self.stats.access_units += 1
        keyframe = any(n[0] & 0x1F == 5 for n in building.nals) or bool(building.flags & 0x80)
        return AccessUnit(building.at, b"".join(_START + n for n in building.nals), keyframe,
                          bool(building.flags & 0x20), bool(building.flags & 0x40))

    async def _pace(self, started: float) -> None:
        if not self.max_bytes_per_second:
            return
        ahead = self.stats.bytes / self.max_bytes_per_second - (time.monotonic() - started)
        if ahead > 0.05:
            await asyncio.sleep(ahead)


def _rtp(data: bytes, payload_type: int) -> tuple[int, int, bool, float | None, int | None, bytes] | None:
    """(seq, timestamp, marker, ONVIF time, ONVIF flags, payload) of an RTP packet of ours, or None."""
    if len(data) < 12 or data[0] >> 6 != 2 or data[1] & 0x7F != payload_type:
        return None
    csrc, extended, padded = data[0] & 0x0F, data[0] & 0x10, data[0] & 0x20
    marker = bool(data[1] & 0x80)
    seq, stamp = struct.unpack(">HI", data[2:8])
    offset = 12 + 4 * csrc
    at = flags = None
    if extended:
        if len(data) < offset + 4:
            return None
        profile, words = struct.unpack(">HH", data[offset:offset + 4])
        body_end = offset + 4 + 4 * words
        if len(data) < body_end:
            return None
        if profile == ONVIF_EXTENSION and words >= 3:
            seconds, fraction = struct.unpack(">II", data[offset + 4:offset + 12])
            at = seconds - _NTP_EPOCH + fraction / (1 << 32)
            flags = data[offset + 12]
        offset = body_end
    end = len(data)
    if padded:
        end -= data[-1]
    if end <= offset:
        return None
    return seq, stamp, marker, at, flags, data[offset:end]


def _depacketise(building: _Building, body: bytes) -> None:
    kind = body[0] & 0x1F
    if 1 <= kind <= 23:
        _add(building, body)
    elif kind == 24:  # STAP-A
        i = 1
        while i + 2 <= len(body):
            size = struct.unpack(">H", body[i:i + 2])[0]
            if size == 0 or i + 2 + size > len(body):
                building.broken = True
                return
            _add(building, body[i + 2:i + 2 + size])
            i += 2 + size
    elif kind == 28 and len(body) >= 2:  # FU-A
        start, last = body[1] & 0x80, body[1] & 0x40
        if start:
            building.fu = bytearray([(body[0] & 0xE0) | (body[1] & 0x1F)])
        if building.fu is None:
            building.broken = True  # a fragment whose start we never saw
            return
        building.fu += body[2:]
        if len(building.fu) > MAX_ACCESS_UNIT_BYTES:
            building.broken = True
            building.fu = None
            return
        if last:
            _add(building, bytes(building.fu))
            building.fu = None
    else:
        building.broken = True  # STAP-B, MTAP, FU-B: not in packetization-mode 1 from a camera


def _add(building: _Building, nal: bytes) -> None:
    building.nals.append(nal)
    building.size += len(nal) + 4
    if building.size > MAX_ACCESS_UNIT_BYTES:
        building.broken = True
        building.nals.clear()


def _challenge(header: str) -> dict[str, str] | None:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() == "basic":
        return {"scheme": "basic"}
    if scheme.lower() != "digest":
        return None
    fields = {k.strip().lower(): v.strip().strip('"') for k, _, v in
              (part.partition("=") for part in re.split(r",\s*(?=\w+=)", rest))}
    return {"scheme": "digest", **fields}


def _h264_track(sdp: str) -> tuple[str, int, bytes]:
    """(control, payload type, Annex-B SPS+PPS) of the SDP's H.264 video track."""
    media: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
    for block in media:
        if not block[0].startswith("m=video"):
            continue
        rtpmap = next((re.match(r"a=rtpmap:(\d+) H264/", ln) for ln in block if re.match(r"a=rtpmap:\d+ H264/", ln)),
                      None)
        if rtpmap is None:
            continue
        payload_type = int(rtpmap.group(1))
        control = next((ln[len("a=control:"):].strip() for ln in block if ln.startswith("a=control:")), "")
        extradata = b""
        for line in block:
            found = re.search(r"sprop-parameter-sets=([A-Za-z0-9+/=,]+)", line)
            if found:
                try:
                    extradata = b"".join(_START + base64.b64decode(p) for p in found.group(1).split(",") if p)
                except ValueError:
                    extradata = b""
        return control, payload_type, extradata
    raise ReplayError(ReplayReason.BAD_ANSWER, "the replay's SDP has no H.264 video track")

