"""The off-site archive: every closed segment copied, write-once, to S3 object storage with Object Lock.

Threads.  The :class:`Archiver` owns a database connection and a thread of its
own (an :class:`~nvr.base.sqlite_worker.SqliteWorker` on the station's
``index.sqlite3``; WAL serialises it with the recorders' and retention's
writers).  Everything slow runs there: looking for newly closed segments,
uploading, reading back.  The recorders are never touched: the archiver
finds new rows in the index on its own (every ``archive.scan_seconds``) and
queues them, so nothing on the recording path waits for the store.  The event
loop only awaits steps and reads :attr:`Archiver.status`, a snapshot the
thread replaces after each step (``/api/archive`` and metrics read it; no
database call on the loop).

Tables (created here, in the index file):

- ``archive_queue``: segments waiting for the store, oldest first; it
  survives restarts and outages of any length.  ``in_flight`` is set before a
  PUT, so after a crash the next attempt first asks the store whether that PUT
  arrived (HEAD; matching SHA-256 and chain hash) instead of uploading twice.
- ``archive_objects``: where each archived segment is (key, version id,
  retain-until, lock mode), its SHA-256, chain links and index fields, and when
  it was read back and hashed (``verified_at``).  Rows outlive the local
  segment, so an auditor can still find and fetch footage that is only in the
  archive.

Failures (store unreachable, wrong credentials, bucket without Object Lock,
a full store, an object that came back different) become a stable reason in
:attr:`status`, one WARNING (repeats at DEBUG), capped exponential backoff,
and an ``archive_backlog`` alarm once the oldest waiting segment closed more
than ``archive.backlog_alarm_seconds`` ago; it closes when the queue drains.
Nothing local is ever deleted because of a failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nvr.base.config import Archive
from nvr.base.sqlite_worker import SqliteWorker, connect
from nvr.base.timeutil import iso
from recorder.archive_store import (
    META_CHAIN,
    META_PREV,
    META_SEGMENT,
    META_SHA256,
    META_STATION,
    ArchiveError,
    ArchiveStore,
    encode_fields,
    object_key,
)
from recorder.index import _UNPROTECTED, SegmentRecord, _prefixed, record_fields
from recorder.storage import StorageError, segment_file

# Told whether the backlog is past its bound, with its details (the station opens or closes the
# archive_backlog alarm: this layer knows no alarms).
BacklogListener = Callable[[bool, dict[str, Any]], None]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS archive_queue (
    segment_id INTEGER PRIMARY KEY,
    camera TEXT NOT NULL,
    ready_at REAL NOT NULL,
    bytes INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    in_flight INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS archive_objects (
    id INTEGER PRIMARY KEY,
    segment_id INTEGER NOT NULL,
    camera TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    prev_chain TEXT NOT NULL,
    chain_hash TEXT NOT NULL,
    fields TEXT NOT NULL,
    key TEXT NOT NULL,
    version_id TEXT NOT NULL,
    retain_until REAL NOT NULL,
    lock_mode TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    verified_at REAL,
    verify_error TEXT,
    UNIQUE (key, version_id)
);
CREATE INDEX IF NOT EXISTS archive_objects_segment ON archive_objects(segment_id);
CREATE INDEX IF NOT EXISTS archive_objects_camera_start ON archive_objects(camera, start);
CREATE TABLE IF NOT EXISTS archive_state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_OBJECT_COLUMNS = ("segment_id, camera, start, end, bytes, sha256, prev_chain, chain_hash, fields, key, version_id,"
                   " retain_until, lock_mode, uploaded_at, verified_at, verify_error")
# S3 user metadata is bounded (2 KB); larger index fields (rare: long codec parameters) stay in the index only.
_MAX_FIELDS_METADATA = 1600


@dataclass(frozen=True, slots=True)
class ArchivedObject:
    segment_id: int
    camera: str
    start: float
    end: float
    bytes: int
    sha256: str
    prev_chain: str
    chain_hash: str
    fields: str  # JSON of the segment's index fields (recorder.index.NewSegment)
    key: str
    version_id: str
    retain_until: float
    lock_mode: str
    uploaded_at: float
    verified_at: float | None
    verify_error: str | None

    def segment(self) -> SegmentRecord:
        """The index row this object was made from (for clips and exports of archive-only footage)."""
        data = json.loads(self.fields)
        data.setdefault("status", "ok")  # not part of the chained fields
        return SegmentRecord(id=self.segment_id, prev_chain=self.prev_chain, chain_hash=self.chain_hash, **data)


@dataclass(frozen=True, slots=True)
class ArchiveStatus:
    """What /api/archive, metrics and the alarm read: replaced whole by the archiver's thread."""

    state: str = "starting"  # starting | ok | failing | stopped
    reason: str | None = None  # an ArchiveError code while failing
    message: str | None = None
    since: float = field(default_factory=time.time)
    backlog_segments: int = 0
    backlog_bytes: int = 0
    oldest_ready_at: float | None = None  # when the oldest waiting segment closed
    archived_segments: int = 0
    verified_segments: int = 0
    uploaded_total: int = 0
    uploaded_bytes_total: int = 0
    upload_seconds_total: float = 0.0
    failures_total: dict[str, int] = field(default_factory=dict)
    adopted_total: int = 0  # PUTs of an earlier run found in the store, not repeated
    lost_total: int = 0  # segments deleted locally before they could be archived
    last_upload_at: float | None = None
    retry_at: float | None = None

    def oldest_age(self, now: float | None = None) -> float:
        if self.oldest_ready_at is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.oldest_ready_at)

    def json(self, config: Archive) -> dict[str, Any]:
        from nvr.base import secrets

        return {
            "enabled": True,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
            "since": iso(self.since),
            "endpoint": secrets.redact_url(config.endpoint),
            "bucket": config.bucket,
            "prefix": config.prefix,
            "lock_mode": config.lock_mode.value,
            "lock_days": config.lock_days,
            "backlog": {
                "segments": self.backlog_segments,
                "bytes": self.backlog_bytes,
                "oldest_ready_at": iso(self.oldest_ready_at),
                "oldest_age_seconds": round(self.oldest_age(), 1),
                "alarm_after_seconds": config.backlog_alarm_seconds,
            },
            "archived_segments": self.archived_segments,
            "verified_segments": self.verified_segments,
            "uploaded_total": self.uploaded_total,
            "uploaded_bytes_total": self.uploaded_bytes_total,
            "failures_total": dict(self.failures_total),
            "adopted_total": self.adopted_total,
            "lost_total": self.lost_total,
            "last_upload_at": iso(self.last_upload_at),
            "retry_at": iso(self.retry_at),
        }


