"""Alarms as intervals: what went wrong with which camera (or the storage), from when to when.

An alarm is opened when a problem is confirmed and closed when it clears;
at most one alarm of a type is open per camera.  The open set lives on the
event loop (opening and closing are cheap, synchronous calls that notify the
listeners: live feed, webhooks); every change is persisted to SQLite on a
dedicated thread, in order, never on the loop.

Where the rows live.  Alarms must keep working when the storage is refused
(that is when they matter most), so the store starts in an in-memory SQLite
database and :meth:`AlarmStore.attach` moves it into ``alarms.db`` on the
storage once the storage is accepted, copying what happened meanwhile.  If the
daemon stops before the storage is ever accepted, those alarms are lost with
it (they were still sent to webhooks).  Keeping a file of its own, not a table
in the segment index, keeps alarm writes off the index thread and out of its
hash-chained tables.

Daemon runs.  Each start of the daemon is a row in ``runs`` with a heartbeat
(``last_seen``).  The coverage report uses the runs to tell "daemon down" from
other gaps, and alarms left open by a crash are closed at their run's last
heartbeat when the store is next attached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from nvr.base.config import Zone
from nvr.base.sqlite_worker import SqliteWorker, connect
from nvr.base.timeutil import iso

log = logging.getLogger(__name__)


ALARMS_FILE = "alarms.db"
HEARTBEAT_SECONDS = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY,
    camera TEXT,
    type TEXT NOT NULL,
    severity TEXT NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL,
    details TEXT NOT NULL,
    run TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alarms_opened ON alarms(opened_at);
CREATE INDEX IF NOT EXISTS alarms_camera_opened ON alarms(camera, opened_at);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    stopped_at REAL
);
"""
_ALARM_COLUMNS = "id, camera, type, severity, opened_at, closed_at, details"


# The one details key two modules share: when an offline camera's last packet arrived (camera.py writes
# it, coverage.py counts the outage from it rather than from when the stall was declared).
LAST_PACKET_AT = "last_packet_at"


class AlarmType(StrEnum):
    OFFLINE = "offline"
    COVERED = "covered"
    BLURRED = "blurred"
    MOVED = "moved"
    FROZEN = "frozen"
    LOW_FPS = "low_fps"
    RECORDING_STALLED = "recording_stalled"
    DISK_FULL = "disk_full"
    ARCHIVE_BACKLOG = "archive_backlog"  # segments wait for the off-site archive too long (recorder/archive.py)
    # A body-camera file from the inbox was refused and quarantined (recorder/bodycam_inbox.py); it closes when
    # the next file of that device is taken.
    BODYCAM_QUARANTINED = "bodycam_quarantined"
    # From the camera's ONVIF link (nvr/health/onvif_health.py): its clock, and events the camera raises itself.
    CLOCK_DRIFT = "clock_drift"
    CAMERA_TAMPER = "camera_tamper"
    CAMERA_VIDEO_LOSS = "camera_video_loss"
    CAMERA_INPUT = "camera_input"


STORAGE_ALARMS = (AlarmType.DISK_FULL, AlarmType.ARCHIVE_BACKLOG)
DEVICE_ALARMS = (AlarmType.BODYCAM_QUARANTINED,)  # body cameras' (issue 15), not a fixed camera's
CAMERA_ALARMS = tuple(t for t in AlarmType if t not in STORAGE_ALARMS and t not in DEVICE_ALARMS)


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


def severity_for(zone: Zone | None) -> Severity:
    """Holding cells (and the storage, zone None) are critical: minutes count there."""
    return Severity.CRITICAL if zone is None or zone is Zone.HOLDING_CELL else Severity.WARNING


@dataclass(frozen=True, slots=True)
class Alarm:
    id: str
    camera: str | None  # None: a station-wide alarm (storage)
    type: AlarmType
    severity: Severity
    opened_at: float
    closed_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def duration(self) -> float | None:
        return None if self.closed_at is None else round(self.closed_at - self.opened_at, 3)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "camera": self.camera,
            "type": self.type.value,
            "severity": self.severity.value,
            "opened_at": iso(self.opened_at),
            "closed_at": iso(self.closed_at),
            "duration_seconds": self.duration,
            "open": self.open,
            "details": self.details,
        }


class AlarmAction(StrEnum):
    OPENED = "opened"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AlarmChange:
    action: AlarmAction
    alarm: Alarm

    def json(self) -> dict[str, Any]:
        return {"event": f"alarm.{self.action.value}", "alarm": self.alarm.json()}


