"""HLS playback of recordings: the VOD playlist of a range and the stored files it names, by byte range.

``GET /api/recordings/{camera}/index.m3u8?start=&end=`` answers a playlist
(:mod:`recorder.hls`) whose media segments are byte ranges of
``GET /api/recordings/{camera}/hls/{segment_id}.m4s``, so a player fetches
the init section and the few seconds it shows, never the whole range.

Accountability: the playlist is the view.  It is audited once
(``recordings.play``, with the range and the segments), with the same
permission and camera allow-list as a clip.  The media URLs it names carry a
signature (HMAC with a key of this process) over the user, the camera, the
segment and an expiry: a file is served only to the user whose playlist named
it, within :data:`TOKEN_SECONDS`, so nobody can skip the audited playlist and
fetch footage file by file.  Those fetches still pass the session and
allow-list checks of every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from nvr.base.timeutil import iso
from recorder import hls, playback_copy
from recorder.index import SegmentRecord
from recorder.search import search
from recorder.storage import StorageError, segment_file
from web import archive_api, byteranges, params
from web.access import audit
from web.http import STATION, api_error
from web.recordings import current_user, footage_request, known_camera, require_index

log = logging.getLogger(__name__)

TOKEN_SECONDS = 12 * 3600  # a playlist's media URLs work this long: a day's footage watched through
# A playlist is built in memory: at most this many media segments (a week of footage at 4 s each, ~15 MB of text).
MAX_MEDIA_SEGMENTS = 7 * 86400 // int(hls.TARGET_SECONDS)
# Building a playlist reads every file's layout once (a second or two for a camera-day): two at a time, the
# others wait, so a burst of long playlists cannot take every thread of the default executor.
_BUILDS = 2
_CHUNK = 256 << 10
_MAX_SHIFT_DIGITS = 15  # microseconds: over thirty years either way


@dataclass
class Playback:
    """What playback keeps between requests: the layout cache and the key that signs media URLs."""

    layouts: hls.LayoutCache = field(default_factory=hls.LayoutCache)
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    builds: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(_BUILDS))
    copies: playback_copy.PlaybackCopies | None = None  # made on first use: the storage root is the station's

    def signature(self, user: str, camera: str, segment_id: int, expires: int) -> str:
        message = f"{user}\n{camera}\n{segment_id}\n{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:24]  # 96 bits: unguessable online


PLAYBACK = web.AppKey("playback", Playback)


def setup(app: web.Application) -> None:
    app[PLAYBACK] = Playback()
    app.router.add_get("/api/recordings/{camera_id}/index.m3u8", playlist)
    app.router.add_get("/api/recordings/{camera_id}/hls/{segment_id}.m4s", media)


def playable_file(root: Path, state: Playback, segment: SegmentRecord, capacity_mb: float) -> Path:
    """The fragmented MP4 HLS serves for ``segment``: the stored file, or the playback copy of an upload."""
    stored = segment_file(root, segment.path)
    if not playback_copy.needs_copy(segment):
        return stored
    if state.copies is None or state.copies.root != root:
        state.copies = playback_copy.PlaybackCopies(root, int(capacity_mb * (1 << 20)))
    return state.copies.ensure(segment, stored)


def _layout_reader(root: Path, state: Playback, capacity_mb: float) -> Callable[[SegmentRecord],
                                                                               hls.FileLayout | None]:
    def layout_of(segment: SegmentRecord) -> hls.FileLayout | None:
        try:
            return state.layouts.get(segment, playable_file(root, state, segment, capacity_mb))
        except (OSError, StorageError, hls.LayoutError) as exc:
            # Left out of the playlist (a hole the player skips), said once per playlist in the log.
            log.warning("playlist: segment %d of %s cannot be played: %s", segment.id, segment.camera, exc)
            return None
    return layout_of


async def playlist(request: web.Request) -> web.Response:
    station = request.app[STATION]
    camera, start, end, index = footage_request(request)
    timeline = await index.call(search, index, camera, start, end, None)
    if max(timeline.recorded_seconds / hls.TARGET_SECONDS, len(timeline.segments)) > MAX_MEDIA_SEGMENTS:
        raise params.invalid("end", f"the range holds {timeline.recorded_seconds / 86400:.1f} days of footage in "
                             f"{len(timeline.segments)} files; a playlist plays at most "
                             f"{MAX_MEDIA_SEGMENTS * hls.TARGET_SECONDS / 86400:g} days or {MAX_MEDIA_SEGMENTS} files: "
                             "ask for a shorter range")
    state = request.app[PLAYBACK]
    async with state.builds:
        reader = _layout_reader(station.recording.root, state, station.config.recordings.playback_cache_mb)
        built = await asyncio.to_thread(hls.build, timeline, reader)
    if not built.parts:
        if await archive_api.archive_only(station, camera, start, end):
            # HLS plays the station's own copy; a clip fetches footage back from the archive (issue 19).
            raise api_error(web.HTTPNotFound, "only_in_archive", f"the footage of {camera} between {iso(start)} "
                            f"and {iso(end)} is only in the off-site archive: play it as a clip (clip.mp4)")
        raise api_error(web.HTTPNotFound, "nothing_recorded",
                        f"nothing of {camera} is recorded between {iso(start)} and {iso(end)}")
    user = current_user(request)
    expires = int(time.time()) + TOKEN_SECONDS

    def url(part: hls.FilePart) -> str:
        sig = state.signature(user, camera, part.segment.id, expires)
        # Relative to the playlist's own URL: /api/recordings/{camera}/hls/...
        return f"hls/{part.segment.id}.m4s?shift={round(part.shift * 1e6)}&exp={expires}&sig={sig}"

    text = await asyncio.to_thread(hls.render, built, url)
    audit_play(request, camera, start, end, built)
    response = web.Response(text=text, content_type="application/vnd.apple.mpegurl",
                            headers={"Cache-Control": "no-store"})
    response.enable_compression()  # a day's playlist is megabytes of text that compresses tenfold
    return response


def audit_play(request: web.Request, camera: str, start: float, end: float, built: hls.Playlist) -> None:
    audit(request, "recordings.play", camera=camera, start=iso(start), end=iso(end),
          seconds=round(built.duration, 3), segment_ids=[p.segment.id for p in built.parts])


def _query_int(request: web.Request, name: str, digits: int, signed: bool = False) -> int:
    raw = request.query.get(name, "")
    body = raw[1:] if signed and raw.startswith("-") else raw
    if not body.isascii() or not body.isdigit() or len(body) > digits:
        raise params.invalid(name, "must be the number the playlist gave")
    return int(raw)


async def media(request: web.Request) -> web.StreamResponse:
    """A stored segment file as a playlist names it (Range answered), its decode times moved by ``shift``."""
    station = request.app[STATION]
    camera = known_camera(request, request.match_info["camera_id"])
    raw_id = request.match_info["segment_id"]
    if not raw_id.isascii() or not raw_id.isdigit() or len(raw_id) > 18:
        raise params.invalid("segment_id", "must be the number the playlist gave")
    segment_id = int(raw_id)
    shift = _query_int(request, "shift", _MAX_SHIFT_DIGITS, signed=True) / 1e6
    expires = _query_int(request, "exp", 12)
    state = request.app[PLAYBACK]
    expected = state.signature(current_user(request), camera, segment_id, expires)
    if not hmac.compare_digest(expected, request.query.get("sig", "")) or expires < time.time():
        raise api_error(web.HTTPForbidden, "playlist_required", "this media URL is not one of your playlists' "
                        "(or it expired): fetch the playlist of the range again")
    index = require_index(request)
    segment = await index.call(index.segment, segment_id)
    if segment is None or segment.camera != camera or segment.status == "missing":
        raise api_error(web.HTTPNotFound, "unknown_segment", f"no recording {segment_id} of {camera}")
    try:
        path = await asyncio.to_thread(playable_file, station.recording.root, state, segment,
                                       station.config.recordings.playback_cache_mb)
        layout = await asyncio.to_thread(state.layouts.get, segment, path)
        size = (await asyncio.to_thread(path.stat)).st_size
    except (OSError, StorageError, hls.LayoutError) as exc:
        log.warning("playback: segment %d of %s cannot be read: %s", segment_id, camera, exc)
        raise api_error(web.HTTPNotFound, "unknown_segment", f"recording {segment_id} cannot be read") from None
    headers = {"Content-Type": "video/mp4", "Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    wanted = byteranges.parse(request.headers.get("Range"))
    begin, stop, status = 0, size, 200
    if wanted is not None:
        span = wanted.resolve(size)
        if span is None:
            raise byteranges.unsatisfiable(size)
        begin, stop = span
        status = 206
        headers.update(byteranges.partial_headers(begin, stop, size))
    else:
        headers["Content-Length"] = str(size)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    if request.method == "HEAD":  # aiohttp would send what a StreamResponse writes, HEAD or not
        await response.write_eof()
        return response
    f = await asyncio.to_thread(path.open, "rb")
    try:
        at = begin
        while at < stop:
            chunk = await asyncio.to_thread(_read_at, f, at, min(_CHUNK, stop - at))
            if not chunk:
                break  # the file shrank under us: cannot happen to an indexed segment; the length tells the client
            await response.write(layout.shifted(at, chunk, shift))
            at += len(chunk)
    finally:
        f.close()
    await response.write_eof()
    return response


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)