class ArchiveIndex(SqliteWorker):
    """The archiver's own connection (and thread) on ``index.sqlite3``."""

    def __init__(self, path: Path, name: str = "archive") -> None:
        self.path = path
        super().__init__(name, lambda: connect(path, SCHEMA))

    def state(self, name: str, default: str) -> str:
        row = self.db.execute("SELECT value FROM archive_state WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else default

    def set_state(self, name: str, value: str) -> None:
        self.db.execute("INSERT INTO archive_state (name, value) VALUES (?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    def objects(self, camera: str | None = None, start: float | None = None, end: float | None = None
                ) -> list[ArchivedObject]:
        return archived_objects(self.db, camera, start, end)


def archived_objects(db: sqlite3.Connection, camera: str | None = None, start: float | None = None,
                     end: float | None = None) -> list[ArchivedObject]:
    """Archived objects (newest version per key and segment), by camera then start."""
    query = f"SELECT {_OBJECT_COLUMNS} FROM archive_objects WHERE 1=1"
    args: list[Any] = []
    if camera is not None:
        query += " AND camera = ?"
        args.append(camera)
    if start is not None:
        query += " AND end > ?"
        args.append(start)
    if end is not None:
        query += " AND start < ?"
        args.append(end)
    try:
        rows = db.execute(query + " ORDER BY camera, start, id", args).fetchall()
    except sqlite3.OperationalError:  # no archive tables: this station never archived
        return []
    latest: dict[tuple[int, str], ArchivedObject] = {}
    for row in rows:
        obj = ArchivedObject(*row)
        latest[(obj.segment_id, obj.key)] = obj
    return sorted(latest.values(), key=lambda o: (o.camera, o.start))


def archived_and_verified(db: sqlite3.Connection, limit: int) -> list[SegmentRecord]:
    """Unprotected local segments whose archived copy was read back and matched, oldest first.

    Run by retention on its own connection: these may go under disk pressure before retention_days.
    """
    try:
        rows = db.execute(
            f"SELECT {_prefixed('s')} FROM segments s WHERE EXISTS (SELECT 1 FROM archive_objects a"
            " WHERE a.segment_id = s.id AND a.sha256 = s.sha256 AND a.chain_hash = s.chain_hash"
            f" AND a.verified_at IS NOT NULL AND a.verify_error IS NULL) AND {_UNPROTECTED}"
            " ORDER BY s.start LIMIT ?",
            (limit,),
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    return [SegmentRecord(*row) for row in rows]


def archived_copy(db: sqlite3.Connection, record: SegmentRecord) -> ArchivedObject | None:
    """The verified archived object of a local segment, if any."""
    for obj in archived_objects(db, record.camera, record.start, record.end):
        if obj.segment_id == record.id and obj.sha256 == record.sha256 and obj.verified_at is not None:
            return obj
    return None


@dataclass(frozen=True, slots=True)
class _Step:
    worked: bool = False
    error: ArchiveError | None = None


class Archiver:
    def __init__(self, root: Path, station: str, config: Archive, on_backlog: BacklogListener | None = None,
                 index_path: Path | None = None, store: ArchiveStore | None = None) -> None:
        from recorder.storage import INDEX_FILE

        self.root = root
        self.station = station
        self.config = config
        self.on_backlog = on_backlog
        self.db = ArchiveIndex(index_path or root / INDEX_FILE)
        self._stop_flag = threading.Event()
        self.store = store or ArchiveStore(config, stopping=self._stop_flag.is_set)
        self.status = ArchiveStatus()
        from recorder.archive_read import ArchiveReader

        # Reading back archive-only footage (clips, search) on a connection, thread and client of its own.
        self.reader = ArchiveReader(root, config)
        self._checked = False
        self._failures = 0
        self._kick = asyncio.Event()
        self._last_code: str | None = None

    # -- the loop side --------------------------------------------------------------------

    async def open(self) -> None:
        await self.db.call(self.db.open)

    def kick(self) -> None:
        self._kick.set()

    def stop(self) -> None:
        """Ask the running step to end soon (an upload in progress is abandoned and retried next start)."""
        self._stop_flag.set()
        self._kick.set()

    @property
    def stopping(self) -> bool:
        return self._stop_flag.is_set()

    async def run(self) -> None:
        await self.open()
        while not self.stopping:
            self._kick.clear()
            try:
                step = await self.db.call(self.step)
            except Exception:
                log.error("archive step failed", exc_info=True)
                step = _Step(error=ArchiveError("store_error", "internal error; see the log"))
            self.update_alarm()
            if step.worked:
                continue
            delay = self.config.scan_seconds
            if step.error is not None:
                if step.error.code == "aborted":
                    break
                delay = min(self.config.retry_max_seconds,
                            self.config.retry_initial_seconds * 2 ** min(self._failures - 1, 30))
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=delay)
            except TimeoutError:
                pass
        self.status = replace(self.status, state="stopped")

    async def close(self) -> None:
        self.stop()
        await asyncio.to_thread(self.db.close)
        await asyncio.to_thread(self.reader.close)

    def update_alarm(self, now: float | None = None) -> None:
        """Open archive_backlog past the bound, close it once the backlog is younger again (loop thread)."""
        if self.on_backlog is None:
            return
        status = self.status
        age = status.oldest_age(now)
        details = {"segments": status.backlog_segments, "bytes": status.backlog_bytes,
                   "oldest_age_seconds": round(age), "reason": status.reason or "",
                   "message": status.message or ""}
        self.on_backlog(age > self.config.backlog_alarm_seconds, details)

    # -- the archiver's thread ------------------------------------------------------------

    def step(self) -> _Step:
        """Queue new segments, then upload (and read back) the oldest waiting one. On the archiver's thread."""
        self.scan()
        try:
            if not self._checked:
                self.store.check()
                self._checked = True
            self.upload_station_key()
            worked = self.upload_next()
        except ArchiveError as exc:
            self._failed(exc)
            return _Step(error=exc)
        if self._failures:
            log.info("archive: the store answers again after %d failed attempt(s)", self._failures)
        self._failures = 0
        self._last_code = None
        self.refresh(state="ok")
        return _Step(worked=worked)

    def upload_station_key(self) -> None:
        """Put the station's public key beside its segments once, so the archive alone names it."""
        from recorder.archive_export import station_key_object
        from recorder.keys import fingerprint, load_station_public, public_pem

        public = load_station_public(self.root)
        if public is None:
            return  # not made yet (the daemon makes it at start); the next step tries again
        fp = fingerprint(public)
        if self.db.state("station_key", "") == fp:
            return
        key = station_key_object(self.config.prefix, self.station)
        stored = self.store.put_bytes(key, public_pem(public), "application/x-pem-file")
        self.db.set_state("station_key", fp)
        log.info("archive: station key %s stored as %s (version %s)", fp, key, stored.version_id)

    def scan(self) -> int:
        """Queue every indexed segment not yet queued or archived; return how many were added."""
        db = self.db.db
        last = int(self.db.state("scanned_id", "0"))
        top = db.execute("SELECT COALESCE(MAX(id), 0) FROM segments").fetchone()[0]
        if top < last:
            last = 0  # the index was rebuilt
        if top == last:
            return 0
        now = time.time()
        with self.db.transaction():
            cursor = db.execute(
                "INSERT OR IGNORE INTO archive_queue (segment_id, camera, ready_at, bytes, enqueued_at)"
                " SELECT s.id, s.camera, s.end, s.bytes, ? FROM segments s WHERE s.id > ? AND s.status != 'missing'"
                " AND NOT EXISTS (SELECT 1 FROM archive_objects a WHERE a.segment_id = s.id"
                " AND a.sha256 = s.sha256)",
                (now, last),
            )
            self.db.set_state("scanned_id", str(top))
        return cursor.rowcount

    def upload_next(self) -> bool:
        db = self.db.db
        row = db.execute("SELECT segment_id, in_flight FROM archive_queue ORDER BY segment_id LIMIT 1").fetchone()
        if row is None:
            return False
        segment_id, in_flight = int(row[0]), bool(row[1])
        from recorder.index import _COLUMNS

        found = db.execute(f"SELECT {_COLUMNS} FROM segments WHERE id = ?", (segment_id,)).fetchone()
        record = SegmentRecord(*found) if found else None
        path = None
        if record is not None:
            try:
                path = segment_file(self.root, record.path)
            except StorageError:
                path = None
        if record is None or path is None or not path.is_file():
            log.error("archive: segment %d was deleted locally before it could be archived", segment_id)
            db.execute("DELETE FROM archive_queue WHERE segment_id = ?", (segment_id,))
            self.status = replace(self.status, lost_total=self.status.lost_total + 1)
            return True
        key = object_key(self.config.prefix, self.station, record.path)
        fields = asdict(record_fields(record))
        fields.pop("status")
        metadata = {META_CHAIN: record.chain_hash, META_PREV: record.prev_chain, META_STATION: self.station}
        encoded = encode_fields(fields)
        if len(encoded) <= _MAX_FIELDS_METADATA:
            metadata[META_SEGMENT] = encoded
        version = self._already_stored(key, record) if in_flight else None
        if version is None:
            db.execute("UPDATE archive_queue SET in_flight = 1, attempts = attempts + 1 WHERE segment_id = ?",
                       (segment_id,))
            started = time.monotonic()
            try:
                stored = self.store.put_segment(key, path, record.sha256, record.bytes, metadata)
            except ArchiveError as exc:
                db.execute("UPDATE archive_queue SET last_error = ? WHERE segment_id = ?", (str(exc), segment_id))
                raise
            version_id, retain_until, mode = stored.version_id, stored.retain_until, stored.lock_mode
            self.status = replace(
                self.status, uploaded_total=self.status.uploaded_total + 1,
                uploaded_bytes_total=self.status.uploaded_bytes_total + record.bytes,
                upload_seconds_total=self.status.upload_seconds_total + time.monotonic() - started,
                last_upload_at=time.time())
        else:
            version_id, retain_until, mode = version
            log.info("archive: segment %d (%s) was already in the store from an interrupted run: version %s",
                     segment_id, key, version_id)
            self.status = replace(self.status, adopted_total=self.status.adopted_total + 1)
        with self.db.transaction():
            db.execute(
                f"INSERT OR IGNORE INTO archive_objects ({_OBJECT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.id, record.camera, record.start, record.end, record.bytes, record.sha256, record.prev_chain,
                 record.chain_hash, json.dumps(fields, sort_keys=True), key, version_id, retain_until, mode,
                 time.time(), None, None),
            )
            db.execute("DELETE FROM archive_queue WHERE segment_id = ?", (segment_id,))
        if self.config.verify_uploads:
            self._verify(key, version_id, record)
        return True

    def _already_stored(self, key: str, record: SegmentRecord) -> tuple[str, float, str] | None:
        """After a crash mid-upload: the version that PUT left in the store, if it is this segment's."""
        try:
            info = self.store.head(key)
        except ArchiveError as exc:
            if exc.code == "not_found":
                return None
            raise
        if info.metadata.get(META_SHA256) == record.sha256 and info.metadata.get(META_CHAIN) == record.chain_hash \
                and info.size == record.bytes and info.retain_until is not None:
            return info.version_id, info.retain_until, info.lock_mode or self.config.lock_mode.value
        return None

    def _verify(self, key: str, version_id: str, record: SegmentRecord) -> None:
        """Read the version back once and hash it: only then may tiered retention delete the local copy."""
        digest, size = self.store.hash_version(key, version_id)
        db = self.db.db
        if digest == record.sha256 and size == record.bytes:
            db.execute("UPDATE archive_objects SET verified_at = ?, verify_error = NULL"
                       " WHERE key = ? AND version_id = ?", (time.time(), key, version_id))
            return
        problem = f"read back {size} bytes with SHA-256 {digest}, uploaded {record.bytes} bytes {record.sha256}"
        with self.db.transaction():
            db.execute("UPDATE archive_objects SET verify_error = ? WHERE key = ? AND version_id = ?",
                       (problem, key, version_id))
            # Upload it again (a new version): the bad one stays locked, and is reported by verify-archive.
            db.execute("INSERT OR IGNORE INTO archive_queue (segment_id, camera, ready_at, bytes, enqueued_at)"
                       " VALUES (?,?,?,?,?)", (record.id, record.camera, record.end, record.bytes, time.time()))
        raise ArchiveError("verify_failed", f"object {key} version {version_id} came back different: {problem}")

    def _failed(self, exc: ArchiveError) -> None:
        self._failures += 1
        if exc.code in ("bucket_missing", "object_lock_disabled", "auth_failed", "tls_error"):
            self._checked = False
        if exc.code != self._last_code:
            log.warning("archive: %s (backlog kept; retrying with backoff)", exc)
        else:
            log.debug("archive: still failing: %s", exc)
        self._last_code = exc.code
        failures = dict(self.status.failures_total)
        failures[exc.code] = failures.get(exc.code, 0) + 1
        delay = min(self.config.retry_max_seconds, self.config.retry_initial_seconds * 2 ** min(self._failures - 1, 30))
        self.status = replace(self.status, failures_total=failures, retry_at=time.time() + delay)
        self.refresh(state="failing", reason=exc.code, message=exc.args[0])

    def refresh(self, state: str, reason: str | None = None, message: str | None = None) -> None:
        """Recount the backlog and replace the status snapshot (archiver's thread)."""
        db = self.db.db
        count, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(ready_at) FROM archive_queue").fetchone()
        archived, verified = db.execute(
            "SELECT COUNT(DISTINCT key), COUNT(DISTINCT CASE WHEN verified_at IS NOT NULL AND verify_error IS NULL"
            " THEN key END) FROM archive_objects").fetchone()
        previous = self.status
        self.status = replace(
            previous, state=state, reason=reason, message=message,
            since=previous.since if previous.state == state and previous.reason == reason else time.time(),
            backlog_segments=int(count), backlog_bytes=int(size), oldest_ready_at=oldest,
            archived_segments=int(archived), verified_segments=int(verified),
            retry_at=previous.retry_at if state == "failing" else None)


