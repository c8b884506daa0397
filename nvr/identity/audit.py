"""The audit trail: append-only, hash-chained entries in the auth database.

Each entry stores the previous entry's hash and its own hash, SHA-256 over
its canonical fields (id, time, actor, role, action, camera, outcome,
address, details, previous hash).  Editing, deleting or inserting a row
breaks the chain, and :func:`verify` names the first entry where it breaks.
Triggers refuse UPDATE and DELETE on the table, so only someone who drops
them on purpose can change history; deleting the newest rows is caught by
SQLite's AUTOINCREMENT counter, and the daemon logs the chain head at start
and stop so that it can be compared with a copy kept elsewhere (the journal).

:meth:`AuditLog.record` never blocks: it queues the entry for the database
thread and returns; it may be called from any thread (retention calls it
from the index thread).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvr.base import secrets
from nvr.base.timeutil import iso
from nvr.identity.authdb import AuthDatabase

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_FIELDS = "id, at, actor, role, action, camera, outcome, address, details, prev_hash, hash"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    role: str | None
    action: str
    camera: str | None
    outcome: str
    address: str | None
    details: str  # canonical JSON
    prev_hash: str
    hash: str

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id, "at": self.at, "actor": self.actor, "role": self.role, "action": self.action,
            "camera": self.camera, "outcome": self.outcome, "address": self.address,
            "details": json.loads(self.details), "prev_hash": self.prev_hash, "hash": self.hash,
        }

    @property
    def intact(self) -> bool:
        """Whether the entry's own hash still matches its fields (the chain is :func:`verify`'s)."""
        return entry_hash(self.id, self.at, self.actor, self.role, self.action, self.camera, self.outcome,
                          self.address, self.details, self.prev_hash) == self.hash


def canonical(details: dict[str, Any]) -> str:
    # Secrets never enter the log, even if a caller passes a camera URL.
    return secrets.redact(json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str))


def entry_hash(entry_id: int, at: str, actor: str, role: str | None, action: str, camera: str | None,
               outcome: str, address: str | None, details: str, prev_hash: str) -> str:
    fields = [entry_id, at, actor, role, action, camera, outcome, address, details, prev_hash]
    return hashlib.sha256(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def append(db: sqlite3.Connection, at: str, actor: str, role: str | None, action: str, camera: str | None,
           outcome: str, address: str | None, details: str) -> int:
    """Append one entry in its own transaction (database thread, or the CLI)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        last = db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        entry_id = max(last[0] if last else 0, seq[0] if seq else 0) + 1
        prev = last[1] if last else GENESIS
        digest = entry_hash(entry_id, at, actor, role, action, camera, outcome, address, details, prev)
        db.execute(
            f"INSERT INTO audit ({_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (entry_id, at, actor, role, action, camera, outcome, address, details, prev, digest),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return entry_id


@dataclass(slots=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None  # exact, or a prefix before a dot: "live" matches "live.start"
    since: float | None = None
    until: float | None = None
    limit: int = 1000
    cameras: frozenset[str] | None = field(default=None)  # allow-list of the reader


class AuditLog:
    def __init__(self, db: AuthDatabase) -> None:
        self.db = db
        self.failures = 0

    def record(self, action: str, *, actor: str, role: str | None = None, camera: str | None = None,
               outcome: str = "ok", address: str | None = None, **details: Any) -> Future[int]:
        """Queue one entry; returns at once."""
        at = iso(time.time()) or ""
        text = canonical(details)
        future = self.db.submit(self._append, at, actor, role, action, camera, outcome, address, text)
        future.add_done_callback(self._check)
        return future

    def _append(self, *args: Any) -> int:
        return append(self.db.db, *args)

    def _check(self, future: Future[int]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.failures += 1
            log.error("audit entry could not be written: %s", exc, exc_info=exc)

    def query(self, q: AuditQuery) -> list[AuditEntry]:
        """Matching entries, oldest first (database thread)."""
        where: list[str] = ["1 = 1"]
        args: list[object] = []
        if q.actor:
            where.append("actor = ?")
            args.append(q.actor)
        if q.action:
            where.append("(action = ? OR action LIKE ?)")
            args += [q.action, q.action.replace("%", "").replace("_", "") + ".%"]
        if q.since is not None:
            where.append("at >= ?")
            args.append(iso(q.since))
        if q.until is not None:
            where.append("at <= ?")
            args.append(iso(q.until))
        if q.cameras is not None:
            marks = ", ".join("?" for _ in q.cameras)
            where.append(f"(camera IS NULL OR camera IN ({marks}))")
            args += sorted(q.cameras)
        rows = self.db.db.execute(
            f"SELECT {_FIELDS} FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", (*args, q.limit)
        ).fetchall()
        return [AuditEntry(*row) for row in reversed(rows)]

    def naming_case(self, case_id: int, limit: int) -> list[AuditEntry]:
        """The entries whose details name ``case_id`` (a case's custody history), oldest first (database thread)."""
        rows = self.db.db.execute(
            f"SELECT {_FIELDS} FROM audit WHERE json_extract(details, '$.case_id') = ? ORDER BY id LIMIT ?",
            (case_id, limit),
        ).fetchall()
        return [AuditEntry(*row) for row in rows]

    def head(self) -> tuple[int, str]:
        """(id, hash) of the newest entry (database thread)."""
        row = self.db.db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def last_details(self, action: str) -> dict[str, Any] | None:
        row = self.db.db.execute(
            "SELECT details FROM audit WHERE action = ? ORDER BY id DESC LIMIT 1", (action,)
        ).fetchone()
        return json.loads(row[0]) if row else None


@dataclass(slots=True)
class VerifyReport:
    entries: int = 0
    head: str = GENESIS
    failures: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify(path: Path) -> VerifyReport:
    """Walk the whole chain of the audit log in ``path``; every break names its entry id."""
    report = VerifyReport()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        prev_hash, expected_id = GENESIS, 1
        for row in db.execute(f"SELECT {_FIELDS} FROM audit ORDER BY id"):
            entry = AuditEntry(*row)
            if entry.id != expected_id:
                missing = f"{expected_id}" if entry.id == expected_id + 1 else f"{expected_id}..{entry.id - 1}"
                report.failures.append((expected_id, f"entry {missing} deleted (ids jump to {entry.id})"))
            if entry.prev_hash != prev_hash:
                report.failures.append((entry.id, f"entry {entry.id}: previous-hash link broken "
                                        "(an entry before it was edited, deleted or inserted)"))
            if not entry.intact:
                report.failures.append((entry.id, f"entry {entry.id}: content does not match its hash (edited)"))
            prev_hash, expected_id = entry.hash, entry.id + 1
            report.entries += 1
        report.head = prev_hash
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
        if seq is not None and seq[0] >= expected_id:
            report.failures.append((expected_id, f"entries {expected_id}..{seq[0]} at the end were deleted"))
    finally:
        db.close()
    return report
