"""Failed-login rate limiting per user name and per client address, with a temporary lockout.

Kept in memory (one daemon per station): a restart clears it, which costs an
attacker a restart of the daemon they cannot trigger.  Unknown user names
count like known ones, so the lockout does not reveal which names exist.
The number of tracked keys is bounded.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

_MAX_KEYS = 10_000


@dataclass(slots=True)
class _Track:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(self, max_per_user: int, max_per_address: int, window_seconds: float,
                 lockout_seconds: float) -> None:
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.window = window_seconds
        self.lockout = lockout_seconds
        self._users: dict[str, _Track] = {}
        self._addresses: dict[str, _Track] = {}

    def retry_after(self, user: str, address: str, now: float | None = None) -> float:
        """Seconds until a login for ``user`` from ``address`` is accepted again; 0: now."""
        now = time.monotonic() if now is None else now
        waits = [t.locked_until - now for t in (self._users.get(user.lower()), self._addresses.get(address)) if t]
        return max([0.0, *waits])

    def failed(self, user: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._count(self._users, user.lower(), self.max_per_user, now)
        self._count(self._addresses, address, self.max_per_address, now)

    def succeeded(self, user: str) -> None:
        self._users.pop(user.lower(), None)

    def _count(self, tracks: dict[str, _Track], key: str, limit: int, now: float) -> None:
        track = tracks.get(key)
        if track is None:
            if len(tracks) >= _MAX_KEYS:
                self._prune(tracks, now)
            track = tracks[key] = _Track()
        track.failures.append(now)
        while track.failures and track.failures[0] < now - self.window:
            track.failures.popleft()
        if len(track.failures) >= limit:
            track.locked_until = now + self.lockout
            track.failures.clear()

    def _prune(self, tracks: dict[str, _Track], now: float) -> None:
        for key in [k for k, t in tracks.items() if t.locked_until < now and (
                not t.failures or t.failures[-1] < now - self.window)]:
            del tracks[key]
        while len(tracks) >= _MAX_KEYS:  # still full of live entries: forget the oldest
            tracks.pop(next(iter(tracks)))
