"""The export queue: bounded, one package built at a time, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from recorder.export import ExportRequest, build_package
from recorder.index import SegmentIndex
from recorder.keys import StationKey
from recorder.search import GapExplainer
from recorder.storage import INDEX_FILE

log = logging.getLogger(__name__)

EXPORT_DIR = "exports"


class QueueFull(Exception):
    pass


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(slots=True)
class ExportJob:
    id: str
    request: ExportRequest
    created_at: float
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    error: str | None = None
    finished_at: float | None = None
    path: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    explain: GapExplainer | None = None


class ExportQueue:
    def __init__(
        self,
        root: Path,
        key: StationKey,
        station: dict[str, str],
        camera_info: dict[str, dict[str, str]],
        max_jobs: int,
        on_done: Callable[[ExportJob], None] | None = None,
    ) -> None:
        self.root = root
        self.key = key
        self.station = station
        self.camera_info = camera_info
        self.max_jobs = max_jobs
        self.on_done = on_done
        self.jobs: dict[str, ExportJob] = {}
        self._pending: asyncio.Queue[ExportJob] = asyncio.Queue()

    def submit(self, request: ExportRequest, explain: GapExplainer | None = None) -> ExportJob:
        active = sum(1 for j in self.jobs.values() if j.state in (JobState.QUEUED, JobState.RUNNING))
        if active >= self.max_jobs:
            raise QueueFull(f"{active} exports are already queued or running; try again later")
        job = ExportJob(id=uuid.uuid4().hex, request=request, created_at=time.time(), explain=explain)
        self.jobs[job.id] = job
        self._pending.put_nowait(job)
        return job

    async def run(self) -> None:
        while True:
            job = await self._pending.get()
            job.state = JobState.RUNNING
            loop = asyncio.get_running_loop()

            def progress(value: float, job: ExportJob = job, loop: asyncio.AbstractEventLoop = loop) -> None:
                loop.call_soon_threadsafe(setattr, job, "progress", round(value, 3))

            try:
                manifest = await asyncio.to_thread(self._build, job, progress)
            except Exception as exc:
                log.error("export %s failed", job.id, exc_info=True)
                job.state, job.error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
            else:
                job.state, job.progress = JobState.DONE, 1.0
                job.summary = {
                    "segments": sum(len(c["segments"]) for c in manifest["cameras"]),
                    "bytes": job.path.stat().st_size if job.path else 0,
                }
            job.finished_at = time.time()
            if self.on_done is not None:
                self.on_done(job)

    def _build(self, job: ExportJob, progress: Callable[[float], None]) -> dict[str, Any]:
        # A connection of its own: SQLite in WAL mode lets it read while the recorder writes.
        index = SegmentIndex(self.root / INDEX_FILE)
        output = self.root / EXPORT_DIR / f"{job.id}.zip"
        try:
            manifest = build_package(
                root=self.root, index=index, key=self.key, station=self.station, camera_info=self.camera_info,
                request=job.request, output=output, now=time.time(), explain=job.explain, progress=progress,
            )
        finally:
            index.close()
        job.path = output
        return manifest
