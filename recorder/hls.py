"""HLS VOD playlists over the stored fragmented-MP4 segments, without touching a byte of them.

A segment file, as :mod:`recorder.segment_writer` writes it, is an init
section (``ftyp`` + ``moov``) followed by one ``moof`` + ``mdat`` pair per
fragment (FFmpeg cuts one at every keyframe and at least every second).
:func:`layout` reads only the box headers and the small ``moof`` boxes: where
each fragment lies, when it starts (the video track's ``tfdt``), how long it
lasts (its ``trun`` sample durations) and whether it starts on a keyframe.

:func:`build` turns the segments of a range into a playlist in which

- each media segment is a byte range of one stored file: consecutive
  fragments from a keyframe, about :data:`TARGET_SECONDS` long, so a seek
  fetches the init section and a few seconds of footage, not the file;
- each file's init section is named by ``EXT-X-MAP`` with its byte range;
- every file starts after an ``EXT-X-DISCONTINUITY`` (each file's timestamps
  start again at 0 and it has its own init section, which RFC 8216 §4.3.2.3
  requires to be announced) and carries ``EXT-X-PROGRAM-DATE-TIME``, the UTC
  wall-clock time of its first frame (the media segments after it follow it
  exactly: a player dates each from it and the durations);
  a real recording gap is therefore always at a discontinuity, and a player
  maps media time to wall-clock time through the program date times;
- which segments are playable and where the gaps lie comes from
  :mod:`recorder.timeline`, the one span/gap algorithm.

Layouts of closed segments never change (a file is indexed only once it is
complete), so they are cached by segment id and size, in a bounded LRU.
Everything here is blocking file I/O: callers run it in a thread.
"""

from __future__ import annotations

import bisect
import math
import os
import struct
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nvr.base.timeutil import iso
from recorder.index import SegmentRecord
from recorder.timeline import Timeline

# A media segment of the playlist: fragments from a keyframe until at least this long.  Short enough that a seek
# fetches little (a couple of seconds before the wanted moment, on average), long enough that a day's playlist
# stays around twenty thousand entries.
TARGET_SECONDS = 4.0
_NON_SYNC = 0x00010000  # ISO/IEC 14496-12 sample flags: sample_is_non_sync_sample
_MAX_MOOF = 1 << 20  # a moof of a second of video is a few hundred bytes; refuse to read anything absurd
_BLOCK = 4096  # one read at a fragment's start: its moof and the header after it, nearly always
_CACHE_FRAGMENTS = 600_000


class LayoutError(Exception):
    """A segment file is not the fragmented MP4 it should be (says where)."""


@dataclass(frozen=True, slots=True)
class Fragment:
    offset: int  # of its moof
    size: int  # moof + mdat
    start: float  # seconds from the file's start (its first frame is the segment's start)
    duration: float
    keyframe: bool


class FileLayout:
    """Where a file's fragments and decode times lie, in flat arrays (a day of layouts is a few megabytes)."""

    __slots__ = ("_key", "_offset", "_size", "_start", "_duration", "_tfdt_at", "_tfdt_width", "_tfdt_scale",
                 "_tfdt_value", "init_size", "whole")

    def __init__(self, init_size: int) -> None:
        self.init_size = init_size  # ftyp + moov, from offset 0
        self._offset, self._size = array("q"), array("q")
        self._start, self._duration = array("d"), array("d")
        self._key = bytearray()
        self._tfdt_at, self._tfdt_value, self._tfdt_scale = array("q"), array("Q"), array("q")
        self._tfdt_width = bytearray()
        # The file's media segments when a playlist plays all of it, by target duration (built once).
        self.whole: dict[float, FilePart | None] = {}

    def add_fragment(self, fragment: Fragment) -> None:
        self._offset.append(fragment.offset)
        self._size.append(fragment.size)
        self._start.append(fragment.start)
        self._duration.append(fragment.duration)
        self._key.append(fragment.keyframe)

    def add_decode_time(self, offset: int, width: int, timescale: int, value: int) -> None:
        self._tfdt_at.append(offset)
        self._tfdt_width.append(width)
        self._tfdt_scale.append(timescale)
        self._tfdt_value.append(value)

    def __len__(self) -> int:
        return len(self._offset)

    @property
    def fragments(self) -> list[Fragment]:
        return [Fragment(*row) for row in zip(self._offset, self._size, self._start, self._duration,
                                              map(bool, self._key), strict=True)]

    def shifted(self, offset: int, data: bytes, shift: float) -> bytes:
        """``data`` (the file's bytes from ``offset``) with every decode time moved by ``shift`` seconds.

        Each stored file's timestamps start at 0; a playlist plays many files one after the other, so the
        media segments it names are served with their decode times moved to where they are in the playlist:
        any client, not only one that honours discontinuities, then sees one continuous timeline.  Only the
        tfdt values change; every sample byte is the stored one.
        """
        if not shift or not data:
            return data
        end = offset + len(data)
        out: bytearray | None = None
        for n in range(bisect.bisect_left(self._tfdt_at, offset - 8), len(self._tfdt_at)):
            at, width = self._tfdt_at[n], self._tfdt_width[n]
            if at >= end:
                break
            if at + width <= offset:
                continue
            value = max(0, self._tfdt_value[n] + round(shift * self._tfdt_scale[n]))
            if value >= 1 << (8 * width):
                continue  # a 32-bit tfdt cannot hold it; FFmpeg writes 64-bit ones
            if out is None:
                out = bytearray(data)
            for k, byte in enumerate(value.to_bytes(width, "big")):
                if 0 <= at + k - offset < len(out):
                    out[at + k - offset] = byte
        return bytes(out) if out is not None else data


