"""What the simulators' own RTSP servers share: reading RTSP requests, writing answers, RFC 6184 packetisation.

Used by :mod:`sim.replay_server` (the camera's SD card over ONVIF replay) and
:mod:`sim.light_rtsp` (many live cameras in one process, for the benchmarks).
Standard library only, so either runs under any Python >= 3.11.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
from dataclasses import dataclass

NTP_EPOCH = 2208988800  # seconds from 1900-01-01 to 1970-01-01
MTU = 1400  # RTP payload bytes before a NAL unit is cut into FU-A fragments
MAX_HEAD = 16384  # an RTSP request head longer than this is refused
_METHOD = re.compile(r"^[A-Z][A-Z_]{1,31}$")


class BadRequest(ValueError):
    """A request that is not RTSP/1.0: the connection answers ``400`` (or ``431``) and closes."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(slots=True, frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def cseq(self) -> str:
        return self.headers.get("cseq", "0")


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request from a client; ``None`` for an interleaved frame (RTCP receiver reports), skipped.

    Raises :class:`BadRequest` for what is not a request, ``asyncio.IncompleteReadError`` at the end of the
    connection.
    """
    first = await reader.readexactly(1)
    if first == b"$":
        header = await reader.readexactly(3)
        await reader.readexactly(struct.unpack(">H", header[1:])[0])
        return None
    try:
        head = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as e:
        raise BadRequest("431 Request Header Fields Too Large", "request head too long") from e
    if len(head) > MAX_HEAD:
        raise BadRequest("431 Request Header Fields Too Large", "request head too long")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("RTSP/") or not _METHOD.match(parts[0]):
        raise BadRequest("400 Bad Request", "not an RTSP request line")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    length = headers.get("content-length", "0") or "0"
    if not length.isdigit() or int(length) > MAX_HEAD:
        raise BadRequest("400 Bad Request", "bad Content-Length")
    body = await reader.readexactly(int(length)) if int(length) else b""
    return Request(parts[0], parts[1], headers, body)


def answer(status: str, cseq: str, server: str, extra: dict[str, str] | None = None, sdp: str = "") -> bytes:
    lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", f"Server: {server}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    if sdp:
        lines += ["Content-Type: application/sdp", f"Content-Length: {len(sdp.encode())}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + sdp).encode()


_INTERLEAVED = re.compile(r"interleaved=(\d+)(?:-(\d+))?")


def interleaved_channels(transport: str) -> tuple[int, int] | None:
    """The (RTP, RTCP) channels a SETUP asks for, if it asks for RTP over the RTSP connection; else None (461)."""
    found = _INTERLEAVED.search(transport)
    if "RTP/AVP/TCP" not in transport.upper() or found is None:
        return None
    rtp = int(found.group(1))
    rtcp = int(found.group(2)) if found.group(2) else rtp + 1
    if rtp > 255 or rtcp > 255:
        return None
    return rtp, rtcp


def nals(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte string, without start codes."""
    parts = re.split(b"\x00\x00\x01", data)
    return [p.rstrip(b"\x00") if i < len(parts) - 1 else p for i, p in enumerate(parts) if p.strip(b"\x00")]


def parameter_sets(units: list[bytes]) -> tuple[bytes, bytes] | None:
    sps = next((n for n in units if n[0] & 0x1F == 7), None)
    pps = next((n for n in units if n[0] & 0x1F == 8), None)
    return None if sps is None or pps is None else (sps, pps)


def h264_media(sps: bytes, pps: bytes, control: str) -> str:
    """The SDP media section of one H.264 track, as cameras announce it."""
    sprop = base64.b64encode(sps).decode() + "," + base64.b64encode(pps).decode()
    return ("m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
            f"a=fmtp:96 packetization-mode=1;profile-level-id={sps[1:4].hex()};sprop-parameter-sets={sprop}\r\n"
            f"a=control:{control}\r\n")


def packetise(data: bytes) -> list[bytes]:
    """RTP payloads of one access unit (RFC 6184): SPS and PPS in a STAP-A, large NAL units in FU-A fragments."""
    units = nals(data)
    out: list[bytes] = []
    i = 0
    while i < len(units):
        unit = units[i]
        if unit[0] & 0x1F == 7 and i + 1 < len(units) and units[i + 1][0] & 0x1F == 8:
            # SPS and PPS together in one STAP-A (RFC 6184 5.7.1), in their place in the access unit
            pair = units[i:i + 2]
            out.append(bytes([(unit[0] & 0x60) | 24]) + b"".join(struct.pack(">H", len(u)) + u for u in pair))
            i += 2
            continue
        i += 1
        if len(unit) <= MTU:
            out.append(unit)
            continue
        indicator = (unit[0] & 0xE0) | 28  # FU-A (RFC 6184 5.8)
        kind, body = unit[0] & 0x1F, unit[1:]
        pieces = [body[k:k + MTU] for k in range(0, len(body), MTU)]
        for k, piece in enumerate(pieces):
            fu = kind | (0x80 if k == 0 else 0) | (0x40 if k == len(pieces) - 1 else 0)
            out.append(bytes([indicator, fu]) + piece)
    return out
