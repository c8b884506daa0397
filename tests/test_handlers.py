"""Handlers built with only what they read: the interfaces web declares (web/ports.py), no station behind them.

A handler test needs no daemon, no camera and no event loop of the station: a
small object with the attributes the handler reads is a StationPort as far as
the handler is concerned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from nvr.base import config as configmod
from recorder import checkpoint
from recorder.index import NewSegment, SegmentIndex
from recorder.keys import StationKey
from web import app as web_app
from web import recordings
from web.access import ACCESS
from web.http import STATION, json_errors


@dataclass
class Recording:
    index: SegmentIndex | None = None
    key: StationKey | None = None
    exports: Any = None
    error: str | None = None
    root: Path = Path("/nonexistent")
    recorders: dict[str, Any] = field(default_factory=dict)
    archiver: Any = None


@dataclass
class Station:
    config: configmod.Config
    recording: Recording
    cameras: dict[str, Any] = field(default_factory=dict)
    health: Any = None
    problems: list[str] = field(default_factory=list)

    def problem(self) -> str | None:
        return self.problems[0] if self.problems else None


def station_config(tmp_path: Path) -> configmod.Config:
    return configmod.parse(f"station: {{id: st-h, name: H}}\nstorage: {{path: {tmp_path}}}\n", environ={})


class Audit:
    """Takes the audit entries a handler records (the real AuditLog writes to a database)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def record(self, action: str, **fields: Any) -> None:
        self.entries.append((action, fields))


async def client_for(aiohttp_client: Any, station: Station, *routes: tuple[str, Any], audit: Audit | None = None
                     ) -> TestClient:
    app = web.Application(middlewares=[json_errors])
    app[STATION] = station  # type: ignore[misc]
    app[ACCESS] = SimpleNamespace(audit=audit or Audit())  # type: ignore[misc]
    for path, handler in routes:
        app.router.add_get(path, handler)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def test_healthz_reads_only_the_station_id_and_its_problem(aiohttp_client: Any, tmp_path: Path) -> None:
    station = Station(station_config(tmp_path), Recording())
    client = await client_for(aiohttp_client, station, ("/healthz", web_app.healthz))
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["station"] == "st-h"
    station.problems.append("recorder(s) stuck: cell-1")
    resp = await client.get("/healthz")
    assert resp.status == 503 and (await resp.json())["status"] == "degraded"


async def test_search_with_an_index_and_no_health_history(aiohttp_client: Any, tmp_path: Path) -> None:
    index = SegmentIndex(tmp_path / "index.sqlite3")
    for n, (start, end) in enumerate([(1000.0, 1060.0), (1060.0, 1120.0), (1200.0, 1260.0)]):
        index.add_segment(NewSegment(camera="cell-1", start=start, end=end, frames=10, bytes=100, sha256="0" * 64,
                                     codec="h264", width=1, height=1, params="{}", path=f"recordings/x/{n}.mp4"))
    station = Station(station_config(tmp_path), Recording(index=index), cameras={"cell-1": object()})
    audit = Audit()
    client = await client_for(aiohttp_client, station, ("/api/recordings", recordings.search_recordings), audit=audit)
    try:
        resp = await client.get("/api/recordings?camera=cell-1&start=1970-01-01T00:16:40Z&end=1970-01-01T00:21:00Z")
        body = await resp.json()
        assert resp.status == 200, body
        assert [(s["start"], s["end"]) for s in body["spans"]] == [
            ("1970-01-01T00:16:40.000Z", "1970-01-01T00:18:40.000Z"),
            ("1970-01-01T00:20:00.000Z", "1970-01-01T00:21:00.000Z")]
        assert [(g["cause"], g["seconds"]) for g in body["gaps"]] == [("unknown", 80.0)]
        assert audit.entries[0][0] == "recordings.search" and audit.entries[0][1]["camera"] == "cell-1"
        resp = await client.get("/api/recordings?camera=cell-1&start=x&end=1970-01-01T00:21:00Z")
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_start"
        resp = await client.get("/api/recordings?camera=ghost&start=1970-01-01T00:16:40Z&end=1970-01-01T00:21:00Z")
        assert resp.status == 404 and (await resp.json())["error"] == "unknown_camera"
    finally:
        index.close()


async def test_checkpoints_route_with_a_key_and_an_index(aiohttp_client: Any, tmp_path: Path) -> None:
    index = SegmentIndex(tmp_path / "index.sqlite3")
    key = StationKey.load_or_create(tmp_path)
    body = checkpoint.make_body(station="st-h", seq=1, now=1000.0, reason="start", key=key, audit_head=(3, "a" * 64),
                                heads={})
    envelope = checkpoint.sign(key, body)
    index.add_checkpoint(1, 1000.0, envelope.body, envelope.signature)
    station = Station(station_config(tmp_path), Recording(index=index, key=key))
    client = await client_for(aiohttp_client, station, ("/api/checkpoints", recordings.list_checkpoints))
    try:
        resp = await client.get("/api/checkpoints?after=0")
        got = await resp.json()
        assert resp.status == 200 and got["fingerprint"] == key.fingerprint
        assert json.loads(got["checkpoints"][0]["body"])["audit"] == {"id": 3, "hash": "a" * 64}
        resp = await client.get("/api/checkpoints?limit=%C2%B2")
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_limit"
        station.recording.index = None
        station.recording.error = "storage refused: not mounted"
        resp = await client.get("/api/checkpoints")
        assert resp.status == 503 and "not mounted" in (await resp.json())["message"]
    finally:
        index.close()


def test_the_station_answers_with_the_models_the_console_parses(tmp_path: Path) -> None:
    """One schema: what the station writes is exactly what web.schema (and so the console) reads."""
    from nvr.health.alarms import Alarm, AlarmType, Severity
    from streams.camera import CameraStreams
    from web.schema import AlarmView, CameraView

    config = configmod.parse(
        f"station: {{id: st-h, name: H}}\nstorage: {{path: {tmp_path}}}\n"
        "cameras:\n  - {id: cell-1, name: Cell 1, zone: holding_cell, url: 'rtsp://127.0.0.1:1/main',"
        " live_url: 'rtsp://127.0.0.1:1/sub'}\n", environ={})
    streams = CameraStreams.build(config.cameras[0], config.ingest, config.health)
    body = web_app.camera_json(streams, None)
    assert set(body) == set(CameraView.model_fields)
    parsed = CameraView.model_validate(body)
    assert parsed.zone == "holding_cell" and parsed.live is not None and parsed.state == body["state"]
    alarm = Alarm("a1", "cell-1", AlarmType.COVERED, Severity.CRITICAL, 1000.0, None, {"score": 0.9})
    assert set(alarm.json()) == set(AlarmView.model_fields)
    assert AlarmView.model_validate(alarm.json()).model_dump() == alarm.json()