class ArchiveCollector(Collector):
    """Prometheus series of the archive, read from the status snapshot at scrape time."""

    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    def collect(self) -> Iterator[Metric]:
        status = self.archiver.status
        up = GaugeMetricFamily("nvr_archive_up", "1 while the last attempt to reach the archive succeeded")
        up.add_metric([], 1.0 if status.state == "ok" else 0.0)
        segments = GaugeMetricFamily("nvr_archive_backlog_segments", "Closed segments not yet in the archive")
        segments.add_metric([], status.backlog_segments)
        size = GaugeMetricFamily("nvr_archive_backlog_bytes", "Bytes of closed segments not yet in the archive")
        size.add_metric([], status.backlog_bytes)
        age = GaugeMetricFamily("nvr_archive_backlog_oldest_age_seconds",
                                "Since the oldest segment not yet archived closed (0: none waiting)")
        age.add_metric([], status.oldest_age())
        uploaded = CounterMetricFamily("nvr_archive_uploaded_segments", "Segments uploaded")
        uploaded.add_metric([], status.uploaded_total)
        uploaded_bytes = CounterMetricFamily("nvr_archive_uploaded_bytes", "Bytes uploaded")
        uploaded_bytes.add_metric([], status.uploaded_bytes_total)
        verified = GaugeMetricFamily("nvr_archive_verified_segments", "Archived segments read back and matched")
        verified.add_metric([], status.verified_segments)
        failures = CounterMetricFamily("nvr_archive_failures", "Failed archive attempts, by reason", labels=["reason"])
        for reason in ("unreachable", "timeout", "tls_error", "auth_failed", "bucket_missing", "object_lock_disabled",
                       "store_error", "bad_digest", "store_full", "verify_failed"):
            failures.add_metric([reason], status.failures_total.get(reason, 0))
        lost = CounterMetricFamily("nvr_archive_lost_segments", "Segments deleted locally before they were archived")
        lost.add_metric([], status.lost_total)
        yield from (up, segments, size, age, uploaded, uploaded_bytes, verified, failures, lost)