@dataclass(frozen=True, slots=True)
class Run:
    """One start-to-stop (or crash) of the daemon."""

    id: str
    started_at: float
    last_seen: float
    stopped_at: float | None

    @property
    def end(self) -> float:
        return self.stopped_at if self.stopped_at is not None else self.last_seen


class AlarmStore:
    """Open and close alarms on the loop; persist and query them on a thread of the store's own."""

    def __init__(self) -> None:
        # Composition, not inheritance: close() here closes an alarm, not the database.
        self.worker = SqliteWorker("alarms", lambda: _connect(":memory:"))
        self.call = self.worker.call
        self.submit = self.worker.submit
        self.run_id = uuid.uuid4().hex
        self.started_at = time.time()
        self.path: Path | None = None
        self.listeners: list[Callable[[AlarmChange], None]] = []
        self.opened_total: dict[tuple[str | None, AlarmType], int] = {}
        self.write_errors = 0
        self._open: dict[tuple[str | None, AlarmType], Alarm] = {}
        self._closed = False
        self._submit(self._start_run)

    # -- loop side ------------------------------------------------------------------------

    def open(
        self,
        camera: str | None,
        kind: AlarmType,
        severity: Severity,
        details: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> Alarm | None:
        """Open an alarm unless one of this type is already open for the camera."""
        key = (camera, kind)
        if self._closed or key in self._open:
            return None
        alarm = Alarm(
            uuid.uuid4().hex, camera, kind, severity, at if at is not None else time.time(), details=dict(details or {})
        )
        self._open[key] = alarm
        self.opened_total[key] = self.opened_total.get(key, 0) + 1
        self._submit(self._insert, alarm)
        level = logging.WARNING if severity is Severity.WARNING else logging.ERROR
        log.log(
            level,
            "[%s] alarm %s opened (%s): %s",
            camera or "station",
            kind.value,
            severity.value,
            _summary(alarm.details),
        )
        self._notify(AlarmChange(AlarmAction.OPENED, alarm))
        return alarm

    def close(
        self,
        camera: str | None,
        kind: AlarmType,
        details: dict[str, Any] | None = None,
        at: float | None = None,
        notify: bool = True,
    ) -> Alarm | None:
        alarm = self._open.pop((camera, kind), None)
        if alarm is None:
            return None
        closed_at = max(alarm.opened_at, at if at is not None else time.time())
        alarm = replace(alarm, closed_at=closed_at, details={**alarm.details, **(details or {})})
        self._submit(self._update, alarm)
        log.info("[%s] alarm %s closed after %.1f s", camera or "station", kind.value, alarm.duration or 0.0)
        if notify:
            self._notify(AlarmChange(AlarmAction.CLOSED, alarm))
        return alarm

    def is_open(self, camera: str | None, kind: AlarmType) -> bool:
        return (camera, kind) in self._open

    def open_alarms(self) -> list[Alarm]:
        return sorted(self._open.values(), key=lambda a: a.opened_at)

    def _notify(self, change: AlarmChange) -> None:
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:
                log.error("alarm listener %r failed", listener, exc_info=True)

    def _submit(self, fn: Callable[..., object], *args: Any) -> None:
        future = self.submit(fn, *args)
        future.add_done_callback(self._check_write)

    def _check_write(self, future: Any) -> None:
        exc = future.exception()
        if exc is not None:
            self.write_errors += 1
            log.error("cannot write alarms to %s: %s", self.path or "memory", exc, exc_info=exc)

    async def attach(self, path: Path) -> None:
        """Move the store onto the storage: copy the in-memory rows, close alarms left open by a crash."""
        await self.call(self._attach, path)

    async def heartbeat(self) -> None:
        """Long-lived task: record that the daemon is alive, for the coverage report."""
        while not self._closed:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if not self._closed:
                self._submit(self._touch_run, time.time())

    async def shutdown(self) -> None:
        """Close the open alarms (the daemon cannot watch any more) and the database. Idempotent."""
        if self._closed:
            return
        now = time.time()
        for camera, kind in list(self._open):
            # Not sent to webhooks: the problem did not clear, the daemon stopped watching.
            self.close(camera, kind, {"closed_by": "shutdown"}, at=now, notify=False)
        self._closed = True
        self._submit(self._stop_run, now)
        await asyncio.to_thread(self.worker.close)

    # -- queries (awaitable; run on the store thread) --------------------------------------

    async def query(
        self,
        camera: str | None = None,
        kind: AlarmType | None = None,
        since: float | None = None,
        until: float | None = None,
        open_only: bool = False,
        limit: int = 1000,
    ) -> list[Alarm]:
        """Alarms overlapping [since, until], oldest first."""
        return await self.call(self._query, camera, kind, since, until, open_only, limit)

    async def runs(self, since: float, until: float) -> list[Run]:
        return await self.call(self._runs, since, until)

    # -- store thread ---------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        return self.worker.db

    def _start_run(self) -> None:
        self.db.execute(
            "INSERT INTO runs (id, started_at, last_seen) VALUES (?,?,?)", (self.run_id, self.started_at, time.time())
        )

    def _touch_run(self, now: float) -> None:
        self.db.execute("UPDATE runs SET last_seen = ? WHERE id = ?", (now, self.run_id))

    def _stop_run(self, now: float) -> None:
        self.db.execute("UPDATE runs SET last_seen = ?, stopped_at = ? WHERE id = ?", (now, now, self.run_id))

    def _insert(self, alarm: Alarm) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO alarms ({_ALARM_COLUMNS}, run) VALUES (?,?,?,?,?,?,?,?)",
            (
                alarm.id,
                alarm.camera,
                alarm.type.value,
                alarm.severity.value,
                alarm.opened_at,
                alarm.closed_at,
                json.dumps(alarm.details, sort_keys=True),
                self.run_id,
            ),
        )

    def _update(self, alarm: Alarm) -> None:
        self.db.execute(
            "UPDATE alarms SET closed_at = ?, details = ? WHERE id = ?",
            (alarm.closed_at, json.dumps(alarm.details, sort_keys=True), alarm.id),
        )

    def _attach(self, path: Path) -> None:
        if self.path == path:
            return
        target = _connect(str(path), durable=True)
        memory = self.db
        target.execute("BEGIN IMMEDIATE")
        try:
            # A previous run that crashed left its alarms open: they ended, at the
            # latest, when that run was last seen alive.
            crashed = target.execute(
                "UPDATE alarms SET"
                " closed_at = MAX(opened_at, (SELECT r.last_seen FROM runs r WHERE r.id = alarms.run)),"
                " details = json_set(details, '$.closed_by', 'daemon_down')"
                " WHERE closed_at IS NULL AND run != ?",
                (self.run_id,),
            ).rowcount
            for row in memory.execute("SELECT id, started_at, last_seen, stopped_at FROM runs"):
                target.execute(
                    "INSERT OR REPLACE INTO runs (id, started_at, last_seen, stopped_at) VALUES (?,?,?,?)", row
                )
            for row in memory.execute(f"SELECT {_ALARM_COLUMNS}, run FROM alarms"):
                target.execute(f"INSERT OR REPLACE INTO alarms ({_ALARM_COLUMNS}, run) VALUES (?,?,?,?,?,?,?,?)", row)
            target.execute("COMMIT")
        except BaseException:
            target.execute("ROLLBACK")
            target.close()
            raise
        if crashed:
            log.warning("closed %d alarm(s) left open when the daemon last stopped unexpectedly", crashed)
        self.worker.replace_db(target)  # closes the in-memory database
        self.path = path

    def _query(
        self,
        camera: str | None,
        kind: AlarmType | None,
        since: float | None,
        until: float | None,
        open_only: bool,
        limit: int,
    ) -> list[Alarm]:
        where: list[str] = []
        args: list[object] = []
        if camera is not None:
            where.append("camera = ?")
            args.append(camera)
        if kind is not None:
            where.append("type = ?")
            args.append(kind.value)
        if until is not None:
            where.append("opened_at <= ?")
            args.append(until)
        if since is not None:
            where.append("(closed_at IS NULL OR closed_at >= ?)")
            args.append(since)
        if open_only:
            where.append("closed_at IS NULL")
        sql = f"SELECT {_ALARM_COLUMNS} FROM alarms"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at LIMIT ?"
        rows = self.db.execute(sql, (*args, limit)).fetchall()
        return [
            Alarm(row[0], row[1], AlarmType(row[2]), Severity(row[3]), row[4], row[5], json.loads(row[6]))
            for row in rows
        ]

    def _runs(self, since: float, until: float) -> list[Run]:
        rows = self.db.execute(
            "SELECT id, started_at, last_seen, stopped_at FROM runs WHERE started_at <= ?"
            " AND COALESCE(stopped_at, last_seen) >= ? ORDER BY started_at",
            (until, since),
        ).fetchall()
        runs = [Run(*row) for row in rows]
        # The current run is alive now, whatever its last heartbeat says.
        return [replace(r, last_seen=time.time()) if r.id == self.run_id and r.stopped_at is None else r for r in runs]


def _connect(target: str, durable: bool = False) -> sqlite3.Connection:
    return connect(Path(target) if durable else target, _SCHEMA, durable=durable)


def _summary(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in details.items()) or "-"