@dataclass(frozen=True, slots=True)
class MediaSegment:
    """One playlist entry: a byte range of one stored segment file."""

    segment_id: int
    offset: int
    size: int
    start: float  # wall-clock time of its first frame
    duration: float


@dataclass(frozen=True, slots=True)
class FilePart:
    """The part of one stored file a playlist plays."""

    segment: SegmentRecord
    init_size: int
    media: tuple[MediaSegment, ...]
    shift: float = 0.0  # seconds to add to the file's decode times to put it where it plays in the playlist


@dataclass(frozen=True, slots=True)
class Playlist:
    parts: tuple[FilePart, ...]

    @property
    def duration(self) -> float:
        return sum(m.duration for part in self.parts for m in part.media)

    @property
    def fragments(self) -> int:
        return sum(len(part.media) for part in self.parts)


# -- reading a file's layout ----------------------------------------------------------------------------------


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                break
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise LayoutError(f"box {kind!r} at {pos} overruns its parent")
        out.append((kind, pos + header, pos + size))
        pos += size
    return out


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in _boxes(data, start, end):
        if k == kind:
            return s, e
    return None


@dataclass(frozen=True, slots=True)
class _Track:
    id: int
    timescale: int
    default_duration: int
    default_flags: int
    video: bool


def _tracks(moov: bytes) -> dict[int, _Track]:
    """The tracks of an init section: id, timescale, kind and (from trex) sample defaults."""
    trex: dict[int, tuple[int, int]] = {}
    mvex = _child(moov, 0, len(moov), b"mvex")
    if mvex is not None:
        for kind, s, _e in _boxes(moov, *mvex):
            if kind == b"trex":
                track_id, _desc, duration, _size, flags = struct.unpack_from(">IIIII", moov, s + 4)
                trex[track_id] = (duration, flags)
    tracks: dict[int, _Track] = {}
    for kind, s, e in _boxes(moov, 0, len(moov)):
        if kind != b"trak":
            continue
        tkhd, mdia = _child(moov, s, e, b"tkhd"), _child(moov, s, e, b"mdia")
        if tkhd is None or mdia is None:
            continue
        hdlr, mdhd = _child(moov, *mdia, b"hdlr"), _child(moov, *mdia, b"mdhd")
        if hdlr is None or mdhd is None:
            continue
        version = moov[tkhd[0]]
        track_id = struct.unpack_from(">I", moov, tkhd[0] + (20 if version == 1 else 12))[0]
        timescale = struct.unpack_from(">I", moov, mdhd[0] + (20 if moov[mdhd[0]] == 1 else 12))[0]
        if timescale <= 0:
            raise LayoutError(f"track {track_id} has no timescale")
        duration, flags = trex.get(track_id, (0, 0))
        tracks[track_id] = _Track(track_id, timescale, duration, flags, moov[hdlr[0] + 8:hdlr[0] + 12] == b"vide")
    if not any(t.video for t in tracks.values()):
        raise LayoutError("no video track in the init section")
    return tracks


@dataclass(frozen=True, slots=True)
class _Traf:
    track: _Track
    tfdt_at: int  # offset of the tfdt value within the moof's payload
    tfdt_width: int
    decode_time: int
    duration: int  # of its samples, in the track's timescale
    keyframe: bool | None  # its first sample is a sync sample (None: no samples)


