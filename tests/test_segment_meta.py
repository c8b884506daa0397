"""A segment's provenance (recorder/index.py NewSegment.meta) is chained, exported and verified.

Uploaded body-camera files and footage backfilled from a camera's card say where they came from;
that statement is evidence, so editing it must break the chain like editing any other field.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from nvr.base.config import Storage
from recorder.export import ExportRequest, build_package
from recorder.index import GENESIS, NewSegment, SegmentIndex, SegmentRecord, chain_hash, encode_meta, record_fields
from recorder.keys import StationKey
from recorder.recorder import RecorderCore
from recorder.trust import TrustAnchor, TrustedKey
from recorder.verify import Verdict, verify_package, verify_storage
from streams.media import SessionEnded
from tests.media import encode_h264, make_session, packets

PROVENANCE = {"origin": "backfill", "source": "edge:cell-1", "clock_offset_seconds": -1.25}


def row(camera: str, start: float, meta: str = "{}", path: str = "") -> NewSegment:
    return NewSegment(camera=camera, start=start, end=start + 2, frames=50, bytes=100, sha256="0" * 64, codec="h264",
                      width=640, height=360, params="{}", path=path or f"recordings/{camera}/{start:.0f}.mp4",
                      meta=meta)


def test_meta_is_chained_and_rows_without_it_hash_as_before(store: tuple[Path, SegmentIndex]) -> None:
    _, index = store
    plain = index.add_segment(row("cam", 1000.0))
    legacy = json.dumps({k: v for k, v in {
        "camera": "cam", "start": "1000.000000", "end": "1002.000000", "frames": 50, "bytes": 100,
        "sha256": "0" * 64, "codec": "h264", "width": 640, "height": 360, "params": "{}",
        "path": "recordings/cam/1000.mp4"}.items()}, sort_keys=True, separators=(",", ":"))
    assert plain.chain_hash == hashlib.sha256(f"{GENESIS}|{legacy}".encode()).hexdigest()
    marked = index.add_segment(row("cam", 1002.0, encode_meta(PROVENANCE)))
    assert marked.chain_hash == chain_hash(plain.chain_hash, record_fields(marked))
    edited = replace(record_fields(marked), meta=encode_meta({**PROVENANCE, "origin": "live"}))
    assert chain_hash(plain.chain_hash, edited) != marked.chain_hash
    assert index.all_segments("cam")[1].meta == encode_meta(PROVENANCE)


def test_non_canonical_meta_is_refused(store: tuple[Path, SegmentIndex]) -> None:
    _, index = store
    for bad in ('{"b": 1, "a": 2}', "[1]", "not json", '{"x":NaN}'):
        with pytest.raises(ValueError):
            index.add_segment(row("cam", 1000.0, bad))
    assert index.all_segments("cam") == []


def test_an_index_from_before_the_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE segments (id INTEGER PRIMARY KEY, camera TEXT NOT NULL, start REAL NOT NULL,
        end REAL NOT NULL, frames INTEGER NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, codec TEXT NOT NULL,
        width INTEGER NOT NULL, height INTEGER NOT NULL, params TEXT NOT NULL, path TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL DEFAULT 'ok', prev_chain TEXT NOT NULL, chain_hash TEXT NOT NULL,
        created_at REAL NOT NULL);""")
    old = row("cam", 1000.0)
    link = chain_hash(GENESIS, old)
    db.execute("INSERT INTO segments (camera, start, end, frames, bytes, sha256, codec, width, height, params, path,"
               " status, prev_chain, chain_hash, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               ("cam", 1000.0, 1002.0, 50, 100, "0" * 64, "h264", 640, 360, "{}", old.path, "ok", GENESIS, link, 1.0))
    db.commit()
    db.close()
    index = SegmentIndex(path)
    index.open()
    try:
        (migrated,) = index.all_segments("cam")
        assert migrated.meta == "{}" and chain_hash(GENESIS, record_fields(migrated)) == link
        nxt = index.add_segment(row("cam", 1002.0, encode_meta(PROVENANCE)))
        assert nxt.prev_chain == link
    finally:
        index.close()


def test_meta_travels_in_the_package_and_an_edit_fails_verification(store: tuple[Path, SegmentIndex],
                                                                    tmp_path: Path) -> None:
    root, index = store
    units = encode_h264(15 * 4, gop=15)
    session = make_session(units)

    def add(segment: NewSegment) -> SegmentRecord:
        return index.add_segment(replace(segment, meta=encode_meta(PROVENANCE)))

    core = RecorderCore("cam", root, Storage(path=root, segment_seconds=2), add)
    core.handle(packets(session, units))
    core.handle([SessionEnded(session, "end")])
    rows = index.all_segments("cam")
    assert rows and all(r.meta == encode_meta(PROVENANCE) for r in rows)
    assert verify_storage(root, index).ok

    key = StationKey.load_or_create(root)
    out = tmp_path / "package.zip"
    build_package(root=root, index=index, key=key, station={"id": "st-test", "name": "Test"},
                  camera_info={"cam": {"name": "Cam", "zone": "other"}},
                  request=ExportRequest(["cam"], rows[0].start, rows[-1].end, "test", "auditor"),
                  output=out, now=rows[-1].end + 1)
    anchor = TrustAnchor((TrustedKey(label="test", public=key.public),))
    report = verify_package(out, anchor)
    assert report.verdict is Verdict.OK, report.failures
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["cameras"][0]["segments"][0]["meta"] == PROVENANCE

    # An insider with the daemon's file access rewrites the provenance in the index: the chain says so.
    db = sqlite3.connect(root / "index.sqlite3")
    db.execute("UPDATE segments SET meta = ? WHERE id = ?", (encode_meta({**PROVENANCE, "origin": "live"}), rows[0].id))
    db.commit()
    db.close()
    tampered = verify_storage(root, index)
    assert not tampered.ok and any("edited" in f for f in tampered.failures)
