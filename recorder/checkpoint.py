"""Signed checkpoints of the station's chain heads, and checking a chain against them.

A hash chain proves that nothing inside it changed, but nothing about its
tail: whoever can write the database (the daemon's own account) can delete
the newest rows and the chain still verifies.  So the station signs, every
``recordings.checkpoint_seconds``, at every export and at stop, a small
statement of its heads:

    {"format": "nvr-checkpoint/1", "station": ..., "seq": N, "at": ISO, "at_epoch": t,
     "reason": "periodic" | "start" | "export" | "stop", "key_fingerprint": ...,
     "audit": {"id": last entry id, "hash": its hash},
     "cameras": {camera: {"segment_id": row id, "chain_hash": ..., "end": ISO}}}

and the checkpoint leaves the machine: the central console collects it
(``GET /api/checkpoints``) and keeps it where the station cannot write, and
the daemon writes it to the journal.  Later, ``nvr audit verify`` and
``nvr verify-storage`` with ``--checkpoints FILE`` (what the console exports)
report every witnessed entry or segment that is missing or changed.

An envelope is ``{"body": "<canonical JSON text>", "signature": "<base64 Ed25519>"}``:
the exact signed bytes travel as they are, so no re-encoding can change them.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from nvr.base.timeutil import iso
from recorder.keys import StationKey, fingerprint, fingerprint_matches, load_public

FORMAT = "nvr-checkpoint/1"
FILE_FORMAT = "nvr-checkpoints/1"
MAX_FILE_BYTES = 256 << 20
MAX_BODY_BYTES = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuditHead(_Strict):
    id: int
    hash: str


class CameraHead(_Strict):
    segment_id: int
    chain_hash: str
    end: str


class CheckpointBody(_Strict):
    format: str
    station: str
    seq: int
    at: str
    at_epoch: float
    reason: str
    key_fingerprint: str
    audit: AuditHead | None
    cameras: dict[str, CameraHead]


class Envelope(_Strict):
    body: str
    signature: str


class CheckpointFile(_Strict):
    """What the console exports for one station (``GET /api/stations/{id}/checkpoints``)."""

    format: str
    station: str
    exported_by: str = ""
    exported_at: str | None = None
    public_key_pem: str | None = None  # the station key the console saw when it collected them
    checkpoints: list[Envelope]


class CheckpointError(Exception):
    pass


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sign(key: StationKey, body: dict[str, Any]) -> Envelope:
    text = canonical(body)
    return Envelope(body=text, signature=base64.b64encode(key.sign(text.encode())).decode())


def make_body(*, station: str, seq: int, now: float, reason: str, key: StationKey,
              audit_head: tuple[int, str] | None, heads: dict[str, tuple[int, str, float]]) -> dict[str, Any]:
    return {
        "format": FORMAT, "station": station, "seq": seq, "at": iso(now), "at_epoch": round(now, 3),
        "reason": reason, "key_fingerprint": key.fingerprint,
        "audit": {"id": audit_head[0], "hash": audit_head[1]} if audit_head is not None else None,
        "cameras": {cam: {"segment_id": sid, "chain_hash": link, "end": iso(end)}
                    for cam, (sid, link, end) in sorted(heads.items())},
    }


def open_envelope(envelope: Envelope, public: Ed25519PublicKey) -> CheckpointBody:
    """The checkpoint's content if its signature verifies with ``public``; CheckpointError otherwise."""
    if len(envelope.body) > MAX_BODY_BYTES:
        raise CheckpointError("larger than a checkpoint can be")
    try:
        signature = base64.b64decode(envelope.signature, validate=True)
        public.verify(signature, envelope.body.encode())
    except (ValueError, InvalidSignature):
        raise CheckpointError(f"signature does not verify with the station key {fingerprint(public)} "
                              "(forged or altered)") from None
    try:
        body = CheckpointBody.model_validate_json(envelope.body)
    except ValidationError as exc:
        raise CheckpointError(f"signed, but not a checkpoint ({_first_error(exc)})") from None
    if body.format != FORMAT:
        raise CheckpointError(f"unknown format {body.format[:40]!r}")
    if not fingerprint_matches(body.key_fingerprint, public):
        raise CheckpointError("names another key than the one that signed it")
    return body


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or '(top)'}: {first['msg']}"