def _trafs(moof: bytes, tracks: dict[int, _Track]) -> list[_Traf]:
    """The track fragments of one moof (its payload), with their timing."""
    out = []
    for kind, s, e in _boxes(moof, 0, len(moof)):
        if kind != b"traf":
            continue
        children = _boxes(moof, s, e)
        tfhd = next((c for c in children if c[0] == b"tfhd"), None)
        tfdt = next((c for c in children if c[0] == b"tfdt"), None)
        if tfhd is None or tfdt is None:
            raise LayoutError("a track fragment without tfhd or tfdt")
        tf_flags, track_id = struct.unpack_from(">II", moof, tfhd[1])
        tf_flags &= 0xFFFFFF  # below the version byte
        track = tracks.get(track_id)
        if track is None:
            raise LayoutError("a track fragment of a track the moov does not have")
        pos = tfhd[1] + 8
        pos += 8 if tf_flags & 0x01 else 0  # base data offset
        pos += 4 if tf_flags & 0x02 else 0  # sample description index
        default_duration, default_flags = track.default_duration, track.default_flags
        if tf_flags & 0x08:
            default_duration = struct.unpack_from(">I", moof, pos)[0]
            pos += 4
        pos += 4 if tf_flags & 0x10 else 0  # default sample size
        if tf_flags & 0x20:
            default_flags = struct.unpack_from(">I", moof, pos)[0]
        width = 8 if moof[tfdt[1]] == 1 else 4
        decode_time = int.from_bytes(moof[tfdt[1] + 4:tfdt[1] + 4 + width], "big")
        duration = 0
        first_flags: int | None = None
        for k, ts, te in children:
            if k != b"trun":
                continue
            flags, count = struct.unpack_from(">II", moof, ts)
            flags &= 0xFFFFFF
            pos = ts + 8 + (4 if flags & 0x01 else 0)  # data offset
            run_first: int | None = None
            if flags & 0x04:
                run_first = struct.unpack_from(">I", moof, pos)[0]
                pos += 4
            fields = [bit for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit]
            stride = 4 * len(fields)
            if pos + stride * count > te:
                raise LayoutError("a trun overruns its box")
            if count and first_flags is None:
                first_flags = run_first if run_first is not None else default_flags
                if run_first is None and 0x400 in fields:
                    first_flags = struct.unpack_from(">I", moof, pos + 4 * fields.index(0x400))[0]
            if 0x100 in fields and count:
                entries = struct.unpack_from(f">{len(fields) * count}I", moof, pos)
                duration += sum(entries[fields.index(0x100)::len(fields)])
            else:
                duration += default_duration * count
        out.append(_Traf(track, tfdt[1] + 4, width, decode_time, duration,
                         None if first_flags is None else not first_flags & _NON_SYNC))
    return out


