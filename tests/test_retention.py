"""Retention on a thread of its own: a long disk-pressure sweep never delays another camera's segment close."""

from __future__ import annotations

import os
import time
from pathlib import Path

from nvr.base.config import Storage
from recorder.index import NewSegment, SegmentIndex, SegmentRecord
from recorder.retention import Retention
from recorder.storage import segment_relpath
from tests.test_export_hygiene import small_disk

SEGMENTS = 2500


def new_segment(root: Path, camera: str, start: float, size: int) -> NewSegment:
    rel = segment_relpath(camera, start)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"\0" * size)
    return NewSegment(camera=camera, start=start, end=start + 1, frames=10, bytes=size, sha256="0" * 64,
                      codec="h264", width=320, height=240, params="{}", path=rel)


def test_a_long_pressure_sweep_does_not_delay_another_cameras_segment_close(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        root = disk / "nvr"
        root.mkdir()
        index = SegmentIndex(root / "index.sqlite3")
        t0 = time.time() - 86400
        with index.transaction() as db:
            for n in range(SEGMENTS):
                seg = new_segment(root, "corridor", t0 + n, 8192)
                db.execute(
                    "INSERT INTO segments (camera, start, end, frames, bytes, sha256, codec, width, height, params,"
                    " path, status, prev_chain, chain_hash, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (seg.camera, seg.start, seg.end, seg.frames, seg.bytes, seg.sha256, seg.codec, seg.width,
                     seg.height, seg.params, seg.path, "ok", "0" * 64, "0" * 64, time.time()))
        st = os.statvfs(disk)
        free_percent = 100 * st.f_bavail / st.f_blocks
        segments_percent = 100 * SEGMENTS * 8192 / (st.f_blocks * st.f_frsize)
        # The disk is "full" for retention: it must free half the segments' space, one segment at a time.  Not
        # much more: the index's write-ahead log grows by about 4 MB during the sweep (measured), and a target
        # out of reach short of every segment deletes the new one too (this test once asked for 80 % of them).
        storage = Storage(path=root, min_free_percent=free_percent + segments_percent / 2)
        retention = Retention(root, storage, SegmentIndex(root / "index.sqlite3", name="retention"))
        # Each delete takes 2 ms, as on a busy spinning disk, so that the sweep lasts seconds on any machine
        # (on this tmpfs it would be over in a quarter of a second, about when the close is made).
        delete = retention._delete

        def slow_delete(record: SegmentRecord, reason: str) -> bool:
            time.sleep(0.002)
            return delete(record, reason)

        retention._delete = slow_delete  # type: ignore[method-assign]
        try:
            sweep = retention.index.submit(retention.sweep)
            time.sleep(0.2)  # the sweep is under way
            assert not sweep.done(), "the sweep was too short to show anything"
            started = time.monotonic()
            closed = index.submit(index.add_segment, new_segment(root, "cell-1", time.time(), 4096)).result(30)
            close_seconds = time.monotonic() - started
            still_sweeping = not sweep.done()
            result = sweep.result(120)
            sweep_seconds = time.monotonic() - started
            assert closed.camera == "cell-1"
            assert result.deleted_by_pressure > SEGMENTS // 4, result
            # The close did not wait for the sweep: it finished while the sweep was still running.
            assert still_sweeping, (close_seconds, sweep_seconds)
            assert close_seconds < sweep_seconds / 3, (close_seconds, sweep_seconds)
            assert index.by_path(closed.path) is not None
        finally:
            retention.index.close()
            index.close()
