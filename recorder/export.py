"""Evidence export packages: the original segment files, a manifest, and the station's signature.

A package is one zip file:

- ``cameras/<camera>/<segment>.mp4``: every stored segment overlapping the
  range, byte for byte as recorded (their SHA-256 and chain hashes match the
  station's index);
- ``manifest.json``: station, cameras, requested and actual ranges, every gap,
  every segment with its SHA-256 and chain hash, every file's SHA-256, the
  exporting user and reason, the export time and the software version;
- ``manifest.sig``: Ed25519 signature of ``manifest.json`` by the station key;
- ``public_key.pem`` and ``VERIFY.txt`` (how to check it, offline);
- ``SUMMARY.txt``: the package for people to read and print: who exported
  what, why and when, each camera's recorded spans and gaps with their causes,
  every time as the station reads it (``station.timezone``, with its offset)
  beside UTC.  VERIFY.txt opens with the same times.  Both are listed and
  hashed in the manifest like every file, so they are signed; the manifest's
  own fields stay ISO-8601 UTC.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nvr import __version__
from nvr.base.config import Config
from nvr.base.timeutil import iso, local_and_utc, parse_iso
from recorder.archive_store import ArchiveError
from recorder.index import SegmentIndex, SegmentRecord, chain_hash, decode_meta, record_fields
from recorder.keys import StationKey
from recorder.search import CauseSource, search
from recorder.storage import StorageError, segment_file

if TYPE_CHECKING:
    from recorder.archive_read import ArchiveReader

FORMAT = "nvr-evidence-export/1"
# The verifier reads manifest.json whole; this bounds its memory (about 16,000 segments, e.g. 11
# camera-days of 60 s segments). A larger export is refused, never written unverifiable.
MAX_MANIFEST_BYTES = 16 << 20
# Rows between shipped segments named in a package (chain_links): ~250 bytes each, well inside the manifest.
MAX_CHAIN_LINKS = 20_000
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"
VERIFY_NOTE = "VERIFY.txt"
SUMMARY = "SUMMARY.txt"

VERIFY_TEXT = """\
How to verify this evidence package
===================================

This package was exported by the nvr recording daemon of the station named in
manifest.json. It holds the original recorded video files, byte for byte as
the station stored them, a manifest listing every file with its SHA-256 hash
(each equal to the hash the station recorded when it wrote the segment), and
an Ed25519 signature of the manifest made with the station's key.

