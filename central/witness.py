"""The console as a witness: it keeps the stations' signed checkpoints and keys where no station can write.

A station's chain heads (audit log, every camera's segments) are worth
something only in a copy the station's own account cannot reach.  For every
station it follows, the console collects ``GET /api/checkpoints`` every
``follow.checkpoint_seconds`` (:meth:`central.station_link.StationLink`),
checks each checkpoint's signature against the station key it first saw
(trust on first use; a changed key is kept beside the old one and logged as a
WARNING), and stores both in ``<storage>/witness.sqlite3``.

Auditors fetch them for ``nvr audit verify --checkpoints`` and
``nvr verify-storage --checkpoints``:

- ``GET /api/stations/{station}/checkpoints``: one station's checkpoints
  (``nvr-checkpoints/1``), with the station key the console saw;
- ``GET /api/keyring``: every station key the console has seen
  (``nvr-keyring/1``), for ``nvr verify --keyring``.

All database work runs on the store's own thread (:class:`~nvr.base.sqlite_worker.SqliteWorker`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from nvr.base.sqlite_worker import SqliteWorker, connect
from nvr.base.timeutil import iso
from recorder.checkpoint import FILE_FORMAT, CheckpointError, Envelope, open_envelope
from recorder.keys import fingerprint, load_public
from recorder.trust import KeyringEntry, keyring_document
from web import params
from web.access import audit, visible
from web.http import api_error

log = logging.getLogger(__name__)

WITNESS_FILE = "witness.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS station_keys (
    station TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    public_key_pem TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (station, fingerprint)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    station TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (station, seq)
);
"""


class Witness(SqliteWorker):
    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__("witness", lambda: connect(path, _SCHEMA))

    # -- collecting (witness thread) ------------------------------------------------------

    def last_seq(self, station: str) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM checkpoints WHERE station = ?", (station,)).fetchone()
        return int(row[0] or 0)

    def record_key(self, station: str, pem: str, now: float) -> str | None:
        """Remember the station's key; returns the previous fingerprint if the key changed, else None."""
        public = load_public(pem.encode())
        fp = fingerprint(public)
        known = self.db.execute(
            "SELECT fingerprint FROM station_keys WHERE station = ? ORDER BY last_seen DESC", (station,)
        ).fetchall()
        if known and known[0][0] == fp:
            self.db.execute("UPDATE station_keys SET last_seen = ? WHERE station = ? AND fingerprint = ?",
                            (now, station, fp))
            return None
        self.db.execute(
            "INSERT INTO station_keys (station, fingerprint, public_key_pem, first_seen, last_seen) VALUES (?,?,?,?,?)"
            " ON CONFLICT (station, fingerprint) DO UPDATE SET last_seen = excluded.last_seen",
            (station, fp, pem, now, now),
        )
        return str(known[0][0]) if known else None

    def add_checkpoints(self, station: str, pem: str, rows: list[tuple[int, str, str]], now: float
                        ) -> tuple[int, list[str]]:
        """Store the checkpoints whose signature verifies with ``pem`` and that are of ``station``.
        Returns (stored, problems)."""
        public = load_public(pem.encode())
        fp = fingerprint(public)
        stored, problems = 0, []
        with self.transaction():
            for seq, body_text, signature in rows:
                try:
                    body = open_envelope(Envelope(body=body_text, signature=signature), public)
                except CheckpointError as exc:
                    problems.append(f"checkpoint {seq}: {exc}")
                    continue
                if body.station != station or body.seq != seq:
                    problems.append(f"checkpoint {seq}: claims station {body.station!r} seq {body.seq}")
                    continue
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO checkpoints (station, seq, at, body, signature, fingerprint, received_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (station, seq, body.at_epoch, body_text, signature, fp, now),
                )
                stored += cursor.rowcount
        return stored, problems

    # -- exporting (witness thread) -------------------------------------------------------

    def export(self, station: str, made_by: str, since: float | None = None) -> dict[str, Any]:
        rows = self.db.execute(
            "SELECT body, signature FROM checkpoints WHERE station = ? AND at >= ? ORDER BY seq",
            (station, since or 0.0),
        ).fetchall()
        key = self.db.execute(
            "SELECT public_key_pem FROM station_keys WHERE station = ? ORDER BY first_seen LIMIT 1", (station,)
        ).fetchone()
        return {
            "format": FILE_FORMAT, "station": station, "exported_by": made_by, "exported_at": iso(time.time()),
            "public_key_pem": key[0] if key else None,
            "checkpoints": [{"body": body, "signature": sig} for body, sig in rows],
        }

    def keyring(self, made_by: str, names: dict[str, str]) -> dict[str, Any]:
        """The keys of the stations in ``names`` (id → name)."""
        rows = [row for row in self.db.execute(
            "SELECT station, fingerprint, public_key_pem, first_seen, last_seen FROM station_keys"
            " ORDER BY station, first_seen"
        ).fetchall() if row[0] in names]
        entries = [KeyringEntry(station=station, name=names.get(station, ""), fingerprint=fp, public_key_pem=pem,
                                first_seen=iso(first), last_seen=iso(last))
                   for station, fp, pem, first, last in rows]
        return keyring_document(entries, made_by, iso(time.time()) or "")


# -- the console's routes ------------------------------------------------------------------

WITNESS = web.AppKey("witness", Witness)
_CONSOLE = web.AppKey("witness_console", dict)


def setup(app: web.Application, witness: Witness, console_id: str, stations: dict[str, str]) -> None:
    """Add the witness routes; ``stations`` maps each followed station id to its name."""
    app[WITNESS] = witness
    app[_CONSOLE] = {"id": console_id, "stations": stations}
    app.router.add_get("/api/stations/{station_id}/checkpoints", station_checkpoints)
    app.router.add_get("/api/keyring", keyring)


async def station_checkpoints(request: web.Request) -> web.Response:
    station = request.match_info["station_id"]
    console = request.app[_CONSOLE]
    # A restricted user gets the same answer for a station they may not see as for one that does not exist.
    if not visible(request, f"{station}/*") or station not in console["stations"]:
        raise api_error(web.HTTPNotFound, "unknown_station", f"no station {station[:64]!r} you may see")
    since = params.time(request.query.get("since"), "since", required=False)
    witness = request.app[WITNESS]
    doc = await witness.call(witness.export, station, console["id"], since)
    audit(request, "checkpoints.export", station=station, checkpoints=len(doc["checkpoints"]))
    return web.json_response(doc, headers={
        "Content-Disposition": f'attachment; filename="checkpoints_{station}.json"'})


async def keyring(request: web.Request) -> web.Response:
    console = request.app[_CONSOLE]
    witness = request.app[WITNESS]
    mine = {sid: name for sid, name in console["stations"].items() if visible(request, f"{sid}/*")}
    doc = await witness.call(witness.keyring, console["id"], mine)
    audit(request, "keyring.export", keys=len(doc["keys"]))
    return web.json_response(doc, headers={"Content-Disposition": 'attachment; filename="nvr-keyring.json"'})
