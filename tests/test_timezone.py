"""Time as the station reads it, across a daylight-saving change: search, HLS playback and the export.

Europe/London springs forward at 2026-03-29T01:00:00Z (01:00 GMT becomes
02:00 BST).  The footage is real H.264 recorded below the RTSP layer with
wall-clock times on both sides of the change (a camera records "now"; the
index is the one the daemon writes, through the recorder).  Machine fields
stay UTC; the human-readable parts of the export show local time with its
offset beside UTC.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvr.base.config import Config
from nvr.base.timeutil import local_and_utc, parse_iso
from nvr.identity.authdb import AuthDatabase
from nvr.identity.roles import Role
from nvr.station import Station
from recorder.keys import StationKey
from recorder.storage import init_storage
from recorder.trust import from_fingerprint
from recorder.verify import verify_package
from tests.media import encode_h264
from tests.test_hls import FPS, entries, record, run
from web.app import create_app

CHANGE = parse_iso("2026-03-29T01:00:00Z")
ZONE = "Europe/London"


@pytest.fixture
async def london(tmp_path: Path) -> AsyncIterator[tuple[TestClient, dict[str, str], Station]]:
    data = {
        "station": {"id": "st-ldn", "name": "London Road", "timezone": ZONE},
        "storage": {"path": str(tmp_path / "storage"), "segment_seconds": 4, "retention_days": 3650},
        "ingest": {"backoff_initial_seconds": 5, "backoff_max_seconds": 30},
        "cameras": [{"id": "desk", "name": "Front desk", "url": "rtsp://127.0.0.1:9/none"}],
    }
    (tmp_path / "config.yaml").write_text(json.dumps(data))
    config = Config.model_validate(data)
    init_storage(config.storage.path, config.station.id)
    db = AuthDatabase(config.auth_database)
    token = db.create_token("auditor", Role.AUDITOR, None, "test")
    db.close()
    daemon = Station(config, tmp_path / "config.yaml")
    await daemon.start()
    units = encode_h264(FPS * 10, gop=FPS)
    # 8 s before the change and 2 s after it, an outage of 10 s, then 6 s more (all in BST).
    await record(daemon, "desk", units, CHANGE - 8, FPS * 10)
    await record(daemon, "desk", units, CHANGE + 12, FPS * 6)
    client = TestClient(TestServer(create_app(daemon), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, {"Authorization": f"Bearer {token}"}, daemon
    finally:
        await client.close()
        await daemon.stop()


async def test_a_range_across_the_change_searches_plays_and_exports_with_the_right_local_times(
        london: tuple[TestClient, dict[str, str], Station], tmp_path: Path) -> None:
    client, auth, daemon = london
    # The auditor asks in local time: 00:59 GMT to 02:01 BST, one hour and two minutes of wall clock but
    # two minutes of real time.
    asked = {"start": "2026-03-29T00:59:00+00:00", "end": "2026-03-29T02:01:00+01:00"}
    resp = await client.get("/api/recordings", params={"camera": "desk", **asked}, headers=auth)
    found = await resp.json()
    assert resp.status == 200, found
    assert (found["start"], found["end"]) == ("2026-03-29T00:59:00.000Z", "2026-03-29T01:01:00.000Z")
    assert [(s["start"], s["end"]) for s in found["spans"]] == [
        ("2026-03-29T00:59:52.000Z", "2026-03-29T01:00:02.000Z"),
        ("2026-03-29T01:00:12.000Z", "2026-03-29T01:00:18.000Z")]
    assert [(g["start"], g["end"]) for g in found["gaps"]][1] == (
        "2026-03-29T01:00:02.000Z", "2026-03-29T01:00:12.000Z")

    # Plays: the program date times are UTC, continuous over the change, the outage a discontinuity.
    resp = await client.get("/api/recordings/desk/index.m3u8", params=asked, headers=auth)
    text = await resp.text()
    assert resp.status == 200, text
    got = entries(text)
    assert got[0].pdt == CHANGE - 8
    assert sum(e.duration for e in got) == pytest.approx(16.0, abs=0.01)
    after = next(e for e in got if e.pdt >= CHANGE + 12)
    assert after.after_discontinuity and after.pdt == CHANGE + 12
    url = str(client.make_url("/api/recordings/desk/index.m3u8").with_query(asked))
    out = tmp_path / "played.mp4"
    done = await run("ffmpeg", "-v", "error", "-headers", f"Authorization: {auth['Authorization']}\r\n",
                     "-i", url, "-c", "copy", "-y", str(out))
    assert done.returncode == 0, done.stderr.decode()
    probe = await run("ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(out))
    assert float(probe.stdout) == pytest.approx(16.0, abs=0.1)

    # Exports: the manifest keeps UTC; VERIFY.txt and SUMMARY.txt read as the station does, UTC beside.
    resp = await client.post("/api/exports", headers=auth, json={**asked, "cameras": ["desk"],
                                                                 "reason": "incident 12/2026"})
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    for _ in range(300):
        job = await (await client.get(f"/api/exports/{job['id']}", headers=auth)).json()
        if job["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.1)
    assert job["state"] == "done", job
    package = await (await client.get(job["download"], headers=auth)).read()
    (tmp_path / "package.zip").write_bytes(package)
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        summary = zf.read("SUMMARY.txt").decode()
        verify = zf.read("VERIFY.txt").decode()
    assert manifest["station"]["timezone"] == ZONE
    assert manifest["requested"] == {"start": "2026-03-29T00:59:00.000Z", "end": "2026-03-29T01:01:00.000Z"}
    assert "SUMMARY.txt" in {f["path"] for f in manifest["files"]}
    # Before the change GMT (+00:00), after it BST (+01:00): the same clock hour read twice is never ambiguous.
    for line in ("2026-03-29 00:59:00 GMT (UTC+00:00) = 2026-03-29T00:59:00.000Z",
                 "2026-03-29 02:01:00 BST (UTC+01:00) = 2026-03-29T01:01:00.000Z"):
        assert line in verify and line in summary, line
    for line in ("First frame:  2026-03-29 00:59:52 GMT (UTC+00:00) = 2026-03-29T00:59:52.000Z",
                 "Last frame:   2026-03-29 02:00:18 BST (UTC+01:00) = 2026-03-29T01:00:18.000Z",
                 "  2026-03-29 02:00:02 BST (UTC+01:00) = 2026-03-29T01:00:02.000Z\n"
                 "    to 2026-03-29 02:00:12 BST (UTC+01:00) = 2026-03-29T01:00:12.000Z",
                 "Exported by:  token:auditor", "Reason:       incident 12/2026", "Time zone:    Europe/London"):
        assert line in summary, (line, summary)
    assert local_and_utc(CHANGE - 1, ZONE).startswith("2026-03-29 00:59:59 GMT")
    assert local_and_utc(CHANGE, ZONE).startswith("2026-03-29 02:00:00 BST")
    # The summary is signed with the rest: the package verifies, and an edited summary does not.
    key = StationKey.load_or_create(daemon.config.storage.path)
    anchor = from_fingerprint(key.fingerprint)
    assert verify_package(tmp_path / "package.zip", anchor).ok
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(edited, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, data.replace(b"incident 12/2026", b"incident 13/2026")
                         if item.filename == "SUMMARY.txt" else data)
    report = verify_package(edited, anchor)
    assert not report.ok and any("SUMMARY.txt" in p for p in report.failures), report.failures
