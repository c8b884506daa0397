"""Evidence export packages: the original segment files, a manifest, and the station's signature.

A package is one zip file:

- ``cameras/<camera>/<segment>.mp4``: every stored segment overlapping the
  range, byte for byte as recorded (their SHA-256 and chain hashes match the
  station's index);
- ``manifest.json``: station, cameras, requested and actual ranges, every gap,
  every segment with its SHA-256 and chain hash, every file's SHA-256, the
  exporting user and reason, the export time and the software version;
- ``manifest.sig``: Ed25519 signature of ``manifest.json`` by the station key;
- ``public_key.pem`` and ``VERIFY.txt`` (how to check it, offline).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvr import __version__
from nvr.timeutil import iso
from recorder.index import SegmentIndex
from recorder.keys import StationKey
from recorder.search import GapExplainer, search
from recorder.storage import segment_file

FORMAT = "nvr-evidence-export/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"
VERIFY_NOTE = "VERIFY.txt"

VERIFY_TEXT = """\
How to verify this evidence package
===================================

This package was exported by the nvr recording daemon of the station named in
manifest.json. It holds the original recorded video files, byte for byte as
the station stored them, a manifest listing every file with its SHA-256 hash,
and an Ed25519 signature of the manifest made with the station's key.

With nvr installed (no network needed):

    nvr verify PACKAGE.zip --pubkey STATION_KEY.pem

checks the signature, every file's hash, that no file was added or removed,
and that the segments' chain hashes are intact. It prints OK, or each failure
by file and segment, and exits 0 or 1.

Without --pubkey, the public_key.pem inside the package is used: that proves
the package is internally consistent, but only the station's published key
(compare its fingerprint, printed by `nvr key show` at the station and by the
verifier) proves who made it.

Without nvr: the signature is a raw Ed25519 signature (RFC 8032) over the exact
bytes of manifest.json; each entry of "files" in manifest.json gives a path and
its SHA-256, checkable with `sha256sum`.
"""

Progress = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class ExportRequest:
    cameras: list[str]
    start: float
    end: float
    reason: str
    user: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
    explain: GapExplainer | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the package to ``output`` (runs off the event loop; index calls are made directly)."""
    cameras_out = []
    files: list[dict[str, Any]] = []
    plan: list[tuple[str, Path]] = []
    for camera in request.cameras:
        result = search(index, camera, request.start, request.end, explain)
        segments = [s for s in result.segments if s.status != "missing"]
        entries = []
        for seg in segments:
            arcname = f"cameras/{camera}/{Path(seg.path).name}"
            plan.append((arcname, segment_file(root, seg.path)))  # never a file outside the storage
            entries.append({
                "file": arcname, "index_id": seg.id, "start": iso(seg.start), "end": iso(seg.end),
                "start_epoch": seg.start, "end_epoch": seg.end, "frames": seg.frames, "bytes": seg.bytes,
                "sha256": seg.sha256, "codec": seg.codec, "width": seg.width, "height": seg.height,
                "params": seg.params, "status": seg.status, "stored_path": seg.path,
                "prev_chain": seg.prev_chain, "chain_hash": seg.chain_hash,
            })
        cameras_out.append({
            "id": camera, **camera_info.get(camera, {}),
            "actual": {"start": iso(segments[0].start), "end": iso(segments[-1].end)} if segments else None,
            "recorded_seconds": round(result.recorded_seconds, 3),
            "spans": [{"start": iso(s.start), "end": iso(s.end)} for s in result.spans],
            "gaps": [{"start": iso(g.start), "end": iso(g.end), "cause": g.cause} for g in result.gaps],
            "segments": entries,
        })
    total = sum(path.stat().st_size for _, path in plan) or 1
    done = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for arcname, path in plan:
            digest = hashlib.sha256()
            size = 0
            with path.open("rb") as src, archive.open(arcname, "w", force_zip64=True) as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(min(done / total, 0.99))
            files.append({"path": arcname, "sha256": digest.hexdigest(), "bytes": size})
        archive.writestr(VERIFY_NOTE, VERIFY_TEXT)
        files.append({"path": VERIFY_NOTE, "sha256": hashlib.sha256(VERIFY_TEXT.encode()).hexdigest(),
                      "bytes": len(VERIFY_TEXT.encode())})
        manifest = {
            "format": FORMAT,
            "station": station,
            "software": {"name": "nvr", "version": __version__},
            "exported_at": iso(now),
            "exported_by": request.user,
            "reason": request.reason,
            "requested": {"start": iso(request.start), "end": iso(request.end)},
            "key_fingerprint": key.fingerprint,
            "cameras": cameras_out,
            "files": files,
        }
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        archive.writestr(MANIFEST, manifest_bytes)
        archive.writestr(SIGNATURE, key.sign(manifest_bytes))
        archive.writestr(PUBLIC_KEY, key.public_pem)
    tmp.replace(output)
    if progress is not None:
        progress(1.0)
    return manifest
