"""``nvr verify-archive``: re-hash archived objects, walk their chains, report missing, modified or unlocked ones.

Works from the station's record of what it archived (``archive_objects`` in the
index) and the store itself: each recorded version must still exist, be locked
until at least the recorded date, hash to the segment's SHA-256, and carry
metadata whose chain links follow each other per camera (and, where the
segment's index fields are in the metadata, recompute to its chain hash: the
archive alone proves the order).  Blocking; run it from the CLI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from nvr.base.timeutil import iso
from recorder.archive import ArchivedObject
from recorder.archive_store import META_CHAIN, META_PREV, META_SEGMENT, META_SHA256, ArchiveError, ArchiveStore
from recorder.archive_store import decode_fields as decode_segment_fields
from recorder.index import NewSegment, chain_hash


@dataclass(slots=True)
class ArchiveReport:
    checked: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify_archive(store: ArchiveStore, objects: list[ArchivedObject], now: float | None = None) -> ArchiveReport:
    now = time.time() if now is None else now
    report = ArchiveReport()
    previous: dict[str, ArchivedObject] = {}
    # In chain (insertion) order: footage backfilled from a camera's card is inserted after later times.
    for obj in sorted(objects, key=lambda o: (o.camera, o.segment_id)):
        report.checked += 1
        where = f"{obj.key} (camera {obj.camera}, {iso(obj.start)}, version {obj.version_id})"
        before = previous.get(obj.camera)
        if before is not None and obj.prev_chain != before.chain_hash:
            report.notes.append(f"{where}: the segment before it in the chain is not in the archive "
                                "(never archived, or deleted locally before it could be)")
        previous[obj.camera] = obj
        try:
            info = store.head(obj.key, obj.version_id)
        except ArchiveError as exc:
            if exc.code != "not_found":
                report.failures.append(f"{where}: cannot be checked: {exc}")
                continue
            others = _other_versions(store, obj)
            if others:
                report.failures.append(f"MODIFIED {where}: the archived version is gone and the key now holds "
                                       f"other content (version {', '.join(others)})")
            else:
                report.failures.append(f"MISSING {where}: not in the archive")
            continue
        if info.lock_mode is None or info.retain_until is None:
            report.failures.append(f"UNLOCKED {where}: the version has no Object Lock retention")
        elif info.retain_until + 1 < obj.retain_until:
            report.failures.append(f"UNLOCKED {where}: retention shortened to {iso(info.retain_until)} "
                                   f"(set to {iso(obj.retain_until)})")
        elif info.retain_until < now:
            report.notes.append(f"{where}: its lock ended at {iso(info.retain_until)}")
        meta = info.metadata
        if meta.get(META_SHA256) != obj.sha256 or meta.get(META_CHAIN) != obj.chain_hash \
                or meta.get(META_PREV) != obj.prev_chain:
            report.failures.append(f"MODIFIED {where}: its metadata (SHA-256 or chain links) differs from the index")
        encoded = meta.get(META_SEGMENT)
        if encoded:
            try:
                fields = decode_segment_fields(encoded)
                recomputed = chain_hash(str(meta.get(META_PREV, "")), NewSegment(**fields))
            except (ValueError, TypeError) as exc:
                report.failures.append(f"MODIFIED {where}: unreadable segment fields in its metadata ({exc})")
            else:
                if recomputed != meta.get(META_CHAIN):
                    report.failures.append(f"MODIFIED {where}: its segment fields do not hash to its chain link")
        try:
            digest, size = store.hash_version(obj.key, obj.version_id)
        except ArchiveError as exc:
            report.failures.append(f"{where}: cannot be read back: {exc}")
            continue
        if digest != obj.sha256 or size != obj.bytes:
            report.failures.append(f"MODIFIED {where}: {size} bytes with SHA-256 {digest}, recorded {obj.bytes} "
                                   f"bytes {obj.sha256}")
    return report


def _other_versions(store: ArchiveStore, obj: ArchivedObject) -> list[str]:
    try:
        return [version for key, version, _latest in store.versions(obj.key) if key == obj.key]
    except ArchiveError:
        return []
