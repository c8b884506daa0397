"""``GET /api/archive``: the off-site archive's state and backlog (recorder/archive.py), for people and consoles.

Read from the archiver's status snapshot: no database or store call on the loop.
"""

from __future__ import annotations

from aiohttp import web

from web.http import STATION


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
