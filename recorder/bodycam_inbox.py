"""The body-camera inbox: a folder a dock that can only copy files copies them into.

Files named ``<device>_<anything>.mp4`` (or ``.mkv``) are taken like an upload
(:class:`recorder.bodycam.BodycamIngest`).  The rules:

- a file is taken only once its size, mtime and inode stayed the same for
  ``stable_seconds`` (a dock still copying it is waited for);
- it is then moved to ``<inbox>/.taking/`` (so a dock writing a new file of
  the same name cannot replace it under us), copied into the storage and
  hashed, and its size, mtime and inode are compared with those it had before
  the copy: a file changed while it was read (written through a descriptor
  still open) goes back to the inbox and is waited for again;
- once stored, fsynced and indexed, the inbox copy is removed (the stored copy
  has the same SHA-256);
- a file that is refused (not a video, cut short, unknown device, a name
  that is not ``<device>_...``) goes to the quarantine folder with
  ``<name>.reason.json`` beside it, and the quarantine callback raises the
  alarm.  Nothing is ever deleted unless it was stored: evidence is never
  thrown away.

Dot files (a copy in progress by rsync or scp) are ignored.  The loop runs on
the event loop; listing, copying and moving run in threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from nvr.base.config import BodycamInbox as InboxSettings
from nvr.base.timeutil import iso
from recorder.bodycam import BodycamIngest, Provenance, Staged, UploadRejected
from recorder.index import SegmentRecord
from recorder.storage import fsync_dir

log = logging.getLogger(__name__)

TAKING = ".taking"
SUFFIXES = (".mp4", ".mkv")
_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class Quarantined:
    name: str
    device: str | None
    code: str
    message: str
    path: Path


Stamp = tuple[int, int, int]  # size, mtime_ns, inode


class FileChanged(Exception):
    """The file changed while it was read: it is waited for again."""


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def device_of(name: str, devices: Collection[str]) -> str | None:
    """The configured device a file name starts with (``<device>_``); the longest wins (ids may hold '_')."""
    matches = [d for d in devices if name.startswith(d + "_") and len(name) > len(d) + 1]
    return max(matches, key=len) if matches else None


class BodycamInboxWatcher:
    def __init__(self, settings: InboxSettings, ingest: BodycamIngest, devices: Collection[str],
                 on_quarantine: Callable[[Quarantined], None] | None = None,
                 on_taken: Callable[[str, SegmentRecord, bool, str], None] | None = None) -> None:
        self.settings = settings
        self.inbox = settings.path
        self.quarantine = settings.quarantine
        self.ingest = ingest
        self.devices = frozenset(devices)
        self.on_quarantine = on_quarantine
        self.on_taken = on_taken
        self._seen: dict[str, tuple[Stamp, float]] = {}
        self.stopping = False
        self.taken_total = 0
        self.quarantined_total = 0

    def prepare(self) -> None:
        """Create the folders; put back files an interrupted run was taking (thread)."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.quarantine.mkdir(parents=True, exist_ok=True)
        taking = self.inbox / TAKING
        taking.mkdir(exist_ok=True)
        for path in taking.iterdir():
            if path.is_file() and not path.is_symlink():
                target = self._free_name(self.inbox, path.name)
                os.replace(path, target)
                log.warning("inbox: %s was being taken when the daemon stopped; it is taken again", target.name)

    async def run(self) -> None:
        await asyncio.to_thread(self.prepare)
        while not self.stopping:
            try:
                await self.scan()
            except Exception:
                log.error("inbox %s: scan failed", self.inbox, exc_info=True)
            await asyncio.sleep(self.settings.scan_seconds)

    def stop(self) -> None:
        self.stopping = True

    def _list(self) -> dict[str, Stamp]:
        found: dict[str, Stamp] = {}
        with os.scandir(self.inbox) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                found[entry.name] = _stamp(entry.stat(follow_symlinks=False))
        return found

    async def scan(self) -> int:
        """Look once; take every file that has been stable long enough.  Returns how many were handled."""
        listing = await asyncio.to_thread(self._list)
        now = time.monotonic()
        for gone in set(self._seen) - set(listing):
            del self._seen[gone]
        handled = 0
        for name, stamp in sorted(listing.items()):
            seen = self._seen.get(name)
            if seen is None or seen[0] != stamp:
                self._seen[name] = (stamp, now)
                if self.settings.stable_seconds > 0:
                    continue
                seen = (stamp, now)
            if now - seen[1] < self.settings.stable_seconds:
                continue
            if self.ingest.active >= self.ingest.settings.max_concurrent:
                break  # uploads have the slots; the next scan takes it
            del self._seen[name]
            await self.take(name, stamp)
            handled += 1
        return handled

    async def take(self, name: str, stamp: Stamp) -> None:
        device = device_of(name, self.devices)
        if not name.lower().endswith(SUFFIXES):
            await self._quarantine(name, device, "unsupported_name",
                                   "the name must be <device>_<anything>.mp4 or .mkv")
            return
        if device is None:
            await self._quarantine(name, None, "unknown_device", "the name does not start with a configured "
                                   "body camera id followed by '_'")
            return
        source = self.inbox / TAKING / name
        try:
            await asyncio.to_thread(self._claim, name, stamp, source)
        except FileChanged:
            return
        try:
            with self.ingest.slot():
                staged = await asyncio.to_thread(self.ingest.store.stage)
                try:
                    await asyncio.to_thread(self._copy, source, stamp, staged)
                except BaseException:
                    await asyncio.to_thread(staged.discard)
                    raise
                record, created = await self.ingest.finish(device, staged, None, None, None,
                                                           Provenance("inbox", name))
        except FileChanged:
            log.info("inbox: %s changed while it was read; waiting until it is stable", name)
            await asyncio.to_thread(self._put_back, source, name)
            return
        except UploadRejected as exc:
            if exc.status == 503 and exc.code != "storage_error":  # busy: try again next time, not quarantine
                await asyncio.to_thread(self._put_back, source, name)
                return
            await self._quarantine(name, device, exc.code, str(exc), source)
            return
        except OSError as exc:
            log.error("inbox: %s could not be taken (%s); it stays in the inbox", name, exc.strerror)
            await asyncio.to_thread(self._put_back, source, name)
            return
        await asyncio.to_thread(source.unlink)  # stored, fsynced and indexed with the same SHA-256
        self.taken_total += 1
        if self.on_taken is not None:
            self.on_taken(device, record, created, name)

    # -- threads --------------------------------------------------------------------------------

    def _claim(self, name: str, stamp: Stamp, target: Path) -> None:
        path = self.inbox / name
        st = os.stat(path, follow_symlinks=False)
        if _stamp(st) != stamp:
            raise FileChanged(name)
        if target.exists():
            raise FileChanged(name)  # a file of that name is being taken: this one waits
        os.replace(path, target)

    def _copy(self, source: Path, stamp: Stamp, staged: Staged) -> None:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            if _stamp(os.fstat(f.fileno())) != stamp:
                raise FileChanged(source.name)
            while chunk := f.read(_READ):
                staged.write(chunk)
            if _stamp(os.fstat(f.fileno())) != stamp or staged.size != stamp[0]:
                raise FileChanged(source.name)

    def _put_back(self, source: Path, name: str) -> None:
        if source.exists():
            os.replace(source, self._free_name(self.inbox, name))

    @staticmethod
    def _free_name(folder: Path, name: str) -> Path:
        target = folder / name
        counter = 1
        while target.exists() or target.with_name(target.name + ".reason.json").exists():
            target = folder / f"{Path(name).stem}.{counter}{Path(name).suffix}"
            counter += 1
        return target

    def _move_to_quarantine(self, source: Path, name: str, device: str | None, code: str, message: str) -> Path:
        target = self._free_name(self.quarantine, name)
        try:
            os.replace(source, target)
        except OSError:  # another filesystem: copy, fsync, then remove the original
            shutil.copy2(source, target)
            with target.open("rb") as f:
                os.fsync(f.fileno())
            source.unlink()
        reason = {"file": name, "device": device, "error": code, "message": message,
                  "quarantined_at": iso(time.time())}
        note = target.with_name(target.name + ".reason.json")
        note.write_text(json.dumps(reason, indent=2) + "\n", encoding="utf-8")
        with note.open("rb") as f:
            os.fsync(f.fileno())
        fsync_dir(self.quarantine)
        return target

    async def _quarantine(self, name: str, device: str | None, code: str, message: str,
                          source: Path | None = None) -> None:
        path = await asyncio.to_thread(self._move_to_quarantine, source or self.inbox / name, name, device, code,
                                       message)
        self.quarantined_total += 1
        self.ingest.rejected(code)  # finish() leaves the counting to its callers
        log.warning("inbox: %s quarantined as %s (%s): %s", name, path.name, code, message)
        if self.on_quarantine is not None:
            self.on_quarantine(Quarantined(name, device, code, message, path))
