"""The time index of recorded segments, in SQLite (WAL), plus deletions, holds and storage events.

One row per closed, fsynced segment.  Each row carries a chain hash: SHA-256
over the previous row's chain hash (per camera) and the row's own fields, so
that an edited, removed or inserted row is detectable later.  All database
work happens on the index's own thread (:class:`nvr.base.sqlite_worker.SqliteWorker`),
never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nvr.base.sqlite_worker import SqliteWorker, connect

GENESIS = "0" * 64
# Segments are cut at keyframes; this bounds how long one can be so that range
# queries scan an index range instead of a camera's whole history.
MAX_SEGMENT_SECONDS = 4 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    frames INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    codec TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    params TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL DEFAULT 'ok',
    prev_chain TEXT NOT NULL,
    chain_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS segments_camera_start ON segments(camera, start);
CREATE INDEX IF NOT EXISTS segments_start ON segments(start);
CREATE TABLE IF NOT EXISTS deletions (
    id INTEGER PRIMARY KEY,
    segment_id INTEGER NOT NULL,
    camera TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    bytes INTEGER NOT NULL,
    path TEXT NOT NULL,
    chain_hash TEXT NOT NULL,
    reason TEXT NOT NULL,
    deleted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY,
    camera TEXT,
    start REAL NOT NULL,
    end REAL NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    released_at REAL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS storage_events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    camera TEXT,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL
);
"""

_COLUMNS = (
    "id, camera, start, end, frames, bytes, sha256, codec, width, height, params, path, status, prev_chain, chain_hash,"
    " meta"
)

# A segment is protected while an active hold for its camera (or all cameras) overlaps it.
_UNPROTECTED = """
NOT EXISTS (SELECT 1 FROM holds h WHERE h.released_at IS NULL
            AND (h.camera IS NULL OR h.camera = s.camera) AND h.start < s.end AND h.end > s.start)
"""


@dataclass(frozen=True, slots=True)
class NewSegment:
    camera: str
    start: float
    end: float
    frames: int
    bytes: int
    sha256: str
    codec: str
    width: int
    height: int
    params: str  # JSON: codec parameters (extradata, audio)
    path: str  # relative to the storage root
    status: str = "ok"
    # Canonical JSON (encode_meta) of what a segment carries beyond the media fields: where it came
    # from (an upload, a backfill from the camera's card), the camera's clock offset.  Chained when not
    # empty, so rows written before the column existed keep their links.
    meta: str = "{}"