@dataclass(slots=True)
class Witnessed:
    """Checkpoints read from a file, opened with the station key; what could not be opened is a failure."""

    station: str
    checkpoints: list[CheckpointBody] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_file(path: Path, station: str, station_key: Ed25519PublicKey | None) -> Witnessed:
    """Read what the console exported for ``station``.

    ``station_key`` is the key the station uses now (from its storage); the
    file's own key (the one the console saw) is used when there is none, and a
    difference between the two is itself reported: whoever swapped the
    station's key could otherwise sign checkpoints of their own.
    """
    out = Witnessed(station=station)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path.name}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CheckpointError(f"{path.name}: larger than {MAX_FILE_BYTES >> 20} MB")
    try:
        doc = CheckpointFile.model_validate_json(data)
    except ValidationError as exc:
        raise CheckpointError(f"{path.name}: not a checkpoints file ({_first_error(exc)})") from None
    if doc.format != FILE_FORMAT:
        raise CheckpointError(f"{path.name}: unknown format {doc.format[:40]!r} (expected {FILE_FORMAT})")
    if doc.station != station:
        raise CheckpointError(f"{path.name}: checkpoints of station {doc.station!r}, not of {station!r}")
    public = station_key
    if doc.public_key_pem is not None:
        try:
            witnessed_key = load_public(doc.public_key_pem.encode())
        except ValueError as exc:
            raise CheckpointError(f"{path.name}: public_key_pem is not an Ed25519 key ({exc})") from None
        if public is None:
            public = witnessed_key
        elif fingerprint(public) != fingerprint(witnessed_key):
            out.failures.append(f"the station's key is now {fingerprint(public)}, but the console collected these "
                                f"checkpoints under {fingerprint(witnessed_key)}: the station key was replaced")
            public = witnessed_key
    if public is None:
        raise CheckpointError(f"{path.name}: no station key to check the checkpoints with")
    for number, envelope in enumerate(doc.checkpoints):
        try:
            body = open_envelope(envelope, public)
        except CheckpointError as exc:
            out.failures.append(f"checkpoint {number + 1} of the file: {exc}")
            continue
        if body.station != station:
            out.failures.append(f"checkpoint {body.seq}: of station {body.station!r}")
            continue
        out.checkpoints.append(body)
    out.checkpoints.sort(key=lambda c: c.seq)
    out.notes.append(f"{len(out.checkpoints)} signed checkpoint(s) of station {station} checked, "
                     f"key {fingerprint(public)}")
    return out


def check_audit(db_path: Path, witnessed: Witnessed) -> list[str]:
    """Every audit entry a checkpoint witnessed must still be there, unchanged."""
    failures: list[str] = []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        seen: set[tuple[int, str]] = set()
        for cp in witnessed.checkpoints:
            if cp.audit is None or cp.audit.id == 0 or (cp.audit.id, cp.audit.hash) in seen:
                continue
            seen.add((cp.audit.id, cp.audit.hash))
            row = db.execute("SELECT hash FROM audit WHERE id = ?", (cp.audit.id,)).fetchone()
            if row is None:
                failures.append(f"entry {cp.audit.id}: witnessed by checkpoint {cp.seq} ({cp.at}) but missing: "
                                "the log's tail was deleted")
            elif row[0] != cp.audit.hash:
                failures.append(f"entry {cp.audit.id}: changed since checkpoint {cp.seq} ({cp.at}) witnessed it "
                                "(the log was rewritten)")
    finally:
        db.close()
    return failures


def check_segments(witnessed: Witnessed, rows: dict[str, tuple[str, int]], deleted: dict[str, str],
                   camera: str | None = None) -> tuple[list[str], list[str]]:
    """Every segment a checkpoint witnessed as a chain head must still be indexed, or recorded as deleted.

    ``rows``: chain hash → (camera, row id) of the index; ``deleted``: chain hash → the deletion's reason.
    Returns (failures, notes).
    """
    failures: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    for cp in witnessed.checkpoints:
        for cam, head in cp.cameras.items():
            if (camera is not None and cam != camera) or head.chain_hash in seen:
                continue
            seen.add(head.chain_hash)
            where = f"camera {cam} segment {head.segment_id} (ending {head.end})"
            found = rows.get(head.chain_hash)
            if found is not None:
                if found != (cam, head.segment_id):
                    failures.append(f"{where}: witnessed by checkpoint {cp.seq}, now row {found[1]} of camera "
                                    f"{found[0]} (renumbered)")
                continue
            if head.chain_hash in deleted:
                notes.append(f"{where}: witnessed by checkpoint {cp.seq}, later deleted ({deleted[head.chain_hash]})")
                continue
            failures.append(f"{where}: witnessed by checkpoint {cp.seq} ({cp.at}) but neither in the index nor "
                            "recorded as deleted: the chain's tail was removed or rewritten")
    return failures, notes
