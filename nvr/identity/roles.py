"""Roles, permissions and the identity of whoever makes a request.

The role matrix lives here, once: :data:`ROLE_PERMISSIONS`.  The HTTP layer
(``web/access.py``) maps every route to one :class:`Permission`; the README's
role matrix is this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    MONITOR = "monitor"
    TECHNICIAN = "technician"
    AUDITOR = "auditor"
    ADMIN = "admin"
    # A central console's token (issue 8): a monitor that may say which central user it acts for
    # (X-NVR-Via-Console / X-NVR-Central-User, honoured for tokens of this role only; web/access.py).
    CENTRAL = "central"
    # A docking station's token (issue 15): uploads body-camera files, and nothing else.
    DOCK = "dock"


class Permission(StrEnum):
    PUBLIC = "public"  # no identity needed: /healthz, the login page, static assets
    SELF = "self"  # any signed-in identity: the console page, who am I, log out
    CAMERAS = "cameras"  # camera list and state
    ALARMS = "alarms"  # alarm history and the alarm feed
    LIVE = "live"  # live view (WHEP)
    LIVE_SESSIONS = "live_sessions"  # the list of live sessions (diagnostics)
    HEALTH = "health"  # re-learn reference views
    METRICS = "metrics"  # Prometheus /metrics (unless web.metrics_public)
    RECORDINGS = "recordings"  # search, playback page, clips, station key
    COVERAGE = "coverage"
    EXPORTS = "exports"
    HOLDS = "holds"
    AUDIT = "audit"  # read the audit log
    CHECKPOINTS = "checkpoints"  # the station's signed checkpoints, collected by a witness (the console)
    ARCHIVE = "archive"  # the off-site archive's state and backlog
    UPLOAD = "upload"  # POST a body-camera file (docks)
    CASES = "cases"  # incident cases: create, add ranges and bookmarks, export, close, history
    ASSIGNMENTS = "assignments"  # who wears which body camera when (admins)


_ALL_SIGNED_IN = {Permission.SELF, Permission.CAMERAS, Permission.ALARMS}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.MONITOR: frozenset(_ALL_SIGNED_IN | {Permission.LIVE}),
    Role.TECHNICIAN: frozenset(
        _ALL_SIGNED_IN | {Permission.LIVE_SESSIONS, Permission.HEALTH, Permission.METRICS, Permission.ARCHIVE}
    ),
    Role.AUDITOR: frozenset(
        _ALL_SIGNED_IN
        | {Permission.RECORDINGS, Permission.COVERAGE, Permission.EXPORTS, Permission.HOLDS, Permission.AUDIT,
           Permission.CHECKPOINTS, Permission.ARCHIVE, Permission.CASES}
    ),
    Role.ADMIN: frozenset(Permission),
    Role.CENTRAL: frozenset(_ALL_SIGNED_IN | {Permission.LIVE, Permission.CHECKPOINTS, Permission.ARCHIVE}),
    # Not even SELF: a dock's token leaked from a docking station opens no page and reads nothing.
    Role.DOCK: frozenset({Permission.UPLOAD}),
}


@dataclass(frozen=True, slots=True)
class Identity:
    """A signed-in user (browser session) or an API token."""

    name: str
    role: Role
    cameras: frozenset[str] | None = None  # None: every camera
    kind: str = "session"  # "session" | "token"
    session_hash: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission is Permission.PUBLIC or permission in ROLE_PERMISSIONS[self.role]

    def may_see(self, camera_id: str | None) -> bool:
        """Camera allow-list check; ``None`` is station-wide data (storage alarms), visible to all."""
        return self.cameras is None or camera_id is None or camera_id in self.cameras


def parse_cameras(text: str | None) -> frozenset[str] | None:
    """``"a,b"`` → {"a", "b"}; empty or None → None (every camera)."""
    if not text:
        return None
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    return names or None