def encode_meta(meta: dict[str, Any]) -> str:
    """The one encoding of ``meta`` that is chained: sorted keys, no spaces."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_meta(meta: str) -> dict[str, Any]:
    value = json.loads(meta)
    if not isinstance(value, dict):
        raise ValueError("segment meta must be a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    id: int
    camera: str
    start: float
    end: float
    frames: int
    bytes: int
    sha256: str
    codec: str
    width: int
    height: int
    params: str
    path: str
    status: str
    prev_chain: str
    chain_hash: str
    meta: str = "{}"

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Hold:
    id: int
    camera: str | None
    start: float
    end: float
    reason: str
    created_by: str
    created_at: float
    released_at: float | None


def chain_hash(prev_chain: str, segment: NewSegment) -> str:
    """The chain link of a row: its own fields and the previous link, canonically encoded."""
    fields = asdict(segment)
    fields.pop("status")  # status may change (flagged missing); the evidence fields may not
    if fields["meta"] == "{}":
        fields.pop("meta")  # rows from before the column hash as they always did
    fields["start"] = f"{segment.start:.6f}"
    fields["end"] = f"{segment.end:.6f}"
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{prev_chain}|{canonical}".encode()).hexdigest()


def record_fields(record: SegmentRecord) -> NewSegment:
    return NewSegment(
        camera=record.camera, start=record.start, end=record.end, frames=record.frames, bytes=record.bytes,
        sha256=record.sha256, codec=record.codec, width=record.width, height=record.height, params=record.params,
        path=record.path, status=record.status, meta=record.meta,
    )


class SegmentIndex(SqliteWorker):
    def __init__(self, path: Path, name: str = "index") -> None:
        self.path = path
        super().__init__(name, lambda: _migrated(connect(path, _SCHEMA, foreign_keys=True)))

    # -- segments -------------------------------------------------------------------------

    def add_segment(self, segment: NewSegment) -> SegmentRecord:
        if encode_meta(decode_meta(segment.meta)) != segment.meta:
            raise ValueError("segment meta is not in its canonical encoding (recorder.index.encode_meta)")
        with self.transaction() as db:
            row = db.execute(
                "SELECT chain_hash FROM segments WHERE camera = ? ORDER BY id DESC LIMIT 1", (segment.camera,)
            ).fetchone()
            if row is None:
                row = db.execute(
                    "SELECT chain_hash FROM deletions WHERE camera = ? ORDER BY segment_id DESC LIMIT 1",
                    (segment.camera,),
                ).fetchone()
            prev = row[0] if row else GENESIS
            link = chain_hash(prev, segment)
            cursor = db.execute(
                "INSERT INTO segments (camera, start, end, frames, bytes, sha256, codec, width, height, params,"
                " path, status, prev_chain, chain_hash, created_at, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    segment.camera, segment.start, segment.end, segment.frames, segment.bytes, segment.sha256,
                    segment.codec, segment.width, segment.height, segment.params, segment.path, segment.status,
                    prev, link, time.time(), segment.meta,
                ),
            )
        assert cursor.lastrowid is not None
        return SegmentRecord(cursor.lastrowid, *_fields_tuple(segment), prev, link, segment.meta)  # type: ignore[call-arg]

    def segments(self, camera: str, start: float, end: float) -> list[SegmentRecord]:
        """Segments of ``camera`` overlapping [start, end), oldest first."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM segments WHERE camera = ? AND start >= ? AND start < ? AND end > ?"
            " ORDER BY start",
            (camera, start - MAX_SEGMENT_SECONDS, end, start),
        ).fetchall()
        return [SegmentRecord(*row) for row in rows]

    def latest(self, camera: str) -> SegmentRecord | None:
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM segments WHERE camera = ? ORDER BY start DESC LIMIT 1", (camera,)
        ).fetchone()
        return SegmentRecord(*row) if row else None

    def last_before(self, camera: str, at: float) -> SegmentRecord | None:
        """The segment of ``camera`` that ended last at or before ``at``."""
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM segments WHERE camera = ? AND end <= ? ORDER BY end DESC LIMIT 1", (camera, at)
        ).fetchone()
        return SegmentRecord(*row) if row else None

    def by_path(self, path: str) -> SegmentRecord | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM segments WHERE path = ?", (path,)).fetchone()
        return SegmentRecord(*row) if row else None

    def segment(self, segment_id: int) -> SegmentRecord | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM segments WHERE id = ?", (segment_id,)).fetchone()
        return SegmentRecord(*row) if row else None

    def all_segments(self, camera: str | None = None) -> list[SegmentRecord]:
        if camera is None:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM segments ORDER BY camera, id").fetchall()
        else:
            query = f"SELECT {_COLUMNS} FROM segments WHERE camera = ? ORDER BY id"
            rows = self.db.execute(query, (camera,)).fetchall()
        return [SegmentRecord(*row) for row in rows]

    def set_status(self, segment_id: int, status: str) -> None:
        self.db.execute("UPDATE segments SET status = ? WHERE id = ?", (status, segment_id))

    # -- retention ------------------------------------------------------------------------

    def expired(self, cutoff: float, limit: int = 500) -> list[SegmentRecord]:
        """Unprotected segments that ended before ``cutoff``, oldest first."""
        rows = self.db.execute(
            f"SELECT {_prefixed('s')} FROM segments s WHERE s.start < ? AND s.end < ? AND {_UNPROTECTED}"
            " ORDER BY s.start LIMIT ?",
            (cutoff, cutoff, limit),
        ).fetchall()
        return [SegmentRecord(*row) for row in rows]

    def oldest_unprotected(self, limit: int = 50) -> list[SegmentRecord]:
        rows = self.db.execute(
            f"SELECT {_prefixed('s')} FROM segments s WHERE {_UNPROTECTED} ORDER BY s.start LIMIT ?", (limit,)
        ).fetchall()
        return [SegmentRecord(*row) for row in rows]

    def is_protected(self, segment_id: int) -> bool:
        row = self.db.execute(
            f"SELECT 1 FROM segments s WHERE s.id = ? AND NOT ({_UNPROTECTED})", (segment_id,)
        ).fetchone()
        return row is not None

    def record_deletion(self, record: SegmentRecord, reason: str) -> None:
        """Remove the row and log the deletion (what, why, when) in one transaction."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO deletions (segment_id, camera, start, end, bytes, path, chain_hash, reason, deleted_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (record.id, record.camera, record.start, record.end, record.bytes, record.path, record.chain_hash,
                 reason, time.time()),
            )
            db.execute("DELETE FROM segments WHERE id = ?", (record.id,))

    def deletions(self, camera: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT segment_id, camera, start, end, bytes, path, chain_hash, reason, deleted_at FROM deletions"
        args: tuple[Any, ...] = ()
        if camera is not None:
            query += " WHERE camera = ?"
            args = (camera,)
        cols = ("segment_id", "camera", "start", "end", "bytes", "path", "chain_hash", "reason", "deleted_at")
        return [dict(zip(cols, row, strict=True)) for row in self.db.execute(query + " ORDER BY id", args)]

    # -- holds ----------------------------------------------------------------------------

    def add_hold(self, camera: str | None, start: float, end: float, reason: str, created_by: str = "") -> Hold:
        cursor = self.db.execute(
            "INSERT INTO holds (camera, start, end, reason, created_by, created_at) VALUES (?,?,?,?,?,?)",
            (camera, start, end, reason, created_by, time.time()),
        )
        assert cursor.lastrowid is not None
        hold = self.hold(cursor.lastrowid)
        assert hold is not None
        return hold

    def hold(self, hold_id: int) -> Hold | None:
        row = self.db.execute(
            "SELECT id, camera, start, end, reason, created_by, created_at, released_at FROM holds WHERE id = ?",
            (hold_id,),
        ).fetchone()
        return Hold(*row) if row else None

    def release_hold(self, hold_id: int) -> bool:
        cursor = self.db.execute(
            "UPDATE holds SET released_at = ? WHERE id = ? AND released_at IS NULL", (time.time(), hold_id)
        )
        return cursor.rowcount > 0

    def active_holds(self) -> list[Hold]:
        rows = self.db.execute(
            "SELECT id, camera, start, end, reason, created_by, created_at, released_at FROM holds"
            " WHERE released_at IS NULL ORDER BY id"
        ).fetchall()
        return [Hold(*row) for row in rows]

    # -- checkpoints (recorder/checkpoint.py) ---------------------------------------------

    def chain_heads(self) -> dict[str, tuple[int, str, float]]:
        """camera → (row id, chain hash, end) of its newest indexed segment."""
        rows = self.db.execute(
            "SELECT camera, id, chain_hash, end FROM segments"
            " WHERE id IN (SELECT MAX(id) FROM segments GROUP BY camera)"
        ).fetchall()
        return {camera: (sid, link, end) for camera, sid, link, end in rows}

    def next_checkpoint_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM checkpoints").fetchone()
        return int(row[0] or 0) + 1

    def add_checkpoint(self, seq: int, at: float, body: str, signature: str) -> None:
        self.db.execute("INSERT INTO checkpoints (seq, at, body, signature) VALUES (?,?,?,?)",
                        (seq, at, body, signature))

    def checkpoints(self, after: int = 0, limit: int = 500) -> list[tuple[int, str, str]]:
        """(seq, body, signature) of the checkpoints after ``after``, oldest first."""
        rows = self.db.execute(
            "SELECT seq, body, signature FROM checkpoints WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        ).fetchall()
        return [(int(seq), body, sig) for seq, body, sig in rows]

    # -- storage events -------------------------------------------------------------------

    def add_event(self, kind: str, severity: str, message: str, camera: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO storage_events (at, camera, kind, severity, message) VALUES (?,?,?,?,?)",
            (time.time(), camera, kind, severity, message),
        )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT at, camera, kind, severity, message FROM storage_events"
        args: tuple[Any, ...] = ()
        if kind:
            query += " WHERE kind = ?"
            args = (kind,)
        cols = ("at", "camera", "kind", "severity", "message")
        return [dict(zip(cols, row, strict=True)) for row in self.db.execute(query + " ORDER BY id", args)]


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in _COLUMNS.split(","))


def _fields_tuple(segment: NewSegment) -> tuple[Any, ...]:
    return (
        segment.camera, segment.start, segment.end, segment.frames, segment.bytes, segment.sha256, segment.codec,
        segment.width, segment.height, segment.params, segment.path, segment.status,
    )


def _migrated(db: sqlite3.Connection) -> sqlite3.Connection:
    """Bring an index written by an older version up to this schema (columns added since)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(segments)")}
    if "meta" not in columns:
        db.execute("ALTER TABLE segments ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'")
    return db
