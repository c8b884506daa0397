"""Exports never cost footage: repeated exports on a nearly full disk, and the auditor who may see one camera.

The recording disk here is a real, small filesystem (a 48 MB tmpfs), so free space is what the
kernel says, as on a station.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nvr.base.timeutil import iso
from tests.conftest import StationProcess, wait_until

DISK_MB = 48
MIN_FREE_PERCENT = 20


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(path: Path, ballast: Path, free_target: int) -> None:
    """Grow (or shrink) a ballast file until the filesystem has about ``free_target`` bytes free."""
    current = ballast.stat().st_size if ballast.exists() else 0
    size = max(0, current + free_bytes(path) - free_target)
    with ballast.open("ab") as f:
        f.truncate(size)
    # tmpfs allocates on write, not on truncate: write the bytes
    with ballast.open("r+b") as f:
        f.seek(current)
        left = size - current
        while left > 0:
            chunk = min(left, 1 << 20)
            f.write(b"\xa5" * chunk)
            left -= chunk


def export(daemon: StationProcess, start: float, end: float, reason: str) -> dict[str, Any]:
    status, job = daemon.request("POST", "/api/exports", {"cameras": ["cell-1"], "start": iso(start), "end": iso(end),
                                                          "reason": reason})
    assert status == 202, job

    def finished() -> dict[str, Any] | None:
        _, state = daemon.get(f"/api/exports/{job['id']}")
        return state if state["state"] in ("done", "failed") else None

    return wait_until(finished, 60, "export never finished")


def index_rows(daemon: StationProcess, query: str) -> list[Any]:
    db = sqlite3.connect(daemon.storage / "index.sqlite3")
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def test_repeated_exports_under_disk_pressure_never_delete_footage(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        cam = cameras("hyg", width=320, height=240, fps=10, gop=10, bitrate_kbps=300)
        daemon = daemon_factory(
            [{"id": "cell-1", "name": "Cell 1", "zone": "holding_cell", "url": cam.url}],
            storage={"path": str(disk / "nvr"), "segment_seconds": 2, "min_free_percent": MIN_FREE_PERCENT,
                     "retention_check_seconds": 1},
        )
        daemon.wait_state("cell-1", "online")
        wait_until(lambda: len(index_rows(daemon, "SELECT id FROM segments")) >= 4, 40, "segments")
        cam.stop()
        daemon.wait_state("cell-1", "offline", timeout=15)
        time.sleep(1.5)  # the last segment is closed and indexed
        segments_before = index_rows(daemon, "SELECT id FROM segments ORDER BY id")
        first, last = index_rows(daemon, "SELECT MIN(start), MAX(end) FROM segments")[0]
        footage = sum(r[0] for r in index_rows(daemon, "SELECT bytes FROM segments"))

        # Leave the disk a little above the recordings' reserve: room for a few exports at most.
        total = os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize
        reserve = total * MIN_FREE_PERCENT / 100
        ballast = disk / "ballast"
        # 2.5 packages' worth: unchecked, eight exports would take the disk far below the reserve.
        fill_to(disk, ballast, int(reserve + 2.5 * footage))

        results = [export(daemon, first, last, f"complaint {n}") for n in range(8)]
        time.sleep(2.5)  # two retention sweeps
        assert index_rows(daemon, "SELECT * FROM deletions") == [], "exports cost footage"
        assert index_rows(daemon, "SELECT id FROM segments ORDER BY id") == segments_before
        assert free_bytes(disk) >= reserve, "exports pushed the disk below the recordings' reserve"
        done = [r for r in results if r["state"] == "done"]
        refused = [r for r in results if r["state"] == "failed"]
        assert done, results  # exports are made while there is room ...
        assert refused, results  # ... and refused, saying why, once they would eat into the reserve
        assert all("cost recorded footage" in r["error"] for r in refused), refused

        # Now the disk fills from elsewhere: the packages (copies) go before any footage.
        fill_to(disk, ballast, int(reserve - footage // 2))
        wait_until(lambda: daemon.get(f"/api/exports/{done[0]['id']}")[1]["state"] == "expired", 15,
                   "packages were not deleted under disk pressure")
        status, body = daemon.get(f"/api/exports/{done[0]['id']}/download")
        assert status == 410 and body["error"] == "export_expired"
        assert index_rows(daemon, "SELECT * FROM deletions") == []
        assert index_rows(daemon, "SELECT id FROM segments ORDER BY id") == segments_before
        ballast.unlink()
        daemon.stop()


def test_export_jobs_hold_their_range_expire_and_leave_nothing_behind(tmp_path: Path) -> None:
    import asyncio

    from recorder.export import ExportRequest
    from recorder.export_jobs import ExportLimits, ExportQueue, JobState
    from recorder.index import SegmentIndex
    from recorder.keys import StationKey

    root = tmp_path / "storage"
    root.mkdir()
    exports = root / "exports"
    exports.mkdir()
    (exports / "stale.partial").write_bytes(b"half a package from a crash")
    (exports / "orphan.zip").write_bytes(b"a package whose job died with the last run")
    index = SegmentIndex(root / "index.sqlite3")
    index.open()
    limits = ExportLimits(quota_bytes=64 << 20, keep_seconds=3600, keep_after_download_seconds=60, min_free_percent=0)
    queue = ExportQueue(root, exports, StationKey.load_or_create(root), {"id": "s", "name": "S"}, {}, max_jobs=2,
                        limits=limits, index=index)
    queue.prepare()
    assert list(exports.iterdir()) == []

    async def scenario() -> None:
        runner = asyncio.get_running_loop().create_task(queue.run())
        job = await queue.submit(ExportRequest(["c"], 100.0, 200.0, "r", "auditor-1"))
        holds = await index.call(index.active_holds)
        assert [(h.camera, h.start, h.end, h.created_by) for h in holds] == [("c", 100.0, 200.0, "auditor-1")]
        deadline = time.monotonic() + 20
        while job.state in (JobState.QUEUED, JobState.RUNNING):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert job.state is JobState.DONE, job.error
        assert await index.call(index.active_holds) == []  # released when the job ended
        assert job.path is not None and job.path.exists()
        queue.mark_downloaded(job)
        assert job.downloaded_at is not None
        assert queue.expire(now=job.downloaded_at + 30) == 0
        assert queue.expire(now=job.downloaded_at + 61) == 1
        assert job.state is JobState.EXPIRED and not job.path.exists()
        runner.cancel()

    try:
        asyncio.run(scenario())
    finally:
        index.close()


def test_a_restricted_auditor_sees_only_the_audit_entries_of_their_cameras(
        daemon_factory: Callable[..., StationProcess]) -> None:
    from nvr.identity.accounts_cli import create_token
    from nvr.identity.roles import Role

    daemon = daemon_factory([{"id": "cell-1", "name": "Cell 1", "url": "rtsp://127.0.0.1:1/none"},
                             {"id": "cell-2", "name": "Cell 2", "url": "rtsp://127.0.0.1:1/none"}])
    now = time.time()
    status, job = daemon.request("POST", "/api/exports", {"cameras": ["cell-1", "cell-2"], "start": iso(now - 60),
                                                          "end": iso(now), "reason": "complaint 7"})
    assert status == 202, job
    daemon.get(f"/api/recordings/cell-2/clip.mp4?start={iso(now - 30)}&end={iso(now)}")
    only_one = create_token(daemon.auth_db, "aud-cell-1", Role.AUDITOR, frozenset({"cell-1"}))

    def entries(token: str | None) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        status, body = daemon.request("GET", "/api/audit?limit=1000", headers=headers)
        assert status == 200, body
        return body["entries"] if isinstance(body, dict) else body

    def exports_of(rows: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        return sorted((e["action"], e["camera"]) for e in rows if e["action"].startswith("export."))

    everything = wait_until(lambda: exports_of(entries(None)), 10, "no export entries")
    assert everything == [("export.create", "cell-1"), ("export.create", "cell-2")]
    mine = entries(only_one)
    assert exports_of(mine) == [("export.create", "cell-1")]
    assert not any(e["camera"] == "cell-2" for e in mine)
    assert not any("cell-2" in json.dumps(e["details"]) for e in mine), mine
