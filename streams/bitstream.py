"""Just enough H.264/H.265 Annex-B parsing to find parameter sets in keyframes.

Cameras may send SPS/PPS (and VPS for H.265) only in-band, and change them
mid-stream when their resolution changes.  We look at the NAL units in front
of the first slice of each keyframe; nothing is decoded.
"""

from __future__ import annotations

from collections.abc import Iterator

_START = b"\x00\x00\x01"

# NAL unit types that carry codec parameters.
_H264_PARAMS = {7: "sps", 8: "pps"}
_H265_PARAMS = {32: "vps", 33: "sps", 34: "pps"}


def iter_nal_units(data: bytes, limit: int | None = None) -> Iterator[bytes]:
    """NAL unit payloads (without start codes) of an Annex-B buffer."""
    start = data.find(_START)
    count = 0
    while start != -1:
        start += 3
        end = data.find(_START, start)
        nal = data[start:] if end == -1 else data[start:end]
        # A 4-byte start code leaves a trailing zero on the previous unit.
        if end != -1 and nal.endswith(b"\x00"):
            nal = nal.rstrip(b"\x00")
        if nal:
            yield nal
            count += 1
            if limit is not None and count >= limit:
                return
        start = end


def nal_type(codec: str, nal: bytes) -> int:
    if codec == "hevc":
        return (nal[0] >> 1) & 0x3F
    return nal[0] & 0x1F


def is_vcl(codec: str, kind: int) -> bool:
    if codec == "hevc":
        return kind < 32
    return 1 <= kind <= 5


def parameter_sets(codec: str, data: bytes) -> bytes:
    """The parameter-set NAL units in front of the first slice, as Annex-B extradata.

    Returns b"" when the buffer carries none (or the codec has no such notion).
    """
    if codec not in ("h264", "hevc"):
        return b""
    wanted = _H265_PARAMS if codec == "hevc" else _H264_PARAMS
    # One of each kind, in codec order: cameras often repeat them in one access unit.
    found: dict[int, bytes] = {}
    for nal in iter_nal_units(data, limit=32):
        kind = nal_type(codec, nal)
        if kind in wanted:
            found[kind] = nal
        elif is_vcl(codec, kind):
            break
    return b"".join(b"\x00\x00\x00\x01" + found[kind] for kind in sorted(found))


def has_slice(codec: str, data: bytes) -> bool:
    """Whether an Annex-B buffer holds picture data, not only parameter sets, SEI or delimiters."""
    if codec not in ("h264", "hevc"):
        return True
    pos = data.find(_START)
    if pos == -1:
        return True  # not Annex-B: cannot tell, assume a picture
    while pos != -1:
        header = pos + 3
        if header < len(data) and is_vcl(codec, nal_type(codec, data[header : header + 2])):
            return True
        pos = data.find(_START, header)
    return False


def is_annexb(data: bytes) -> bool:
    return data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")