1. Obtain the station's key fingerprint OUT OF BAND, never from this package:
   ask the station (its commander or administrator runs `nvr key show`; the
   fingerprint is also on the station's published key record and in the
   central console's keyring, GET /api/keyring). Write it down with who gave
   it to you and when.

2. With nvr installed (no network needed), run one of:

    nvr verify PACKAGE.zip --fingerprint SHA256:....   (the fingerprint from step 1)
    nvr verify PACKAGE.zip --pubkey STATION_KEY.pem    (the station's public key)
    nvr verify PACKAGE.zip --keyring KEYRING.json      (the console's keyring of all stations)

   It checks the signature against that key, every file's hash, that each
   segment is the one the station indexed when it recorded it, that no file
   was added, removed or duplicated, and that the segments' chain hashes are
   intact. Exit status: 0 OK (authentic and intact); 1 FAILED (each problem is
   printed by file and segment); 3 the contents are intact but the signer is
   NOT authenticated (no key or fingerprint was given).

The public_key.pem inside the package only shows that the package is
internally consistent: anyone who edits a package can re-sign it with a key of
their own and put that key here. Only a key or fingerprint obtained from the
station proves who made it.

Without nvr: the signature is a raw Ed25519 signature (RFC 8032) over the exact
bytes of manifest.json; each entry of "files" in manifest.json gives a path and
its SHA-256, checkable with `sha256sum`; the fingerprint is the SHA-256 of the
raw 32-byte public key.
"""

Progress = Callable[[float], None]


# -- the human-readable parts: times as the station reads them ---------------------------------------------------


def _when(timestamp: float | str | None, zone: str) -> str:
    """A time (seconds, or the manifest's ISO text) as the station reads it, beside UTC."""
    return local_and_utc(parse_iso(timestamp) if isinstance(timestamp, str) else timestamp, zone)


def verify_text(station: dict[str, str], request: ExportRequest, now: float, zone: str) -> str:
    """VERIFY.txt: which package this is, in the station's time and UTC, then how to verify it."""
    head = (f"Evidence package of station {station.get('name', '')} ({station.get('id', '')})\n"
            f"Exported:  {_when(now, zone)} by {request.user}\n"
            f"Range:     {_when(request.start, zone)}\n"
            f"      to   {_when(request.end, zone)}\n"
            f"Times are the station's ({zone}) with their UTC offset, then UTC; manifest.json keeps UTC only.\n"
            "SUMMARY.txt lists what the package holds.\n\n")
    return head + VERIFY_TEXT


def summary_text(station: dict[str, str], request: ExportRequest, now: float, zone: str, fingerprint: str,
                 cameras: list[dict[str, Any]]) -> str:
    """SUMMARY.txt: the package as a printable page: request, then each camera's spans and gaps."""
    lines = [
        "Evidence export summary",
        "=======================",
        "",
        f"Station:      {station.get('name', '')} ({station.get('id', '')})",
        f"Time zone:    {zone} (each time: the station's local time with its UTC offset = UTC)",
        f"Exported:     {_when(now, zone)}",
        f"Exported by:  {request.user}",
        f"Reason:       {request.reason}",
        f"Requested:    {_when(request.start, zone)}",
        f"         to   {_when(request.end, zone)}",
        f"Station key:  {fingerprint} (check it against the station's, see VERIFY.txt)",
        "",
    ]
    for camera in cameras:
        title = f"Camera {camera['id']}" + (f": {camera['name']}" if camera.get("name") else "")
        lines += [title, "-" * len(title)]
        actual = camera.get("actual")
        if actual is None:
            lines += ["Nothing recorded in the range.", ""]
            continue
        lines += [f"Recorded:     {camera['recorded_seconds']:.1f} s in {len(camera['spans'])} span(s), "
                  f"{len(camera['segments'])} file(s)",
                  f"First frame:  {_when(actual['start'], zone)}",
                  f"Last frame:   {_when(actual['end'], zone)}", "", "Recorded spans:"]
        lines += [f"  {_when(s['start'], zone)}\n    to {_when(s['end'], zone)}"
                  for s in camera["spans"]] or ["  none"]
        lines.append("Gaps (nothing recorded):")
        lines += [f"  {_when(g['start'], zone)}\n    to {_when(g['end'], zone)}"
                  f"\n    cause: {g['cause']}" + (f" ({g['reason']})" if g.get("reason") else "")
                  for g in camera["gaps"]] or ["  none"]
        lines.append("")
    return "\n".join(lines) + "\n"


class ExportError(Exception):
    """An export that cannot be made as asked; the message names the segment or the limit, never a path
    outside the package."""


def package_identity(config: Config) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(station, camera_info) as a package's manifest names them: the daemon's queue and `nvr export` alike."""
    return ({"id": config.station.id, "name": config.station.name, "timezone": config.station.timezone},
            {**{c.id: {"name": c.name, "zone": c.zone.value} for c in config.cameras}, **bodycam_info(config)})


def bodycam_info(config: Config) -> dict[str, dict[str, str]]:
    """Body cameras as a manifest names them (issue 15): ``kind: bodycam`` beside a fixed camera's zone."""
    return {b.id: {"name": b.name, "kind": "bodycam"} for b in config.bodycams}


@dataclass(frozen=True, slots=True)
class ExportRequest:
    cameras: list[str]
    start: float
    end: float
    reason: str
    user: str
    # An incident case's package (recorder/cases.py): its own range per item instead of [start, end) for
    # every camera, and the case itself in the manifest.
    ranges: tuple[tuple[str, float, float], ...] = ()
    case: dict[str, Any] | None = None


def export_ranges(index: SegmentIndex, request: ExportRequest) -> list[tuple[str, float, float]]:
    """The (camera, start, end) entries of a package: each camera over the request's range, or a case's
    ranges merged per camera, where ranges that overlap or share a segment file become one entry (a file
    is shipped once, and the segments of one entry follow each other in the camera's chain)."""
    if not request.ranges:
        return [(camera, request.start, request.end) for camera in request.cameras]
    entries: list[tuple[str, float, float]] = []
    for camera in request.cameras:
        joined: list[tuple[float, float]] = []
        files: set[int] = set()
        for start, end in sorted((s, e) for c, s, e in request.ranges if c == camera):
            ids = {seg.id for seg in index.segments(camera, start, end) if seg.status != "missing"}
            if joined and (start <= joined[-1][1] or ids & files):
                joined[-1] = (joined[-1][0], max(joined[-1][1], end))
                files |= ids
            else:
                joined.append((start, end))
                files = ids
        entries += [(camera, start, end) for start, end in joined]
    return entries


def chain_links(index: SegmentIndex, camera: str, segments: Sequence[SegmentRecord]) -> list[dict[str, Any]]:
    """The rows of ``camera``'s chain between shipped segments that are not shipped themselves.

    The chain runs in insertion order; footage backfilled from a camera's card (recorder/backfill.py) is
    inserted after rows of later times, so the shipped segments of a range need not follow each other
    directly.  The rows in between (outside the range) are named, with their links, so that a verifier
    can walk the chain across them; one inside the range would have been shipped.
    """
    links: list[dict[str, Any]] = []
    ordered = sorted(segments, key=lambda s: s.id)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.prev_chain == a.chain_hash:
            continue
        rows = index.db.execute(
            "SELECT id, start, end, prev_chain, chain_hash FROM segments WHERE camera = ? AND id > ? AND id < ?"
            " ORDER BY id LIMIT ?", (camera, a.id, b.id, MAX_CHAIN_LINKS - len(links))).fetchall()
        links += [{"index_id": i, "start_epoch": s, "end_epoch": e, "prev_chain": p, "chain_hash": c}
                  for i, s, e, p, c in rows]
        if len(links) >= MAX_CHAIN_LINKS:
            break
    return links


@dataclass(frozen=True, slots=True)
class PlannedFile:
    arcname: str
    source: Path
    record: SegmentRecord
    camera: str

    def where(self) -> str:
        return f"segment {self.arcname} (camera {self.camera}, {iso(self.record.start)})"


def plan_segments(index: SegmentIndex, cameras: list[str], start: float, end: float) -> list[SegmentRecord]:
    """The stored segments an export of this range would ship (for quotas and holds)."""
    return [s for camera in cameras for s in index.segments(camera, start, end) if s.status != "missing"]


def build_package(
    *,
    root: Path,
    index: SegmentIndex,
    key: StationKey,
    station: dict[str, str],
    camera_info: dict[str, dict[str, str]],
    request: ExportRequest,
    output: Path,
    now: float,
    causes: CauseSource | None = None,
    progress: Progress | None = None,
    checkpoint: dict[str, Any] | None = None,
    archive_reader: ArchiveReader | None = None,
) -> dict[str, Any]:
    """Write the package to ``output`` (runs off the event loop; index calls are made directly).

    Every segment is checked while it is copied: its index row must still match its chain hash, and
    the bytes copied must have the size and SHA-256 recorded when the segment was written. A segment
    changed on disk since then fails the export with ExportError naming it (``nvr verify-storage``
    tells the whole story); nothing half-written is left behind.
    """
    cameras_out = []
    files: list[dict[str, Any]] = []
    plan: list[PlannedFile] = []
    for camera, start, end in export_ranges(index, request):
        # Segments deleted locally after they were archived come from the archive (recorder/archive_read.py).
        reader = archive_reader
        archived = reader.find_blocking(camera, start, end) if reader is not None else []
        if archived:
            from recorder.archive_read import search_with_archive

            result = search_with_archive(index, camera, start, end, causes, archived)
            try:
                cached = reader.fetch_blocking(archived) if reader is not None else {}
            except ArchiveError as exc:
                raise ExportError(f"camera {camera}: {len(archived)} segment(s) of the range are only in the "
                                  f"archive, which cannot be read: {exc}; not exported") from None
        else:
            result = search(index, camera, start, end, causes)
            cached = {}
        segments = result.segments  # the playable ones; a missing file is a gap with its cause
        entries = []
        for seg in segments:
            arcname = f"cameras/{camera}/{Path(seg.path).name}"
            try:
                # never a file outside the storage (or the archive cache)
                source = cached[seg.id] if seg.id in cached else segment_file(root, seg.path)
            except StorageError as exc:
                raise ExportError(f"segment {arcname} (camera {camera}, {iso(seg.start)}): {exc}; not exported") \
                    from None
            planned = PlannedFile(arcname, source, seg, camera)
            if chain_hash(seg.prev_chain, record_fields(seg)) != seg.chain_hash:
                raise ExportError(f"{planned.where()}: its index row was edited after it was written "
                                  "(chain hash mismatch); not exported")
            plan.append(planned)
            entries.append({
                "file": arcname, "index_id": seg.id, "start": iso(seg.start), "end": iso(seg.end),
                "start_epoch": seg.start, "end_epoch": seg.end, "frames": seg.frames, "bytes": seg.bytes,
                "sha256": seg.sha256, "codec": seg.codec, "width": seg.width, "height": seg.height,
                "params": seg.params, "status": seg.status, "stored_path": seg.path,
                "prev_chain": seg.prev_chain, "chain_hash": seg.chain_hash,
                "copy": "archive" if seg.id in cached else "local",
                **({"meta": decode_meta(seg.meta)} if seg.meta != "{}" else {}),
            })
        links = chain_links(index, camera, segments)
        cameras_out.append({
            "id": camera, **camera_info.get(camera, {}),
            **({"requested": {"start": iso(start), "end": iso(end)}} if request.ranges else {}),
            "actual": {"start": iso(segments[0].start), "end": iso(segments[-1].end)} if segments else None,
            "recorded_seconds": round(result.recorded_seconds, 3),
            "spans": [{"start": iso(s.start), "end": iso(s.end)} for s in result.spans],
            "gaps": [{"start": iso(g.start), "end": iso(g.end), "cause": g.cause, "reason": g.reason}
                     for g in result.gaps],
            "segments": entries,
            **({"chain_links": links} if links else {}),
        })
    total = sum(p.record.bytes for p in plan) or 1
    done = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for planned in plan:
                digest = hashlib.sha256()
                size = 0
                try:
                    with planned.source.open("rb") as src, \
                            archive.open(planned.arcname, "w", force_zip64=True) as dst:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            dst.write(chunk)
                            size += len(chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress(min(done / total, 0.99))
                except FileNotFoundError:
                    raise ExportError(f"{planned.where()}: the file is gone from the storage though the index "
                                      "lists it; not exported") from None
                except OSError as exc:
                    raise ExportError(f"{planned.where()}: cannot be read ({exc.strerror})") from None
                if size != planned.record.bytes or digest.hexdigest() != planned.record.sha256:
                    raise ExportError(
                        f"{planned.where()}: the file on disk is not the one recorded ({size} bytes, SHA-256 "
                        f"{digest.hexdigest()[:16]}…; indexed {planned.record.bytes} bytes, "
                        f"{planned.record.sha256[:16]}…): modified after it was written; not exported "
                        "(run nvr verify-storage)")
                files.append({"path": planned.arcname, "sha256": planned.record.sha256, "bytes": size})
            zone = station.get("timezone") or "UTC"
            notes = {VERIFY_NOTE: verify_text(station, request, now, zone),
                     SUMMARY: summary_text(station, request, now, zone, key.fingerprint, cameras_out)}
            for name, text in notes.items():
                data = text.encode()
                archive.writestr(name, data)
                files.append({"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
            manifest = {
                "format": FORMAT,
                "station": station,
                "software": {"name": "nvr", "version": __version__},
                "exported_at": iso(now),
                "exported_by": request.user,
                "reason": request.reason,
                "requested": {"start": iso(request.start), "end": iso(request.end)},
                "key_fingerprint": key.fingerprint,
                "checkpoint": checkpoint,
                **({"case": request.case} if request.case is not None else {}),
                "cameras": cameras_out,
                "files": files,
            }
            manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
            if len(manifest_bytes) > MAX_MANIFEST_BYTES:
                raise ExportError(f"{len(plan)} segments are more than one package can list (its manifest would "
                                  f"exceed {MAX_MANIFEST_BYTES >> 20} MB); export fewer cameras or a shorter range")
            archive.writestr(MANIFEST, manifest_bytes)
            archive.writestr(SIGNATURE, key.sign(manifest_bytes))
            archive.writestr(PUBLIC_KEY, key.public_pem)
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(1.0)
    return manifest
