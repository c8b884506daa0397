"""Sign-in rate limiting per user name and per client address, with a temporary lockout.

An attempt is counted *before* its password is checked: :meth:`LoginThrottle.begin`
reserves a slot for the user name and for the address synchronously (no
``await`` between the check and the count), and an attempt still being
checked counts as a failure until it is known to be right.  So however many
guesses arrive at once, at most ``max_per_user`` of them are ever evaluated
for a name in one window (and ``max_per_address`` from an address); the rest
answer 429 at once.  A bound on the attempts being checked at once across
all names and addresses (``max_pending``, 503 over it) keeps a sign-in flood
from queueing unbounded work on the Argon2 pool.

Kept in memory (one daemon per station): a restart clears it, which costs an
attacker a restart of the daemon they cannot trigger.  Unknown user names
count like known ones, so the lockout does not reveal which names exist.
The number of tracked keys is bounded.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from types import TracebackType

from web.slots import LimitReached

_MAX_KEYS = 10_000


@dataclass(slots=True)
class _Track:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    pending: int = 0  # attempts being checked now


class LoginAttempt:
    """A reserved sign-in attempt: say how it ended with :meth:`failed` or :meth:`succeeded`.

    Used as a context manager, an attempt that ends any other way (the client
    went away during the password check, an error) counts as failed.
    """

    __slots__ = ("_throttle", "_user", "_address", "_done")

    def __init__(self, throttle: LoginThrottle, user: str, address: str) -> None:
        self._throttle = throttle
        self._user = user
        self._address = address
        self._done = False

    def failed(self, now: float | None = None) -> None:
        if self._finish():
            self._throttle._failed(self._user, self._address, time.monotonic() if now is None else now)

    def succeeded(self) -> None:
        if self._finish():
            self._throttle._succeeded(self._user)

    def _finish(self) -> bool:
        if self._done:
            return False
        self._done = True
        self._throttle._release(self._user, self._address)
        return True

    def __enter__(self) -> LoginAttempt:
        return self

    def __exit__(self, _kind: type[BaseException] | None, _value: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.failed()


class LoginThrottle:
    def __init__(self, max_per_user: int, max_per_address: int, window_seconds: float,
                 lockout_seconds: float, max_pending: int = 1_000_000) -> None:
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.window = window_seconds
        self.lockout = lockout_seconds
        self.max_pending = max_pending
        self.pending = 0
        self.refused: Counter[str] = Counter()  # "locked" (a name or address over its limit), "busy"
        self._users: dict[str, _Track] = {}
        self._addresses: dict[str, _Track] = {}

    def retry_after(self, user: str, address: str, now: float | None = None) -> float:
        """Seconds until a login for ``user`` from ``address`` is accepted again; 0: now."""
        now = time.monotonic() if now is None else now
        waits = [t.locked_until - now for t in (self._users.get(user.lower()), self._addresses.get(address)) if t]
        return max([0.0, *waits])

    def begin(self, user: str, address: str, now: float | None = None) -> LoginAttempt:
        """Reserve an attempt for ``user`` from ``address``, or raise :class:`LimitReached` (429 or 503)."""
        now = time.monotonic() if now is None else now
        user = user.lower()
        wait = self.retry_after(user, address, now)
        if wait > 0:
            self.refused["locked"] += 1
            raise LimitReached(429, "login_locked", f"too many failed logins; try again in {wait:.0f} s",
                               retry_after=int(wait) + 1)
        if self.pending >= self.max_pending:
            self.refused["busy"] += 1
            raise LimitReached(503, "login_busy", "too many sign-ins are being checked at once; try again shortly",
                               retry_after=1)
        tracks = ((self._users, user, self.max_per_user), (self._addresses, address, self.max_per_address))
        for table, key, limit in tracks:
            track = table.get(key)
            if track is not None:
                self._expire(track, now)
                if len(track.failures) + track.pending >= limit:
                    # The attempts already being checked would use up the limit if they all fail.
                    self.refused["locked"] += 1
                    raise LimitReached(429, "login_locked", "too many sign-in attempts at once; try again in 1 s",
                                       retry_after=1)
        for table, key, _ in tracks:
            self._track(table, key, now).pending += 1
        self.pending += 1
        return LoginAttempt(self, user, address)

    # -- internals ------------------------------------------------------------------------

    def _release(self, user: str, address: str) -> None:
        self.pending -= 1
        for table, key in ((self._users, user), (self._addresses, address)):
            track = table.get(key)
            if track is not None and track.pending > 0:
                track.pending -= 1

    def _failed(self, user: str, address: str, now: float) -> None:
        self._count(self._users, user, self.max_per_user, now)
        self._count(self._addresses, address, self.max_per_address, now)

    def _succeeded(self, user: str) -> None:
        track = self._users.get(user)
        if track is not None:
            track.failures.clear()

    def _track(self, tracks: dict[str, _Track], key: str, now: float) -> _Track:
        track = tracks.get(key)
        if track is None:
            if len(tracks) >= _MAX_KEYS:
                self._prune(tracks, now)
            track = tracks[key] = _Track()
        return track

    def _expire(self, track: _Track, now: float) -> None:
        while track.failures and track.failures[0] < now - self.window:
            track.failures.popleft()

    def _count(self, tracks: dict[str, _Track], key: str, limit: int, now: float) -> None:
        track = self._track(tracks, key, now)
        track.failures.append(now)
        self._expire(track, now)
        if len(track.failures) >= limit:
            track.locked_until = now + self.lockout
            track.failures.clear()

    def _prune(self, tracks: dict[str, _Track], now: float) -> None:
        for key in [k for k, t in tracks.items() if not t.pending and t.locked_until < now and (
                not t.failures or t.failures[-1] < now - self.window)]:
            del tracks[key]
        # Still full of live entries: forget the oldest idle ones (never one with attempts being checked).
        for key in [k for k, t in tracks.items() if not t.pending][: max(0, len(tracks) - _MAX_KEYS + 1)]:
            del tracks[key]