def read_layout(path: Path) -> FileLayout:
    """The fragments of one segment file, from its box headers and moofs (a few hundred bytes a second).

    One ``pread`` per fragment: a block at the fragment's start holds its moof header, the moof and the
    header of the mdat after it; the mdat itself is never read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        return _read_layout(lambda offset, size: os.pread(fd, size, offset), os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _read_layout(read_at: Callable[[int, int], bytes], size: int) -> FileLayout:
    tracks: dict[int, _Track] | None = None
    layout: FileLayout | None = None
    pending: tuple[int, int, float, float, bool] | None = None  # a moof waiting for its mdat
    pos = 0
    while pos + 8 <= size:
        block = read_at(pos, _BLOCK)
        if len(block) < 8:
            break
        box_size, kind = struct.unpack_from(">I4s", block)
        head = 8
        if box_size == 1 and len(block) >= 16:
            box_size, head = struct.unpack_from(">Q", block, 8)[0], 16
        elif box_size == 0:
            box_size = size - pos
        if box_size < head or pos + box_size > size:
            break  # a torn tail: what is complete before it still plays
        if kind in (b"moov", b"moof"):
            if kind == b"moof" and box_size > _MAX_MOOF:
                raise LayoutError(f"moof at {pos} is {box_size} bytes")
            if box_size + 8 > len(block) and pos + len(block) < size:
                block = read_at(pos, min(box_size + 8, size - pos))  # and the header of the box after it
        if kind == b"moov":
            tracks = _tracks(block[head:box_size])
        elif kind == b"moof":
            if tracks is None:
                raise LayoutError(f"moof at {pos} before the moov")
            layout = FileLayout(pos) if layout is None else layout
            trafs = _trafs(block[head:box_size], tracks)
            for t in trafs:
                layout.add_decode_time(pos + head + t.tfdt_at, t.tfdt_width, t.track.timescale, t.decode_time)
            video = next((t for t in trafs if t.track.video and t.keyframe is not None), None)
            pending = None
            if video is not None:
                scale = video.track.timescale
                pending = (pos, box_size, video.decode_time / scale, video.duration / scale, bool(video.keyframe))
            after = block[box_size:box_size + 8]
            if pending is not None and len(after) == 8 and after[4:] == b"mdat":
                mdat_size = struct.unpack_from(">I", after)[0]
                if mdat_size >= 8 and pos + box_size + mdat_size <= size:
                    layout.add_fragment(Fragment(pos, box_size + mdat_size, *pending[2:]))
                    pos += box_size + mdat_size
                    pending = None
                    continue
        elif kind == b"mdat" and pending is not None and layout is not None:
            moof_at, moof_size, start, duration, key = pending
            if moof_at + moof_size == pos:
                layout.add_fragment(Fragment(moof_at, moof_size + box_size, start, duration, key))
            pending = None
        pos += box_size
    if tracks is None or layout is None:
        raise LayoutError("not a fragmented MP4 with a video track")
    return layout


class LayoutCache:
    """Bounded LRU of file layouts by (segment id, size): a stored segment never changes once indexed.

    Bounded by fragments, not files (a file of an hour holds sixty times a minute's): about 100 bytes each
    with the media segments built from them, so the default is about 60 MB, a week of one camera.
    """

    def __init__(self, capacity: int = _CACHE_FRAGMENTS) -> None:
        self.capacity = capacity
        self.fragments = 0
        self._entries: OrderedDict[tuple[int, int], FileLayout] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, segment: SegmentRecord, path: Path) -> FileLayout:
        key = (segment.id, segment.bytes)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        layout = read_layout(path)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = layout
                self.fragments += len(layout)
            while self.fragments > self.capacity and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self.fragments -= len(dropped)
        return layout


# -- the playlist --------------------------------------------------------------------------------------------


def file_part(segment: SegmentRecord, layout: FileLayout, start: float, end: float,
              target: float = TARGET_SECONDS) -> FilePart | None:
    """The media segments of one file that cover [start, end), from the keyframe at or before ``start``."""
    frags = layout.fragments
    first = 0
    for n, frag in enumerate(frags):
        if segment.start + frag.start > start + 1e-6:
            break
        if frag.keyframe:
            first = n
    while first < len(frags) and not frags[first].keyframe:
        first += 1  # a file always starts on a keyframe; this only guards a damaged one
    media: list[MediaSegment] = []
    group: list[Fragment] = []

    def close() -> None:
        if group:
            media.append(MediaSegment(segment.id, group[0].offset, group[-1].offset + group[-1].size - group[0].offset,
                                      segment.start + group[0].start, sum(g.duration for g in group)))
            group.clear()

    length = 0.0
    for frag in frags[first:]:
        if segment.start + frag.start >= end:
            break
        if frag.keyframe and group and length >= target:
            close()
            length = 0.0
        group.append(frag)
        length += frag.duration
    close()
    return FilePart(segment, layout.init_size, tuple(media)) if media else None


def build(timeline: Timeline, layout_of: Callable[[SegmentRecord], FileLayout | None],
          target: float = TARGET_SECONDS) -> Playlist:
    """The playlist over a timeline's playable segments.

    ``layout_of`` reads a file's layout (blocking); None leaves the file out (it cannot be read).
    """
    parts = []
    position = 0.0  # media time where the next file starts playing
    for segment in timeline.segments:
        if segment.end <= timeline.start or segment.start >= timeline.end:
            continue
        layout = layout_of(segment)
        if layout is None:
            continue
        if timeline.start <= segment.start and segment.end <= timeline.end:  # the whole file: the same every time
            if target not in layout.whole:
                layout.whole[target] = file_part(segment, layout, segment.start, segment.end + 1.0, target)
            part = layout.whole[target]
        else:
            part = file_part(segment, layout, timeline.start, timeline.end, target)
        if part is not None:
            first = part.media[0].start - segment.start
            parts.append(FilePart(part.segment, part.init_size, part.media, position - first))
            position += sum(m.duration for m in part.media)
    return Playlist(tuple(parts))


def render(playlist: Playlist, url: Callable[[FilePart], str]) -> str:
    """The playlist as RFC 8216 text (version 7: fMP4 with byte ranges); ``url`` names a part's file."""
    longest = max((m.duration for part in playlist.parts for m in part.media), default=1.0)
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest - 1e-3))}",
             "#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for n, part in enumerate(playlist.parts):
        if n:
            lines.append("#EXT-X-DISCONTINUITY")
        name = url(part)
        lines.append(f'#EXT-X-MAP:URI="{name}",BYTERANGE="{part.init_size}@0"')
        # Once per file: within a file the media segments follow each other exactly, and a player dates each
        # from the last program date time and the durations (a day's playlist is a megabyte shorter).
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{iso(part.media[0].start)}")
        for media in part.media:
            lines.append(f"#EXTINF:{media.duration:.3f},")
            lines.append(f"#EXT-X-BYTERANGE:{media.size}@{media.offset}")
            lines.append(name)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
