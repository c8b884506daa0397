"""Bounded slots for long-lived streams (live sessions, event feeds): a total and a cap per user.

A slot is taken synchronously, before the handler's first ``await``, so that
any number of concurrent requests can never hold more slots than the limits
allow (checking first and counting after the awaits would let every
concurrent request through).  It is given back exactly once, whatever ends
the stream.  Over the total the answer is 503 (the server is full), over the
per-user cap 429 (this user has enough).
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType

REFUSALS = ("total", "per_user")  # which limit refused a slot (the metrics' reason label)


class LimitReached(Exception):
    """A request over a limit; carries the HTTP status and the stable error code."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Slot:
    """One taken slot; :meth:`release` is idempotent (also as a context manager on failure paths)."""

    __slots__ = ("_owner", "user")

    def __init__(self, owner: Slots, user: str) -> None:
        self._owner: Slots | None = owner
        self.user = user

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._give_back(self.user)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, kind: type[BaseException] | None, _value: BaseException | None,
                 _tb: TracebackType | None) -> None:
        if kind is not None:
            self.release()


class Slots:
    """``total`` slots in all and ``per_user`` per user key.

    Refusals answer ``too_many_<code>`` (503) and ``too_many_<code>_per_user`` (429); ``noun`` names
    the slots in messages.
    """

    def __init__(self, code: str, noun: str, total: int, per_user: int) -> None:
        self.code = code
        self.noun = noun
        self.total = total
        self.per_user = per_user
        self.in_use = 0
        self.by_user: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # by REFUSALS

    def take(self, user: str) -> Slot:
        """A slot for ``user``, or :class:`LimitReached` (no await in between: race-free)."""
        if self.in_use >= self.total:
            self.refused["total"] += 1
            raise LimitReached(503, f"too_many_{self.code}",
                               f"at most {self.total} {self.noun} at once; try again later", retry_after=5)
        if self.by_user[user] >= self.per_user:
            self.refused["per_user"] += 1
            raise LimitReached(429, f"too_many_{self.code}_per_user",
                               f"at most {self.per_user} {self.noun} per user at once; close one first",
                               retry_after=5)
        self.in_use += 1
        self.by_user[user] += 1
        return Slot(self, user)

    def _give_back(self, user: str) -> None:
        self.in_use -= 1
        self.by_user[user] -= 1
        if self.by_user[user] <= 0:
            del self.by_user[user]
