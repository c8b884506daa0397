"""What the web layer needs from whoever runs it, declared here, where it is used.

``web`` never imports the wiring (:mod:`nvr.station`, :mod:`nvr.recording`):
the station satisfies these interfaces structurally, and a handler test can
satisfy them with only what that handler reads.  The central console serves
its pages with the same access control through :class:`AccessPort`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nvr.base.config import Auth, Config, Web
from nvr.health.monitor import HealthMonitor
from nvr.identity.audit import AuditLog
from nvr.identity.authdb import AuthDatabase
from recorder.bodycam import BodycamIngest
from recorder.export_jobs import ExportQueue
from recorder.index import SegmentIndex
from recorder.keys import StationKey
from recorder.recorder import Recorder
from streams.camera import CameraStreams

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from recorder.archive import Archiver
    from recorder.backfill import Backfill


class AccessSettings(Protocol):
    @property
    def auth(self) -> Auth: ...

    @property
    def web(self) -> Web: ...


class AccessPort(Protocol):
    """What access control (:mod:`web.access`) reads: the station's or the console's."""

    @property
    def auth(self) -> AuthDatabase: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def config(self) -> AccessSettings: ...


class RecordingPort(Protocol):
    """The recording storage and what lives on it; ``index`` is None while the storage is refused."""

    @property
    def index(self) -> SegmentIndex | None: ...

    @property
    def exports(self) -> ExportQueue | None: ...

    @property
    def key(self) -> StationKey | None: ...

    @property
    def error(self) -> str | None: ...

    @property
    def root(self) -> Path: ...

    @property
    def recorders(self) -> Mapping[str, Recorder]: ...

    @property
    def archiver(self) -> Archiver | None: ...

    @property
    def bodycams(self) -> BodycamIngest | None:
        """Body-camera uploads into this storage (issue 15); None while the storage is refused."""

    @property
    def backfill(self) -> Backfill | None:
        """Gaps retrieved from cameras' own cards (issue 17); None without cameras that allow it."""


class StationPort(Protocol):
    """What the station's HTTP API reads."""

    @property
    def config(self) -> Config: ...

    @property
    def cameras(self) -> Mapping[str, CameraStreams]: ...

    @property
    def auth(self) -> AuthDatabase: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def health(self) -> HealthMonitor: ...

    @property
    def recording(self) -> RecordingPort: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def started_at(self) -> float: ...

    def problem(self) -> str | None: ...
