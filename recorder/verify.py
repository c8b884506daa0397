"""Verification, offline: of an evidence package (``nvr verify``) and of the storage (``nvr verify-storage``).

A package is treated as hostile.  Before anything is trusted or read whole:
the zip's entry count is read from its end record and bounded; every entry
name is checked (no duplicates, no NUL, no ``..``, no absolute or backslash
paths); ``manifest.json`` is bounded in size and compression ratio and read
with a bounded reader; the manifest must match its schema exactly.  The
signature is checked against a **trust anchor** given by the caller
(``--pubkey``, ``--fingerprint`` or ``--keyring``, see :mod:`recorder.trust`);
the key inside the package proves only that the package is internally
consistent, and the verdict says so (exit 3, not 0).  File contents are
hashed only once the manifest is known to be authentic, each read bounded by
the size the manifest declares; every segment file's hash must equal the
SHA-256 the station recorded when it wrote the segment.

Verdicts: 0 OK (authentic and intact), 1 FAILED, 3 intact but the signer not
authenticated.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recorder.checkpoint import Witnessed, check_segments
from recorder.export import FORMAT, MANIFEST, MAX_MANIFEST_BYTES, PUBLIC_KEY, SIGNATURE, VERIFY_NOTE
from recorder.index import GENESIS, NewSegment, SegmentIndex, SegmentRecord, chain_hash, encode_meta, record_fields
from recorder.keys import fingerprint, fingerprint_matches, load_public
from recorder.storage import RECORDINGS, sha256_file
from recorder.trust import TrustAnchor, TrustedKey

MAX_ENTRIES = 100_000
MAX_NAME_BYTES = 512
MAX_COMPRESSION_RATIO = 100  # JSON deflates 5-20×; beyond this it is a bomb
_MAX_SMALL = 64 << 10  # signature and public key
_CHUNK = 1 << 20
_REPORTED_SCHEMA_ERRORS = 10


class Verdict(IntEnum):
    OK = 0
    FAILED = 1
    UNAUTHENTICATED = 3  # contents intact, signer not authenticated (no trust anchor given)


@dataclass(slots=True)
class Report:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    authenticated: bool = False
    signer: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> Verdict:
        if self.failures:
            return Verdict.FAILED
        return Verdict.OK if self.authenticated else Verdict.UNAUTHENTICATED

    def fail(self, message: str, first: bool = False) -> None:
        if first:
            self.failures.insert(0, message)
        else:
            self.failures.append(message)


# -- the manifest's schema (exactly what recorder/export.py writes) -----------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Range(_Strict):
    start: str | None
    end: str | None


class _Gap(_Strict):
    start: str | None
    end: str | None
    cause: str | None
    reason: str | None = None


class _Segment(_Strict):
    file: str
    index_id: int
    start: str
    end: str
    start_epoch: float
    end_epoch: float
    frames: int
    bytes: int
    sha256: str
    codec: str
    width: int
    height: int
    params: str
    status: str
    stored_path: str
    prev_chain: str
    chain_hash: str
    # "archive": fetched back from the off-site archive (recorder/archive_read.py); older packages say nothing.
    stored_copy: str = Field(default="local", alias="copy")
    # Provenance beyond the media fields (recorder/index.py NewSegment.meta); chained when present.
    meta: dict[str, Any] = Field(default_factory=dict)


class _ChainLink(_Strict):
    """A row of the camera's chain between two shipped segments that is not shipped (outside the range)."""

    index_id: int
    start_epoch: float
    end_epoch: float
    prev_chain: str
    chain_hash: str


class _Camera(_Strict):
    id: str
    name: str | None = None
    zone: str | None = None
    kind: str | None = None  # "bodycam": a body camera's uploaded files (issue 15)
    requested: _Range | None = None  # an incident case's package: this entry's own range (issue 15)
    actual: _Range | None
    recorded_seconds: float
    spans: list[_Range]
    gaps: list[_Gap]
    segments: list[_Segment]
    # Rows inserted between shipped ones (footage backfilled from a camera's card later, issue 17).
    chain_links: list[_ChainLink] = Field(default_factory=list)


