"""Incident cases: the footage of one incident, across cameras and body cameras, held and exported together.

A case has a number (the station's incident or complaint number, unique), a
title and a description; it collects

- **items**: a range of one camera or body camera.  Adding one places an
  evidence hold on that range in the same transaction (``holds`` in
  :mod:`recorder.index`), so the footage outlives retention while the case
  is open;
- **bookmarks**: a moment of a camera with a note;
- **exports**: the packages made of it (:mod:`recorder.export` with the case's
  ranges and the case itself in the manifest).

Closing is explicit and releases the case's holds only when asked.  The
tables live in the index database and every method runs on the index's
thread; the custody history is the audit log's (the web layer records every
action with the case id).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from nvr.base.timeutil import iso
from recorder.index import SegmentIndex

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY,
    number TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    closed_at REAL,
    closed_by TEXT,
    close_reason TEXT
);
CREATE TABLE IF NOT EXISTS case_items (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    camera TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    hold_id INTEGER,
    added_by TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS case_items_case ON case_items(case_id);
CREATE TABLE IF NOT EXISTS case_bookmarks (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    camera TEXT NOT NULL,
    at REAL NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS case_bookmarks_camera ON case_bookmarks(camera, at);
CREATE TABLE IF NOT EXISTS case_exports (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    export_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

MAX_ITEMS = 1000  # per case: one package lists them all
MAX_BOOKMARKS = 5000


class CaseError(Exception):
    """A case action that cannot be done; ``code`` is the API's error code, ``status`` its HTTP status."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class CaseItem:
    id: int
    case_id: int
    camera: str
    start: float
    end: float
    note: str
    hold_id: int | None
    added_by: str
    added_at: float
    hold_active: bool = False  # its hold is still in force (SQLite answers 0 or 1)

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "camera": self.camera, "start": iso(self.start), "end": iso(self.end),
                "note": self.note, "hold_id": self.hold_id, "hold_active": bool(self.hold_active),
                "added_by": self.added_by, "added_at": iso(self.added_at)}


@dataclass(frozen=True, slots=True)
class Bookmark:
    id: int
    case_id: int
    camera: str
    at: float
    note: str
    created_by: str
    created_at: float

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "case_id": self.case_id, "camera": self.camera, "at": iso(self.at), "note": self.note,
                "created_by": self.created_by, "created_at": iso(self.created_at)}


@dataclass(frozen=True, slots=True)
class CaseExport:
    export_id: str
    reason: str
    created_by: str
    created_at: float

    def json(self) -> dict[str, Any]:
        return {"export_id": self.export_id, "reason": self.reason, "created_by": self.created_by,
                "created_at": iso(self.created_at)}


@dataclass(frozen=True, slots=True)
class Case:
    id: int
    number: str
    title: str
    description: str
    created_by: str
    created_at: float
    closed_at: float | None
    closed_by: str | None
    close_reason: str | None
    items: list[CaseItem] = field(default_factory=list)
    bookmarks: list[Bookmark] = field(default_factory=list)
    exports: list[CaseExport] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def cameras(self) -> list[str]:
        return sorted({i.camera for i in self.items} | {b.camera for b in self.bookmarks})

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "number": self.number, "title": self.title, "description": self.description,
                "state": "open" if self.open else "closed", "created_by": self.created_by,
                "created_at": iso(self.created_at), "closed_at": iso(self.closed_at), "closed_by": self.closed_by,
                "close_reason": self.close_reason}


_CASE = "id, number, title, description, created_by, created_at, closed_at, closed_by, close_reason"
_ITEM = "i.id, i.case_id, i.camera, i.start, i.end, i.note, i.hold_id, i.added_by, i.added_at"
_BOOKMARK = "id, case_id, camera, at, note, created_by, created_at"


