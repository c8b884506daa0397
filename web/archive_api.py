"""``GET /api/archive``: the off-site archive's state and backlog (recorder/archive.py), for people and consoles.

Read from the archiver's status snapshot: no database or store call on the loop.  Also the helpers with
which search and clips (web/recordings.py) find and fetch footage that is only in the archive.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from recorder.archive_read import ArchivedSegment
from recorder.archive_store import ArchiveError
from web.http import STATION, api_error
from web.ports import StationPort


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/archive", get_archive)


async def get_archive(request: web.Request) -> web.Response:
    station = request.app[STATION]
    archiver, config = station.recording.archiver, station.config.archive
    if config is None:
        return web.json_response({"enabled": False})
    if archiver is None:  # configured, but the storage is refused: nothing is recorded, nothing uploaded
        return web.json_response({"enabled": True, "state": "stopped", "reason": "storage_refused",
                                  "message": station.recording.error or "the recording storage is not accepted"})
    return web.json_response(archiver.status.json(config))


async def archive_only(station: StationPort, camera: str, start: float, end: float) -> list[ArchivedSegment]:
    """Segments of the range that exist only in the archive (none without an archive)."""
    archiver = station.recording.archiver
    if archiver is None:
        return []
    reader = archiver.reader
    found: list[ArchivedSegment] = await reader.db.call(reader.find, camera, start, end)
    return found


async def fetch(station: StationPort, segments: list[ArchivedSegment]) -> dict[int, Path]:
    """Cached local copies of archive-only segments; 502 ``archive_unavailable`` saying why if the store fails."""
    if not segments:
        return {}
    archiver = station.recording.archiver
    assert archiver is not None  # only archive-only segments of an archive are fetched
    reader = archiver.reader
    try:
        cached: dict[int, Path] = await reader.db.call(reader.fetch_all, segments)
    except ArchiveError as exc:
        raise api_error(web.HTTPBadGateway, "archive_unavailable",
                        f"footage of this range is only in the archive, which cannot be read: {exc}") from None
    return cached


def copies(local: int, archived: int) -> str:
    """Which copy a result used: ``local``, ``archive`` or ``local+archive``."""
    return "+".join(name for name, count in (("local", local), ("archive", archived)) if count) or "none"