class _File(_Strict):
    path: str
    sha256: str
    bytes: int


class _Station(_Strict):
    id: str
    name: str
    timezone: str | None = None  # the zone SUMMARY.txt shows times in (older packages: none)


class _Software(_Strict):
    name: str
    version: str


class Manifest(_Strict):
    format: str
    station: _Station
    software: _Software
    exported_at: str
    exported_by: str
    reason: str
    requested: _Range
    key_fingerprint: str
    checkpoint: dict[str, object] | None = None
    case: dict[str, object] | None = None  # the incident case a package was made of (recorder/cases.py)
    cameras: list[_Camera]
    files: list[_File]


# -- the package ------------------------------------------------------------------------------


def zip_entry_count(path: Path) -> int:
    """The entry count from the zip's end-of-central-directory record (zip64 aware), before zipfile
    builds an object per entry; raises ValueError if there is no such record."""
    size = path.stat().st_size
    tail_len = min(size, 22 + 0xFFFF + 20)
    with path.open("rb") as f:
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise ValueError("no end-of-central-directory record (not a zip file, or truncated)")
        (total,) = struct.unpack("<H", tail[at + 10 : at + 12])
        if total != 0xFFFF:
            return int(total)
        locator = at - 20
        if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
            raise ValueError("zip64 end record announced but missing")
        (offset,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
        if offset > size - 56:
            raise ValueError("zip64 end record points outside the file")
        f.seek(offset)
        record = f.read(56)
        if record[:4] != b"PK\x06\x06":
            raise ValueError("zip64 end record damaged")
        (total64,) = struct.unpack("<Q", record[32:40])
        return int(total64)


def bad_name(name: str) -> str | None:
    """Why an entry name is unsafe or ambiguous, or None."""
    if not name:
        return "empty name"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return "name too long"
    if "\x00" in name:
        return "NUL in the name"
    if "\\" in name:
        return "backslash in the name (a Windows path)"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = PurePosixPath(name).parts
    if any(part in ("..", ".") for part in name.split("/")):
        return "'.' or '..' in the path"
    if not parts:
        return "empty path"
    if any(ord(ch) < 0x20 for ch in name):
        return "control character in the name"
    return None


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Read one entry, never more than ``limit`` bytes whatever its header says."""
    if info.file_size > limit:
        raise ValueError(f"declares {info.file_size} bytes, more than the {limit} allowed")
    out = bytearray()
    with archive.open(info) as f:
        while chunk := f.read(min(_CHUNK, limit + 1 - len(out))):
            out += chunk
            if len(out) > limit:
                raise ValueError(f"holds more than the {limit} bytes allowed")
    return bytes(out)


def _hash_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, expected_bytes: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with archive.open(info) as f:
        while chunk := f.read(min(_CHUNK, expected_bytes + 1 - size)):
            digest.update(chunk)
            size += len(chunk)
            if size > expected_bytes:
                break
    return digest.hexdigest(), size


def verify_package(path: Path, anchor: TrustAnchor | None = None) -> Report:
    report = Report()
    try:
        count = zip_entry_count(path)
    except (OSError, ValueError) as exc:
        report.fail(f"{path.name}: not a readable zip package ({exc})")
        return report
    if count > MAX_ENTRIES:
        report.fail(f"{path.name}: {count} entries, more than the {MAX_ENTRIES} a package may have")
        return report
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError) as exc:
        report.fail(f"{path.name}: not a readable zip package ({exc})")
        return report
    with archive:
        try:
            _verify_archive(archive, anchor, report)
        except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError, EOFError) as exc:
            # A damaged entry (bad CRC, truncated data, unsupported method) mid-way.
            report.fail(f"{path.name}: damaged zip ({type(exc).__name__}: {exc})")
    return report


def _verify_archive(archive: zipfile.ZipFile, anchor: TrustAnchor | None, report: Report) -> None:
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename
        problem = bad_name(name)
        if problem is not None:
            report.fail(f"entry {name[:200]!r}: {problem}")
        if name in entries:
            report.fail(f"{name}: two entries with this name (a reader may show either copy)")
        if info.flag_bits & 0x1:
            report.fail(f"{name}: encrypted entry")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            report.fail(f"{name}: unsupported compression method {info.compress_type}")
        entries.setdefault(name, info)
    for required in (MANIFEST, SIGNATURE):
        if required not in entries:
            report.fail(f"{required}: missing from the package")
    if not report.ok:
        return  # an ambiguous or unsafe package: nothing in it can be relied on

    manifest_info = entries[MANIFEST]
    if manifest_info.compress_size and manifest_info.file_size > MAX_COMPRESSION_RATIO * manifest_info.compress_size:
        report.fail(f"{MANIFEST}: compressed {manifest_info.file_size // max(manifest_info.compress_size, 1)}:1, "
                    "more than any real manifest (a decompression bomb)")
        return
    try:
        manifest_bytes = _read_bounded(archive, manifest_info, MAX_MANIFEST_BYTES)
        signature = _read_bounded(archive, entries[SIGNATURE], _MAX_SMALL)
        embedded_pem = _read_bounded(archive, entries[PUBLIC_KEY], _MAX_SMALL) if PUBLIC_KEY in entries else None
    except ValueError as exc:
        report.fail(f"{MANIFEST} or its signature: {exc}")
        return

    embedded: Ed25519PublicKey | None = None
    if embedded_pem is not None:
        try:
            embedded = load_public(embedded_pem)
        except ValueError as exc:
            report.fail(f"{PUBLIC_KEY}: not an Ed25519 public key ({exc})")
    signed_ok, signer_key, trusted = _check_signature(manifest_bytes, signature, embedded, anchor, report)

    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        for error in exc.errors()[:_REPORTED_SCHEMA_ERRORS]:
            where = ".".join(str(part) for part in error["loc"]) or "(top)"
            report.fail(f"{MANIFEST}: {where}: {error['msg']} (not the manifest schema)")
        return
    if manifest.format != FORMAT:
        report.fail(f"{MANIFEST}: unknown format {manifest.format[:40]!r}")
        return
    if signer_key is not None and not fingerprint_matches(manifest.key_fingerprint, signer_key):
        report.fail(f"{MANIFEST}: key_fingerprint {manifest.key_fingerprint[:90]} is not the key that signed it "
                    f"({fingerprint(signer_key)})")
    if trusted is not None and trusted.station is not None and trusted.station != manifest.station.id:
        report.fail(f"{MANIFEST}: made by station {manifest.station.id!r}, but signed with the key the keyring "
                    f"holds for station {trusted.station!r}")
    if signed_ok and trusted is not None and report.ok:
        report.authenticated = True
        report.signer = trusted.label

    _check_files(archive, manifest, entries, report, hash_contents=signed_ok)
    for camera in manifest.cameras:
        _check_chain(camera, report)


def _check_signature(manifest_bytes: bytes, signature: bytes, embedded: Ed25519PublicKey | None,
                     anchor: TrustAnchor | None, report: Report
                     ) -> tuple[bool, Ed25519PublicKey | None, TrustedKey | None]:
    """(signature verifies, the key it verified with, the trusted anchor entry that key matches)."""

    def verifies(key: Ed25519PublicKey) -> bool:
        try:
            key.verify(signature, manifest_bytes)
            return True
        except InvalidSignature:
            return False

    if anchor is not None and anchor.public_keys:
        for trusted in anchor.public_keys:
            assert trusted.public is not None
            if verifies(trusted.public):
                report.notes.append(f"signed by {trusted.label}")
                return True, trusted.public, trusted
        message = f"{MANIFEST}: signature does not verify with the trusted key ({anchor.describe()})"
        if embedded is not None and verifies(embedded):
            message += (f"; it verifies with the key inside the package, {fingerprint(embedded)}, which is not "
                        "trusted: the package was re-signed by someone else")
        else:
            message += ": the manifest was edited, or signed by another key"
        report.fail(message, first=True)
        return False, None, None
    if embedded is None:
        report.fail(f"{PUBLIC_KEY}: missing, and no --pubkey or --keyring given to verify with", first=True)
        return False, None, None
    if not verifies(embedded):
        report.fail(f"{MANIFEST}: signature does not verify with the key inside the package "
                    f"({fingerprint(embedded)}): the manifest was edited", first=True)
        return False, None, None
    if anchor is not None:  # fingerprints only
        for trusted in anchor.keys:
            if trusted.matches(embedded):
                report.notes.append(f"signed by the key inside the package, {fingerprint(embedded)}, which has "
                                    f"the trusted fingerprint ({trusted.label})")
                return True, embedded, trusted
        report.fail(f"{PUBLIC_KEY}: the package was signed by {fingerprint(embedded)}, not by the trusted key "
                    f"({anchor.describe()})", first=True)
        return True, embedded, None
    report.notes.append(f"the contents match the signature of the key inside the package, {fingerprint(embedded)}; "
                        "the signer is NOT authenticated: pass the station's key (--pubkey, --fingerprint or "
                        "--keyring) obtained from the station, not from this package")
    return True, embedded, None


def _check_files(archive: zipfile.ZipFile, manifest: Manifest, entries: dict[str, zipfile.ZipInfo],
                 report: Report, hash_contents: bool) -> None:
    segment_of: dict[str, tuple[str, _Segment]] = {}
    for camera in manifest.cameras:
        for seg in camera.segments:
            segment_of[seg.file] = (camera.id, seg)
    listed: dict[str, _File] = {}
    for entry in manifest.files:
        if entry.path in listed:
            report.fail(f"{entry.path}: listed twice in the manifest")
        listed[entry.path] = entry
    for name, (camera_id, seg) in segment_of.items():
        file = listed.get(name)
        where = f"{name} (camera {camera_id} segment {seg.start}..{seg.end})"
        if file is None:
            report.fail(f"{where}: a segment of the manifest without a file entry")
        elif file.sha256 != seg.sha256 or file.bytes != seg.bytes:
            report.fail(f"{where}: the file shipped is not the one the station recorded (its SHA-256 differs from "
                        "the one indexed when the segment was written)")
    if not hash_contents:
        report.notes.append("file contents were not hashed: the manifest is not authentic, so its hashes prove nothing")
    for name, entry in listed.items():
        where = name
        if name in segment_of:
            camera_id, seg = segment_of[name]
            where = f"{name} (camera {camera_id} segment {seg.start}..{seg.end})"
        info = entries.get(name)
        if info is None:
            report.fail(f"{where}: listed in the manifest but missing from the package")
            continue
        if info.file_size != entry.bytes:
            report.fail(f"{where}: {info.file_size} bytes in the zip, the manifest says {entry.bytes}")
            continue
        if not hash_contents:
            continue
        digest, size = _hash_entry(archive, info, entry.bytes)
        if size != entry.bytes:
            report.fail(f"{where}: holds {'more' if size > entry.bytes else 'fewer'} bytes than the manifest says")
        elif digest != entry.sha256:
            report.fail(f"{where}: SHA-256 mismatch: the file was modified")
    for name in sorted(set(entries) - set(listed) - {MANIFEST, SIGNATURE, PUBLIC_KEY}):
        if not name.endswith("/"):
            report.fail(f"{name}: not listed in the manifest (inserted)")
    if VERIFY_NOTE not in listed:
        report.notes.append(f"{VERIFY_NOTE} is not part of the signed contents")


def _check_chain(camera: _Camera, report: Report) -> None:
    """Each shipped segment follows the one shipped before it in the camera's chain (insertion order),
    directly or through rows that lie wholly outside the shipped range (``chain_links``)."""
    previous: _Segment | None = None
    links = {link.chain_hash: link for link in camera.chain_links}
    hull = (min((s.start_epoch for s in camera.segments), default=0.0),
            max((s.end_epoch for s in camera.segments), default=0.0))
    for seg in sorted(camera.segments, key=lambda s: s.index_id):
        where = f"camera {camera.id} segment {seg.start}"
        try:
            meta = encode_meta(seg.meta)
        except ValueError:
            report.fail(f"{where}: its meta is not valid JSON (NaN or infinity)")
            continue
        fields = NewSegment(
            camera=camera.id, start=seg.start_epoch, end=seg.end_epoch, frames=seg.frames, bytes=seg.bytes,
            sha256=seg.sha256, codec=seg.codec, width=seg.width, height=seg.height, params=seg.params,
            path=seg.stored_path, status=seg.status, meta=meta,
        )
        if chain_hash(seg.prev_chain, fields) != seg.chain_hash:
            report.fail(f"{where}: chain hash does not match the segment's fields (edited)")
        if previous is not None and _through_links(seg, previous, links, hull) != previous.chain_hash:
            report.fail(f"{where}: does not follow segment {previous.start} in the station's chain "
                        "(a segment was removed or inserted)")
        previous = seg


def _through_links(seg: _Segment, previous: _Segment, links: dict[str, _ChainLink],
                   hull: tuple[float, float]) -> str:
    """The link ``seg`` follows once the rows between it and ``previous`` that are not shipped are walked;
    a row inside the shipped range is not skipped (it should have been shipped: it was removed)."""
    link_hash = seg.prev_chain
    for _ in range(len(links)):
        link = links.get(link_hash)
        if link is None or not previous.index_id < link.index_id < seg.index_id:
            break
        if link.end_epoch > hull[0] + 1e-6 and link.start_epoch < hull[1] - 1e-6:
            break
        link_hash = link.prev_chain
    return link_hash


# -- the storage ------------------------------------------------------------------------------


def verify_storage(root: Path, index: SegmentIndex, camera: str | None = None,
                   witnessed: Witnessed | None = None) -> Report:
    """Re-hash every segment file and walk every camera's chain in the index; with ``witnessed``
    (checkpoints the central console collected) also catch a truncated or rewritten tail."""
    report = Report()
    records = index.all_segments(camera)
    deletions = index.deletions(camera)
    deleted_links = {d["chain_hash"] for d in deletions}
    by_camera: dict[str, list[SegmentRecord]] = {}
    for record in records:
        by_camera.setdefault(record.camera, []).append(record)
    checked = 0
    for cam, rows in sorted(by_camera.items()):
        previous: SegmentRecord | None = None
        for row in rows:
            where = f"camera {cam} segment {row.path}"
            if chain_hash(row.prev_chain, record_fields(row)) != row.chain_hash:
                report.fail(f"{where}: index row edited (chain hash does not match its fields)")
            if previous is None:
                if row.prev_chain != GENESIS and row.prev_chain not in deleted_links:
                    report.fail(f"{where}: chain does not start at the beginning or after a recorded deletion")
            elif row.prev_chain != previous.chain_hash:
                report.fail(f"{where}: chain broken before this row (a row was removed or inserted)")
            previous = row
            path = root / row.path
            if not path.is_file():
                report.fail(f"{where}: file missing")
                continue
            if sha256_file(path)[0] != row.sha256:
                report.fail(f"{where}: file modified (SHA-256 mismatch)")
            checked += 1
    if witnessed is not None:
        report.failures.extend(witnessed.failures)
        report.notes.extend(witnessed.notes)
        rows_by_link = {r.chain_hash: (r.camera, r.id) for r in records}
        failures, notes = check_segments(witnessed, rows_by_link,
                                         {d["chain_hash"]: d["reason"] for d in deletions}, camera)
        report.failures.extend(failures)
        report.notes.extend(notes)
    known = {r.path for r in records}
    base = root / RECORDINGS
    if base.is_dir():
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                # .mkv: a body camera's Matroska file as it was uploaded (issue 15)
                if name.endswith((".mp4", ".mkv")) and rel not in known and (
                        camera is None or f"/{camera}/" in f"/{rel}"):
                    report.fail(f"{rel}: file not in the index (inserted)")
    report.notes.append(f"{checked} segment file(s) re-hashed, {len(by_camera)} chain(s) walked")
    return report