class CaseStore:
    """Cases in the index database (``index`` is the daemon's or a command's connection)."""

    def __init__(self, index: SegmentIndex) -> None:
        self.index = index

    def ensure_schema(self) -> None:
        self.index.db.executescript(_SCHEMA)

    def create(self, number: str, title: str, description: str, by: str) -> Case:
        with self.index.transaction() as db:
            if db.execute("SELECT 1 FROM cases WHERE number = ?", (number,)).fetchone():
                raise CaseError("case_exists", f"a case numbered {number!r} already exists")
            cursor = db.execute("INSERT INTO cases (number, title, description, created_by, created_at)"
                                " VALUES (?,?,?,?,?)", (number, title, description, by, time.time()))
        assert cursor.lastrowid is not None
        case = self.case(cursor.lastrowid)
        assert case is not None
        return case

    def cases(self) -> list[Case]:
        rows = self.index.db.execute(f"SELECT {_CASE} FROM cases ORDER BY id DESC").fetchall()
        return [self._load(Case(*row)) for row in rows]

    def case(self, case_id: int) -> Case | None:
        row = self.index.db.execute(f"SELECT {_CASE} FROM cases WHERE id = ?", (case_id,)).fetchone()
        return self._load(Case(*row)) if row else None

    def _load(self, case: Case) -> Case:
        db = self.index.db
        items = [CaseItem(*row) for row in db.execute(
            f"SELECT {_ITEM}, (h.id IS NOT NULL AND h.released_at IS NULL) FROM case_items i"
            " LEFT JOIN holds h ON h.id = i.hold_id WHERE i.case_id = ? ORDER BY i.start, i.id", (case.id,))]
        bookmarks = [Bookmark(*row) for row in db.execute(
            f"SELECT {_BOOKMARK} FROM case_bookmarks WHERE case_id = ? ORDER BY at, id", (case.id,))]
        exports = [CaseExport(*row) for row in db.execute(
            "SELECT export_id, reason, created_by, created_at FROM case_exports WHERE case_id = ? ORDER BY id",
            (case.id,))]
        return replace(case, items=items, bookmarks=bookmarks, exports=exports)

    def _open_case(self, case_id: int) -> tuple[str, str]:
        row = self.index.db.execute("SELECT number, title, closed_at FROM cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            raise CaseError("unknown_case", f"no case {case_id}", 404)
        if row[2] is not None:
            raise CaseError("case_closed", f"case {row[0]} is closed")
        return row[0], row[1]

    def add_item(self, case_id: int, camera: str, start: float, end: float, note: str, by: str) -> CaseItem:
        """The range and its hold, in one transaction: an item is never without its hold."""
        with self.index.transaction() as db:
            number, title = self._open_case(case_id)
            count = db.execute("SELECT COUNT(*) FROM case_items WHERE case_id = ?", (case_id,)).fetchone()[0]
            if count >= MAX_ITEMS:
                raise CaseError("case_full", f"a case holds at most {MAX_ITEMS} ranges")
            now = time.time()
            hold = db.execute("INSERT INTO holds (camera, start, end, reason, created_by, created_at)"
                              " VALUES (?,?,?,?,?,?)",
                              (camera, start, end, f"case {number}: {note or title}", by, now)).lastrowid
            cursor = db.execute("INSERT INTO case_items (case_id, camera, start, end, note, hold_id, added_by,"
                                " added_at) VALUES (?,?,?,?,?,?,?,?)",
                                (case_id, camera, start, end, note, hold, by, now))
        assert cursor.lastrowid is not None
        return CaseItem(cursor.lastrowid, case_id, camera, start, end, note, hold, by, now, hold_active=True)

    def add_bookmark(self, case_id: int, camera: str, at: float, note: str, by: str) -> Bookmark:
        with self.index.transaction() as db:
            self._open_case(case_id)
            count = db.execute("SELECT COUNT(*) FROM case_bookmarks WHERE case_id = ?", (case_id,)).fetchone()[0]
            if count >= MAX_BOOKMARKS:
                raise CaseError("case_full", f"a case holds at most {MAX_BOOKMARKS} bookmarks")
            now = time.time()
            cursor = db.execute("INSERT INTO case_bookmarks (case_id, camera, at, note, created_by, created_at)"
                                " VALUES (?,?,?,?,?,?)", (case_id, camera, at, note, by, now))
        assert cursor.lastrowid is not None
        return Bookmark(cursor.lastrowid, case_id, camera, at, note, by, now)

    def bookmarks(self, camera: str, start: float, end: float, limit: int = 10_000) -> list[Bookmark]:
        rows = self.index.db.execute(
            f"SELECT {_BOOKMARK} FROM case_bookmarks WHERE camera = ? AND at >= ? AND at < ? ORDER BY at LIMIT ?",
            (camera, start, end, limit)).fetchall()
        return [Bookmark(*row) for row in rows]

    def record_export(self, case_id: int, export_id: str, reason: str, by: str) -> None:
        self.index.db.execute("INSERT INTO case_exports (case_id, export_id, reason, created_by, created_at)"
                              " VALUES (?,?,?,?,?)", (case_id, export_id, reason, by, time.time()))

    def close(self, case_id: int, by: str, reason: str, release_holds: bool) -> tuple[Case, list[int]]:
        """Close the case; with ``release_holds`` also release the holds its items placed (else they stay,
        released one by one through DELETE /api/holds/{id} when the footage may go)."""
        with self.index.transaction() as db:
            self._open_case(case_id)
            now = time.time()
            db.execute("UPDATE cases SET closed_at = ?, closed_by = ?, close_reason = ? WHERE id = ?",
                       (now, by, reason, case_id))
            released: list[int] = []
            if release_holds:
                released = [row[0] for row in db.execute(
                    "SELECT h.id FROM case_items i JOIN holds h ON h.id = i.hold_id"
                    " WHERE i.case_id = ? AND h.released_at IS NULL", (case_id,))]
                db.executemany("UPDATE holds SET released_at = ? WHERE id = ?", [(now, h) for h in released])
        case = self.case(case_id)
        assert case is not None
        return case, released


def export_ranges(case: Case) -> list[tuple[str, float, float]]:
    """(camera, start, end) of every item, for the case's package (recorder/export.py merges overlaps)."""
    return [(item.camera, item.start, item.end) for item in case.items]


def manifest_entry(case: Case) -> dict[str, Any]:
    """The case as its package's manifest lists it: the case and every item and bookmark."""
    return {**case.summary(), "items": [i.json() for i in case.items], "bookmarks": [b.json() for b in case.bookmarks]}
