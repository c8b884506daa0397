"""Start-up reconciliation of the disk with the index.

- A ``.part`` segment left open by a crash is cut back to its last complete
  fragment (fragmented MP4 stays playable up to there), renamed and indexed.
- A finished segment file without an index row is probed and indexed.
- A row whose file is gone is flagged ``missing`` (never silently dropped).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.error

from recorder.index import NewSegment, SegmentIndex, encode_meta
from recorder.storage import (
    PART_SUFFIX,
    RECORDINGS,
    fsync_dir,
    fsync_file,
    origin_from_name,
    sha256_file,
    start_from_name,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ReconcileReport:
    recovered: list[str] = field(default_factory=list)
    indexed_orphans: list[str] = field(default_factory=list)
    unrecoverable: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def complete_fragments_end(path: Path) -> int:
    """Byte offset just past the last complete moof+mdat pair (0 if there is none)."""
    size = path.stat().st_size
    end = 0
    saw_moov = False
    pending_moof = False
    with path.open("rb") as f:
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size, kind = struct.unpack(">I4s", header[:8])
            if box_size == 1 and len(header) >= 16:
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8 or offset + box_size > size:
                break  # truncated box: the crash happened here
            if kind == b"moov":
                saw_moov = True
            elif kind == b"moof":
                pending_moof = True
            elif kind == b"mdat" and pending_moof and saw_moov:
                pending_moof = False
                end = offset + box_size
            offset += box_size
    return end


def probe_segment(path: Path, relpath: str, camera: str, status: str) -> NewSegment | None:
    """Describe a finished segment file from its contents and its name."""
    start = start_from_name(path.name)
    if start is None:
        return None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
            extradata = stream.codec_context.extradata or b""
            time_base = stream.time_base
            frames = 0
            first = last = None
            last_duration = 0
            for packet in container.demux(stream):
                if packet.dts is None and packet.pts is None:
                    continue
                ts = packet.dts if packet.dts is not None else packet.pts
                first = ts if first is None else first
                last = ts
                last_duration = packet.duration or last_duration
                frames += 1
    except (av.error.FFmpegError, OSError):
        log.warning("cannot read %s", relpath, exc_info=True)
        return None
    if frames == 0 or first is None or last is None or time_base is None:
        return None
    duration = float((last - first + last_duration) * time_base)
    digest, size = sha256_file(path)
    params = {"extradata": extradata.hex(), "time_base": str(time_base), "audio": None, "camera_audio": None}
    # What the writer would have put in the row's meta is lost with the crash, but not where the footage came from.
    origin = origin_from_name(path.name)
    meta = encode_meta({"origin": origin, "indexed_from": status}) if origin is not None else "{}"
    return NewSegment(
        camera=camera, start=round(start, 6), end=round(start + max(duration, 0.001), 6), frames=frames, bytes=size,
        sha256=digest, codec=codec, width=width, height=height, params=json.dumps(params, sort_keys=True),
        path=relpath, status=status, meta=meta,
    )


def reconcile(root: Path, index: SegmentIndex) -> ReconcileReport:
    """Run on the index thread before recording starts."""
    report = ReconcileReport()
    base = root / RECORDINGS
    known = {record.path: record for record in index.all_segments()}
    if base.is_dir():
        for dirpath, _dirnames, filenames in os.walk(base, followlinks=False):
            directory = Path(dirpath)
            for name in sorted(filenames):
                path = directory / name
                if path.is_symlink():
                    log.warning("ignoring symlink in storage: %s", path.relative_to(root))
                    continue
                relpath = path.relative_to(root).as_posix()
                camera = Path(relpath).parts[1] if len(Path(relpath).parts) > 2 else ""
                if name.endswith(".mp4" + PART_SUFFIX):
                    _recover(root, path, camera, index, report)
                elif name.endswith(".mp4") and relpath not in known:
                    segment = probe_segment(path, relpath, camera, "orphan")
                    if segment is None:
                        report.unrecoverable.append(relpath)
                        log.error("segment file %s is not indexed and cannot be read", relpath)
                    else:
                        index.add_segment(segment)
                        report.indexed_orphans.append(relpath)
                        log.warning("indexed segment file %s that had no index row", relpath)
    for relpath, record in known.items():
        if not (root / relpath).is_file() and record.status != "missing":
            index.set_status(record.id, "missing")
            report.missing.append(relpath)
            log.error("segment %s is in the index but its file is gone; flagged missing", relpath)
    return report


def _recover(root: Path, part: Path, camera: str, index: SegmentIndex, report: ReconcileReport) -> None:
    relpart = part.relative_to(root).as_posix()
    end = complete_fragments_end(part)
    if end == 0:
        log.warning("interrupted segment %s holds no complete fragment; removing it", relpart)
        part.unlink()
        report.unrecoverable.append(relpart)
        return
    with part.open("r+b") as f:
        f.truncate(end)
    fsync_file(part)
    final = part.with_name(part.name.removesuffix(PART_SUFFIX))
    os.replace(part, final)
    fsync_dir(final.parent)
    relpath = final.relative_to(root).as_posix()
    segment = probe_segment(final, relpath, camera, "recovered")
    if segment is None:
        report.unrecoverable.append(relpath)
        log.error("recovered segment %s cannot be read", relpath)
        return
    index.add_segment(segment)
    report.recovered.append(relpath)
    log.warning("recovered interrupted segment %s (%.1f s)", relpath, segment.end - segment.start)
