"""Verification, offline: of an evidence package (``nvr verify``) and of the storage (``nvr verify-storage``)."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from recorder.export import FORMAT, MANIFEST, PUBLIC_KEY, SIGNATURE
from recorder.index import GENESIS, NewSegment, SegmentIndex, chain_hash, record_fields
from recorder.keys import fingerprint, load_public
from recorder.storage import RECORDINGS


@dataclass(slots=True)
class Report:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> None:
        self.failures.append(message)


def verify_package(path: Path, pubkey_pem: bytes | None = None) -> Report:
    report = Report()
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        report.fail(f"{path}: not a readable zip package ({exc})")
        return report
    with archive:
        names = set(archive.namelist())
        for required in (MANIFEST, SIGNATURE):
            if required not in names:
                report.fail(f"{required}: missing from the package")
        if not report.ok:
            return report
        manifest_bytes = archive.read(MANIFEST)
        signature = archive.read(SIGNATURE)
        if pubkey_pem is None:
            if PUBLIC_KEY not in names:
                report.fail(f"{PUBLIC_KEY}: missing and no --pubkey given")
                return report
            pubkey_pem = archive.read(PUBLIC_KEY)
            report.notes.append("using the public key inside the package: compare its fingerprint with the "
                                "station's published one (or pass --pubkey)")
        try:
            public = load_public(pubkey_pem)
        except ValueError as exc:
            report.fail(f"public key: unusable ({exc})")
            return report
        report.notes.append(f"key fingerprint {fingerprint(public)}")
        try:
            public.verify(signature, manifest_bytes)
        except InvalidSignature:
            report.fail(f"{MANIFEST}: signature does not verify with key {fingerprint(public)} "
                        "(manifest edited, or signed by another key)")
        try:
            manifest: dict[str, Any] = json.loads(manifest_bytes)
        except ValueError as exc:
            report.fail(f"{MANIFEST}: not valid JSON ({exc})")
            return report
        if manifest.get("format") != FORMAT:
            report.fail(f"{MANIFEST}: unknown format {manifest.get('format')!r}")
            return report

        segment_of = {}
        for camera in manifest.get("cameras", []):
            for seg in camera.get("segments", []):
                segment_of[seg["file"]] = f"camera {camera['id']} segment {seg['start']}..{seg['end']}"
        listed = set()
        for entry in manifest.get("files", []):
            name = entry["path"]
            listed.add(name)
            where = f"{name} ({segment_of[name]})" if name in segment_of else name
            if name not in names:
                report.fail(f"{where}: listed in the manifest but missing from the package")
                continue
            digest = hashlib.sha256()
            with archive.open(name) as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != entry["sha256"]:
                report.fail(f"{where}: SHA-256 mismatch: the file was modified")
        for name in sorted(names - listed - {MANIFEST, SIGNATURE, PUBLIC_KEY}):
            if not name.endswith("/"):
                report.fail(f"{name}: not listed in the manifest (inserted)")
        for camera in manifest.get("cameras", []):
            _check_chain(camera, report)
    return report


def _check_chain(camera: dict[str, Any], report: Report) -> None:
    previous: dict[str, Any] | None = None
    for seg in camera.get("segments", []):
        fields = NewSegment(
            camera=camera["id"], start=seg["start_epoch"], end=seg["end_epoch"], frames=seg["frames"],
            bytes=seg["bytes"], sha256=seg["sha256"], codec=seg["codec"], width=seg["width"], height=seg["height"],
            params=seg["params"], path=seg["stored_path"], status=seg["status"],
        )
        where = f"camera {camera['id']} segment {seg['start']}"
        if chain_hash(seg["prev_chain"], fields) != seg["chain_hash"]:
            report.fail(f"{where}: chain hash does not match the segment's fields (edited)")
        if previous is not None and seg["prev_chain"] != previous["chain_hash"]:
            report.fail(f"{where}: does not follow segment {previous['start']} in the station's chain "
                        "(a segment was removed or inserted)")
        previous = seg


def verify_storage(root: Path, index: SegmentIndex, camera: str | None = None) -> Report:
    """Re-hash every segment file and walk every camera's chain in the index."""
    report = Report()
    records = index.all_segments(camera)
    deleted_links = {d["chain_hash"] for d in index.deletions(camera)}
    by_camera: dict[str, list[Any]] = {}
    for record in records:
        by_camera.setdefault(record.camera, []).append(record)
    checked = 0
    for cam, rows in sorted(by_camera.items()):
        previous = None
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
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != row.sha256:
                report.fail(f"{where}: file modified (SHA-256 mismatch)")
            checked += 1
    known = {r.path for r in records}
    base = root / RECORDINGS
    if base.is_dir():
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                if name.endswith(".mp4") and rel not in known and (camera is None or f"/{camera}/" in f"/{rel}"):
                    report.fail(f"{rel}: file not in the index (inserted)")
    report.notes.append(f"{checked} segment file(s) re-hashed, {len(by_camera)} chain(s) walked")
    return report
