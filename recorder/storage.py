"""The recording disk: its identity marker, the layout of segment files, free space.

A storage directory is initialised once with ``nvr init-storage``, which
writes a marker file holding a random id and the station id.  The daemon
refuses to record into a directory without that marker (an unmounted disk
leaves an empty mount point behind) or with another station's marker, and
says so loudly, instead of silently filling the root filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MARKER = ".nvr-storage"
INDEX_FILE = "index.sqlite3"
RECORDINGS = "recordings"
PART_SUFFIX = ".part"


class StorageError(Exception):
    """The storage directory cannot be used for recording; the message says why."""


@dataclass(frozen=True, slots=True)
class Marker:
    id: str
    station: str
    created_at: float


def init_storage(root: Path, station: str) -> Marker:
    """Create the marker in ``root`` (created if missing). Refuses another station's disk."""
    root.mkdir(parents=True, exist_ok=True)
    marker_path = root / MARKER
    if marker_path.exists():
        marker = read_marker(root)
        if marker.station != station:
            raise StorageError(f"{root} already belongs to station {marker.station!r}")
        return marker
    marker = Marker(id=uuid.uuid4().hex, station=station, created_at=time.time())
    tmp = marker_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"id": marker.id, "station": marker.station, "created_at": marker.created_at}))
    fsync_file(tmp)
    tmp.rename(marker_path)
    fsync_dir(root)
    return marker


def read_marker(root: Path) -> Marker:
    try:
        data = json.loads((root / MARKER).read_text())
        return Marker(id=str(data["id"]), station=str(data["station"]), created_at=float(data["created_at"]))
    except FileNotFoundError:
        raise StorageError(
            f"{root} has no storage marker ({MARKER}): the recording disk is not mounted, or was never "
            f"initialised (run: nvr init-storage -c CONFIG)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{root / MARKER} is unreadable: {exc}") from None


def check_storage(root: Path, station: str, expected_id: str | None) -> Marker:
    """Raise StorageError unless ``root`` is this station's initialised recording disk."""
    if not root.is_dir():
        raise StorageError(f"storage path {root} does not exist (disk not mounted?)")
    marker = read_marker(root)
    if marker.station != station:
        raise StorageError(f"{root} is station {marker.station!r}'s disk, not {station!r}'s; refusing to record")
    if expected_id is not None and marker.id != expected_id:
        raise StorageError(f"{root} is disk {marker.id}, but storage.id pins {expected_id}; refusing to record")
    if not os.access(root, os.W_OK):
        raise StorageError(f"{root} is not writable")
    return marker


# Footage that did not come from the live stream says so in its file name too: the index row's meta says it
# (``origin``), but a segment cut off by a crash is indexed again from its file alone (recorder.reconcile).
ORIGINS = ("backfill",)


def segment_relpath(camera: str, start: float, origin: str | None = None) -> str:
    """``recordings/<camera>/<YYYY-MM-DD>/<camera>_<YYYYMMDDTHHMMSS.mmmZ>[-<origin>].mp4`` (UTC)."""
    if origin is not None and origin not in ORIGINS:
        raise ValueError(f"unknown segment origin {origin!r}")
    moment = datetime.fromtimestamp(start, tz=UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f".{moment.microsecond // 1000:03d}Z"
    marker = f"-{origin}" if origin is not None else ""
    return f"{RECORDINGS}/{camera}/{moment:%Y-%m-%d}/{camera}_{stamp}{marker}.mp4"


def origin_from_name(name: str) -> str | None:
    """The origin a segment's file name carries (None: the live stream)."""
    stem = name.removesuffix(PART_SUFFIX).removesuffix(".mp4")
    return next((origin for origin in ORIGINS if stem.endswith(f"Z-{origin}")), None)


def segment_file(root: Path, relpath: str) -> Path:
    """The file of an index row, refusing paths that leave ``<root>/recordings`` or pass a symlink.

    The storage root itself may be a symlink (a mount elsewhere); nothing below it may be.
    """
    base = root.resolve()
    expected = Path(os.path.normpath(base / relpath))
    resolved = Path(os.path.realpath(expected))
    if resolved != expected or not resolved.is_relative_to(base / RECORDINGS):
        raise StorageError(f"refusing {relpath!r}: not a file inside {RECORDINGS}/ (symlink or path traversal)")
    return resolved


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def start_from_name(name: str) -> float | None:
    """Inverse of :func:`segment_relpath` for a file name (``.part`` allowed)."""
    stem = name.removesuffix(PART_SUFFIX).removesuffix(".mp4")
    origin = origin_from_name(name)
    if origin is not None:
        stem = stem.removesuffix(f"-{origin}")
    _, _, stamp = stem.rpartition("_")
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def free_space(root: Path) -> tuple[int, int]:
    """(free bytes available to us, total bytes) of the filesystem holding ``root``."""
    usage = shutil.disk_usage(root)
    return usage.free, usage.total


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
