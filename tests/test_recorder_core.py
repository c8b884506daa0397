"""Recorder logic below RTSP: segment cutting, time runs, recovery, retention, holds, the chain.

Real H.264 from libx264, real files, real SQLite, ffprobe for playability.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from nvr.base.config import Storage
from recorder.index import GENESIS, SegmentIndex, chain_hash, record_fields
from recorder.reconcile import complete_fragments_end, reconcile
from recorder.recorder import RecorderCore
from recorder.retention import Retention
from recorder.storage import StorageError, check_storage, init_storage
from streams.media import SessionEnded
from tests.media import encode_h264, make_session, packets


def ffprobe_frames(path: Path) -> list[dict[str, str]]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=key_frame,pts_time",
         "-of", "json", str(path)], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)["frames"]  # type: ignore[no-any-return]


def core_for(root: Path, index: SegmentIndex, segment_seconds: int = 4) -> RecorderCore:
    return RecorderCore("cam", root, Storage(path=root, segment_seconds=segment_seconds), index.add_segment)


def test_segments_cut_on_keyframes_meet_exactly_and_play(store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    units = encode_h264(15 * 13 + 3, gop=15)  # 13 s at 15 fps, keyframe every second
    session = make_session(units)
    core = core_for(root, index, segment_seconds=4)
    core.handle(packets(session, units))
    core.handle([SessionEnded(session, "camera lost")])
    rows = index.all_segments("cam")
    assert len(rows) == 4  # 4 + 4 + 4 + 1 seconds
    for prev, cur in zip(rows, rows[1:], strict=False):
        assert cur.start == pytest.approx(prev.end, abs=1e-6)  # gapless, no overlap
    assert [round(r.end - r.start, 2) for r in rows[:3]] == [4.0, 4.0, 4.0]
    assert sum(r.frames for r in rows) == len(units)
    assert rows[0].start == pytest.approx(session.started_at, abs=0.01)
    for row in rows:
        frames = ffprobe_frames(root / row.path)
        assert len(frames) == row.frames
        assert frames[0]["key_frame"] == 1
    # the chain links every row to its predecessor
    prev = GENESIS
    for row in rows:
        assert row.prev_chain == prev and row.chain_hash == chain_hash(prev, record_fields(row))
        prev = row.chain_hash


def test_timestamp_reset_starts_new_run_without_overlap(store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    units = encode_h264(15 * 6, gop=15)
    session = make_session(units)
    first = packets(session, units)
    # The camera rebooted inside the same connection: timestamps restart at 0,
    # and (a clock quirk) its packets claim to arrive before the last ones.
    again = packets(session, units, wall_start=session.started_at + 2.0)
    core = core_for(root, index, segment_seconds=60)
    core.handle(first + again)
    core.handle([SessionEnded(session, "stop")])
    rows = index.all_segments("cam")
    assert len(rows) == 2
    assert rows[1].start >= rows[0].end  # never overlapping
    assert sum(r.frames for r in rows) == 2 * len(units)


def test_new_session_with_new_resolution_new_segment(store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    small = encode_h264(30, width=320, height=180)
    large = encode_h264(30, width=640, height=360)
    s1 = make_session(small)
    s2 = make_session(large, width=640, height=360, started_at=s1.started_at + 2.0)
    core = core_for(root, index, segment_seconds=60)
    core.handle(packets(s1, small) + packets(s2, large, first_tick=2 * 90000))
    core.handle([SessionEnded(s2, "stop")])
    rows = index.all_segments("cam")
    assert [(r.width, r.height) for r in rows] == [(320, 180), (640, 360)]
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=width,height", "-of", "csv=p=0",
                            str(root / rows[1].path)], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "640,360"


def test_crash_mid_segment_is_recovered_to_last_fragment(store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    units = encode_h264(15 * 5, gop=15)
    session = make_session(units)
    core = core_for(root, index, segment_seconds=60)
    core.handle(packets(session, units))  # segment still open: only a .part file exists
    assert core.open is not None
    part = core.open.writer.part_path
    with part.open("ab") as f:
        f.write(b"\x00\x00\x10\x00moof-truncated")  # a fragment cut off by the crash
    assert index.all_segments("cam") == []
    report = reconcile(root, index)
    rows = index.all_segments("cam")
    assert len(report.recovered) == 1 and len(rows) == 1 and rows[0].status == "recovered"
    recovered = root / rows[0].path
    assert not part.exists() and recovered.exists()
    assert complete_fragments_end(recovered) == recovered.stat().st_size
    frames = ffprobe_frames(recovered)
    assert len(frames) >= 15 * 3  # at most the last fragment (1 s) lost
    assert frames[0]["key_frame"] == 1


def test_reconcile_indexes_orphans_and_flags_missing(store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    units = encode_h264(15 * 9, gop=15)
    session = make_session(units)
    core = core_for(root, index, segment_seconds=4)
    core.handle(packets(session, units))
    core.handle([SessionEnded(session, "stop")])
    rows = index.all_segments("cam")
    assert len(rows) == 3
    (root / rows[0].path).unlink()  # file gone behind our back
    index.db.execute("DELETE FROM segments WHERE id = ?", (rows[2].id,))  # row lost, file stays
    report = reconcile(root, index)
    assert report.missing == [rows[0].path]
    assert report.indexed_orphans == [rows[2].path]
    assert index.by_path(rows[0].path).status == "missing"  # type: ignore[union-attr]


def test_retention_by_age_keeps_holds_and_records_deletions(store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    units = encode_h264(15 * 13, gop=15)
    old = time.time() - 40 * 86400
    session = make_session(units, started_at=old)
    core = core_for(root, index, segment_seconds=4)
    core.handle(packets(session, units))
    core.handle([SessionEnded(session, "stop")])
    rows = index.all_segments("cam")
    assert len(rows) == 4
    hold = index.add_hold("cam", rows[1].start + 0.5, rows[1].end - 0.5, "complaint 42")
    retention = Retention(root, Storage(path=root, retention_days=30), index)
    result = retention.sweep()
    assert result.deleted_by_age == 3
    remaining = index.all_segments("cam")
    assert [r.id for r in remaining] == [rows[1].id]
    assert (root / rows[1].path).exists() and not (root / rows[0].path).exists()
    reasons = {d["segment_id"]: d["reason"] for d in index.deletions("cam")}
    assert set(reasons) == {rows[0].id, rows[2].id, rows[3].id}
    assert all("older than 30 days" in r for r in reasons.values())
    index.release_hold(hold.id)
    assert retention.sweep().deleted_by_age == 1


def test_disk_pressure_deletes_oldest_first_and_raises_disk_full(store: tuple[Path, SegmentIndex],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root, index = store
    units = encode_h264(15 * 9, gop=15)
    session = make_session(units)
    core = core_for(root, index, segment_seconds=4)
    core.handle(packets(session, units))
    core.handle([SessionEnded(session, "stop")])
    rows = index.all_segments("cam")
    index.add_hold("cam", rows[2].start, rows[2].end, "evidence")
    retention = Retention(root, Storage(path=root, min_free_percent=50), index)
    free = iter([10.0, 10.0, 60.0])  # first deletion is not enough, the second is
    monkeypatch.setattr(retention, "free_percent", lambda: next(free))
    result = retention.sweep()
    assert result.deleted_by_pressure == 2 and not result.disk_full
    assert [d["segment_id"] for d in index.deletions()] == [rows[0].id, rows[1].id]
    monkeypatch.setattr(retention, "free_percent", lambda: 10.0)
    result = retention.sweep()
    assert result.disk_full and [r.id for r in index.all_segments()] == [rows[2].id]
    assert index.events("disk_full")[0]["severity"] == "critical"


def test_storage_marker_refuses_unmounted_or_foreign_disk(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        check_storage(tmp_path / "nope", "st-1", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="not mounted"):
        check_storage(tmp_path / "empty", "st-1", None)
    marker = init_storage(tmp_path / "disk", "st-2")
    with pytest.raises(StorageError, match="st-2"):
        check_storage(tmp_path / "disk", "st-1", None)
    with pytest.raises(StorageError, match="pins"):
        check_storage(tmp_path / "disk", "st-2", "other-id")
    assert check_storage(tmp_path / "disk", "st-2", marker.id).id == marker.id


def _shifted(pkts: list, start: int, wall_shift: float = 0.0, mono_shift: float = 0.0) -> list:
    """The same packets from index ``start`` on, arriving ``wall_shift`` later by the wall clock
    (and ``mono_shift`` later by the monotonic clock)."""
    from dataclasses import replace

    return pkts[:start] + [replace(p, received_at=p.received_at + wall_shift,
                                   received_mono=p.received_mono + mono_shift) for p in pkts[start:]]


def test_drift_between_camera_and_wall_clock_starts_a_new_run_at_a_keyframe(store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    units = encode_h264(15 * 12, gop=15)
    session = make_session(units)
    # From second 6 on, packets arrive 8 s later than the camera's timestamps say (a camera clock that
    # runs slow, or a long network stall): beyond the 5 s tolerance.
    pkts = _shifted(packets(session, units), 15 * 6, wall_shift=8.0, mono_shift=8.0)
    core = core_for(root, index, segment_seconds=60)
    core.handle(pkts)
    core.handle([SessionEnded(session, "stop")])
    rows = index.all_segments("cam")
    assert len(rows) == 2, rows  # cut at the first keyframe after the drift was seen
    assert rows[1].start >= rows[0].end
    assert rows[1].start == pytest.approx(session.started_at + 6 + 8, abs=0.2)  # re-anchored to the wall clock
    assert sum(r.frames for r in rows) == len(units)  # nothing lost at the cut


def test_host_clock_step_starts_a_new_run_and_never_overlaps(store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    units = encode_h264(15 * 8, gop=15)
    session = make_session(units)
    # The host clock steps back 30 s at second 4 (NTP correction); monotonic time goes on.
    pkts = _shifted(packets(session, units), 15 * 4, wall_shift=-30.0)
    core = core_for(root, index, segment_seconds=60)
    core.handle(pkts)
    core.handle([SessionEnded(session, "stop")])
    rows = index.all_segments("cam")
    assert len(rows) == 2
    assert rows[1].start >= rows[0].end  # the step back cannot make segments overlap
    assert sum(r.frames for r in rows) == len(units)


def test_a_stuck_disk_never_blocks_the_camera_thread_and_the_segment_is_given_up(
        store: tuple[Path, SegmentIndex], monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from recorder import segment_writer
    from recorder.segment_writer import DiskWriter

    root, index = store
    stuck = threading.Event()
    real_write = segment_writer.SegmentFile.write

    def write(self: segment_writer.SegmentFile, data: bytes) -> None:
        stuck.wait(30)  # the disk hangs (a dying drive, an NFS server gone)
        real_write(self, data)

    monkeypatch.setattr(segment_writer.SegmentFile, "write", write)
    disk = DiskWriter("cam", max_queued_bytes=200_000)
    core = RecorderCore("cam", root, Storage(path=root, segment_seconds=60), index.add_segment, disk=disk)
    units = encode_h264(15 * 12, gop=15)
    session = make_session(units)
    started = time.monotonic()
    core.handle(packets(session, units))
    assert time.monotonic() - started < 10  # muxing went on while nothing reached the disk
    assert core.error is not None and "does not keep up" in core.error
    assert core.dropped > 0 and not core.last_write_mono
    stuck.set()
    assert disk.close(timeout=10)
    parts = list((root / "recordings").rglob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0  # left for recovery, as after any write error
    assert index.all_segments("cam") == []


def test_the_disk_thread_writes_what_the_camera_thread_muxed(store: tuple[Path, SegmentIndex]) -> None:
    from recorder.segment_writer import DiskWriter

    root, index = store
    disk = DiskWriter("cam")
    core = RecorderCore("cam", root, Storage(path=root, segment_seconds=4), index.add_segment, disk=disk)
    units = encode_h264(15 * 9, gop=15)
    session = make_session(units)
    core.handle(packets(session, units))
    core.handle([SessionEnded(session, "stop")])
    assert disk.close(timeout=30)
    rows = index.all_segments("cam")
    assert len(rows) == 3 and sum(r.frames for r in rows) == len(units)
    assert core.segments_written == 3 and core.bytes_written == sum(r.bytes for r in rows)
    for row in rows:
        assert hashlib.sha256((root / row.path).read_bytes()).hexdigest() == row.sha256
        assert len(ffprobe_frames(root / row.path)) == row.frames
