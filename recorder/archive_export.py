"""``nvr archive export``: an evidence package from the archive alone (the station may be gone), and its check.

The archive holds, per station, every segment's bytes under Object Lock with
its SHA-256, chain links and index fields in the version's metadata, and the
station's public key (``<prefix><station>/station-ed25519.pub.pem``, uploaded
and locked by the archiver).  :func:`build_from_archive` lists a camera's
objects for the range (keys are by UTC day), recomputes every chain link from
the metadata, downloads each version with its hash checked, and writes a zip:
``cameras/<camera>/<file>``, ``manifest.json`` (``kind: nvr-archive-export/1``:
every object's key, version id, lock, fields and links, every file's hash),
``public_key.pem`` and ``VERIFY.txt``.  It is **not signed**: the station's
private key stayed on the station.

:func:`verify_archive_package` (``nvr verify`` on such a package) checks, in
bounded memory: entry names and count, every file's hash against the
manifest and each segment's recorded SHA-256, each chain link recomputed from
its fields, the links between consecutive segments, and the package's key
against the trust anchor.  It proves that the files are the versions the
archive holds and that each segment's recorded fields, hash and place in its
camera's chain are consistent; not that the station made them (anyone who can
write the bucket could add a consistent chain of objects of their own; none
can alter or remove the locked ones).  Comparing the chain hashes with the
station's signed checkpoints (``nvr verify --checkpoints``) ties them to it:
a segment whose chain hash a checkpoint names, and every segment before it in
an unbroken chain, was attested by the station's own signature.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nvr import __version__
from nvr.base import secrets
from nvr.base.timeutil import iso
from recorder.archive_store import META_CHAIN, META_PREV, META_SEGMENT, META_SHA256, ArchiveError, ArchiveStore
from recorder.archive_store import decode_fields as decode_segment_fields
from recorder.index import MAX_SEGMENT_SECONDS, NewSegment, chain_hash
from recorder.keys import fingerprint, load_public

KIND = "nvr-archive-export/1"
STATION_KEY_OBJECT = "station-ed25519.pub.pem"
MAX_ENTRIES = 100_000
MAX_MANIFEST_BYTES = 16 << 20
_CHUNK = 1 << 20


class ArchiveExportError(Exception):
    pass


def station_key_object(prefix: str, station: str) -> str:
    return f"{prefix}{station}/{STATION_KEY_OBJECT}"


@dataclass(frozen=True, slots=True)
class _Found:
    key: str
    version_id: str
    fields: dict[str, Any]
    prev_chain: str
    chain_hash: str
    retain_until: float | None
    lock_mode: str | None


def _days(start: float, end: float) -> list[str]:
    day = datetime.fromtimestamp(start - MAX_SEGMENT_SECONDS, tz=UTC).date()
    last = datetime.fromtimestamp(end, tz=UTC).date()
    days = []
    while day <= last:
        days.append(day.isoformat())
        day += timedelta(days=1)
    return days


def _find(store: ArchiveStore, prefix: str, station: str, camera: str, start: float, end: float,
          notes: list[str]) -> list[_Found]:
    found: dict[str, _Found] = {}
    for day in _days(start, end):
        for key, version, _latest in store.versions(f"{prefix}{station}/{camera}/{day}/"):
            info = store.head(key, version)
            encoded = info.metadata.get(META_SEGMENT)
            if not encoded:
                notes.append(f"{key} version {version}: no segment fields in its metadata; left out")
                continue
            try:
                fields = decode_segment_fields(encoded)
            except ValueError:
                notes.append(f"{key} version {version}: unreadable segment fields; left out")
                continue
            if not (float(fields.get("start", 0)) < end and float(fields.get("end", 0)) > start):
                continue
            prev, link = info.metadata.get(META_PREV, ""), info.metadata.get(META_CHAIN, "")
            if chain_hash(prev, NewSegment(**fields)) != link or info.metadata.get(META_SHA256) != fields["sha256"]:
                notes.append(f"{key} version {version}: its metadata does not hash to its chain link; left out")
                continue
            if key in found:
                notes.append(f"{key}: more than one consistent version; the first found ({found[key].version_id}) "
                             "is used")
                continue
            found[key] = _Found(key, version, fields, prev, link, info.retain_until, info.lock_mode)
    return sorted(found.values(), key=lambda f: float(f.fields["start"]))


def build_from_archive(store: ArchiveStore, *, prefix: str, station: str, cameras: list[str], start: float,
                       end: float, output: Path, user: str, now: float) -> dict[str, Any]:
    """Write the package to ``output``; raise ArchiveExportError or ArchiveError saying what is wrong."""
    key_object = station_key_object(prefix, station)
    try:
        latest = store.head(key_object)
        pem = bytearray()
        store.read(key_object, latest.version_id, pem.extend)
        public = load_public(bytes(pem))
    except ArchiveError as exc:
        raise ArchiveExportError(f"the station's public key is not in the archive ({key_object}): {exc}") from None
    except ValueError as exc:
        raise ArchiveExportError(f"{key_object} is not an Ed25519 public key ({exc})") from None
    notes: list[str] = []
    cameras_out = []
    files = []
    tmp = output.with_suffix(".partial")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as package:
            for camera in cameras:
                entries = []
                previous: str | None = None
                for obj in _find(store, prefix, station, camera, start, end, notes):
                    arcname = f"cameras/{camera}/{Path(str(obj.fields['path'])).name}"
                    with package.open(arcname, "w", force_zip64=True) as dst:
                        digest, size = store.read(obj.key, obj.version_id, dst.write)
                    if digest != obj.fields["sha256"] or size != obj.fields["bytes"]:
                        raise ArchiveExportError(f"{obj.key} version {obj.version_id} came back different from "
                                                 "the SHA-256 recorded when it was written; not exported")
                    if previous is not None and obj.prev_chain != previous:
                        notes.append(f"camera {camera}: the chain breaks before {obj.key} (a segment not in the "
                                     "archive)")
                    previous = obj.chain_hash
                    files.append({"path": arcname, "sha256": digest, "bytes": size})
                    entries.append({"file": arcname, "key": obj.key, "version_id": obj.version_id,
                                    "retain_until": iso(obj.retain_until), "lock_mode": obj.lock_mode,
                                    "fields": obj.fields, "prev_chain": obj.prev_chain, "chain_hash": obj.chain_hash})
                cameras_out.append({"id": camera, "segments": entries})
            manifest = {
                "kind": KIND, "built_from": "archive", "signed": False, "station": station,
                "station_key": {"fingerprint": fingerprint(public), "object": key_object,
                                "version_id": latest.version_id},
                "archive": {"endpoint": secrets.redact_url(store.config.endpoint), "bucket": store.bucket,
                            "prefix": prefix},
                "requested": {"start": iso(start), "end": iso(end)},
                "cameras": cameras_out, "files": files, "notes": notes,
                "exported_by": user, "exported_at": iso(now), "software": {"name": "nvr", "version": __version__},
            }
            package.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
            package.writestr("public_key.pem", bytes(pem))
            package.writestr("VERIFY.txt", _VERIFY_TEXT.format(station=station, fp=fingerprint(public)))
        tmp.rename(output)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


_VERIFY_TEXT = """This package was built from the off-site archive of station {station}, not by the station.
It is NOT signed: the station's private key never leaves the station.

    nvr verify PACKAGE.zip --fingerprint {fp}

checks every file's SHA-256 against the one recorded when the segment was written, recomputes every
segment's chain link from its recorded fields, and the links between consecutive segments, and that
the station key the archive holds is the one you trust. It shows the files are what the archive holds
under Object Lock, in their recorded order; alone it cannot show the station made them. Add
--checkpoints FILE (the station's signed checkpoints, from the central console) to count the segments
whose chain the station itself signed. Obtain the fingerprint out of band, never from this package.
"""


@dataclass(slots=True)
class ArchivePackageReport:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    segments: int = 0
    attested: int = 0  # segments whose chain a checkpoint signed by the station reaches
    fingerprint: str | None = None


def is_archive_package(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as package:
            if "manifest.sig" in package.namelist() or "manifest.json" not in package.namelist():
                return False
            info = package.getinfo("manifest.json")
            if info.file_size > MAX_MANIFEST_BYTES:
                return False
            return bool(json.loads(package.read(info)).get("kind") == KIND)
    except (OSError, zipfile.BadZipFile, ValueError, AttributeError):
        return False


def verify_archive_package(path: Path, trusted: Any | None, checkpoints: Path | None = None) -> ArchivePackageReport:
    """``trusted``: a recorder.trust.TrustAnchor, or None (then the key is only reported); ``checkpoints``:
    the station's signed checkpoints as the console exports them, which attest the chain up to each head."""
    report = ArchivePackageReport()
    try:
        package = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        report.failures.append(f"not a readable zip ({exc})")
        return report
    with package:
        infos = package.infolist()
        names = [i.filename for i in infos]
        if len(infos) > MAX_ENTRIES:
            report.failures.append(f"{len(infos)} entries (at most {MAX_ENTRIES})")
            return report
        counts = Counter(names)
        bad = [n for n in names if n.startswith("/") or ".." in n.split("/") or "\\" in n or counts[n] > 1]
        if bad:
            report.failures.append(f"unsafe or duplicate entry names: {', '.join(sorted(set(bad))[:5])}")
            return report
        manifest = json.loads(package.read("manifest.json"))
        declared = {f["path"]: f for f in manifest.get("files", [])}
        for name, entry in declared.items():
            try:
                info = package.getinfo(name)
            except KeyError:
                report.failures.append(f"{name}: listed in the manifest, missing from the package")
                continue
            if info.file_size != entry["bytes"]:
                report.failures.append(f"{name}: {info.file_size} bytes, the manifest says {entry['bytes']}")
                continue
            digest = hashlib.sha256()
            with package.open(info) as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != entry["sha256"]:
                report.failures.append(f"{name}: its SHA-256 is not the one in the manifest (modified)")
        extra = set(names) - set(declared) - {"manifest.json", "public_key.pem", "VERIFY.txt"}
        for name in sorted(extra):
            report.failures.append(f"{name}: in the package but not in the manifest")
        try:
            public = load_public(package.read("public_key.pem"))
        except (KeyError, ValueError) as exc:
            report.failures.append(f"public_key.pem: not an Ed25519 public key ({exc})")
            public = None
        if public is not None:
            report.fingerprint = fingerprint(public)
            if fingerprint(public) != manifest.get("station_key", {}).get("fingerprint"):
                report.failures.append("public_key.pem is not the key the manifest names")
            if trusted is not None and not any(k.matches(public) for k in trusted.keys):
                report.failures.append(f"the station key in the archive ({fingerprint(public)}) is not the trusted "
                                       f"key ({trusted.describe()})")
        heads: set[tuple[str, str]] = set()
        if checkpoints is not None:
            from recorder.checkpoint import CheckpointError, load_file

            try:
                witnessed = load_file(checkpoints, str(manifest.get("station", "")), public)
            except CheckpointError as exc:
                report.failures.append(f"--checkpoints: {exc}")
            else:
                report.failures.extend(witnessed.failures)
                report.notes.extend(witnessed.notes)
                heads = {(camera, head.chain_hash) for body in witnessed.checkpoints
                         for camera, head in body.cameras.items()}
        for camera in manifest.get("cameras", []):
            previous: str | None = None
            run = 0  # segments since the last break or attested head
            for seg in camera.get("segments", []):
                report.segments += 1
                where = f"{seg.get('file')} (camera {camera.get('id')})"
                fields = seg.get("fields", {})
                try:
                    link = chain_hash(seg["prev_chain"], NewSegment(**fields))
                except (KeyError, TypeError) as exc:
                    report.failures.append(f"{where}: unreadable fields ({exc})")
                    continue
                if link != seg.get("chain_hash"):
                    report.failures.append(f"{where}: its fields do not hash to its chain link (edited)")
                file_entry = declared.get(seg.get("file", ""))
                if file_entry is None or file_entry["sha256"] != fields.get("sha256"):
                    report.failures.append(f"{where}: its file is not the segment recorded (SHA-256 differs)")
                if previous is not None and seg["prev_chain"] != previous:
                    report.notes.append(f"{where}: the chain breaks before it (a segment not in the package)")
                    run = 0
                previous = seg.get("chain_hash")
                run += 1
                if (camera.get("id"), previous) in heads:  # the station signed this head: it and its chain are its
                    report.attested += run
                    run = 0
    return report
