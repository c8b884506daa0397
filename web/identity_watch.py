"""Long-lived streams end when the identity that opened them does.

An event feed (SSE) or a live video session outlives the request that
opened it, so the per-request check of access control is not enough: a
user who logs out, whose session expires, who is removed with ``nvr user
remove`` (or whose password is changed), or whose token is revoked must
stop receiving at once.  :class:`IdentityWatch` keeps every open stream with
the identity that opened it and, every ``interval`` seconds, asks the auth
database in one call (on its thread) which of those identities have ended;
the streams of each ended identity are closed with the reason (``logout``,
``session expired``, ``session ended``, ``user removed``, ``token revoked``).
A logout in this process closes that session's streams at once.

The database is asked only while streams are open.  Closers run on the
event loop; one that returns an awaitable (a WHEP session's close) is
awaited by the watch, and a closer that fails is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nvr.identity.authdb import AuthDatabase, digest
from nvr.identity.roles import Identity

log = logging.getLogger(__name__)

Closer = Callable[[str], Awaitable[object] | None]
IdentityKey = tuple[str, str]  # ("session", id hash) | ("token", token name)
TOKEN_PREFIX = "token:"


def identity_key(who: Identity) -> IdentityKey | None:
    """What the database knows this identity by; None for identities it does not hold."""
    if who.kind == "session" and who.session_hash:
        return ("session", who.session_hash)
    if who.kind == "token" and who.name.startswith(TOKEN_PREFIX):
        return ("token", who.name[len(TOKEN_PREFIX):])
    return None


def session_key(session_id: str) -> IdentityKey:
    return ("session", digest(session_id))


@dataclass(eq=False, slots=True)
class _Watched:
    key: IdentityKey
    user: str
    close: Closer
    what: str
    closed: bool = field(default=False)


class IdentityWatch:
    def __init__(self, db: AuthDatabase, idle_seconds: float, max_seconds: float, interval: float) -> None:
        self.db = db
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.interval = interval
        self._watched: dict[IdentityKey, set[_Watched]] = {}
        self._closing: set[asyncio.Future[object]] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed_total = 0

    def watch(self, who: Identity | None, what: str, close: Closer) -> Callable[[], None]:
        """Close this stream (``what``, for the log) when ``who`` ends; returns the function that unwatches it."""
        key = identity_key(who) if who is not None else None
        if key is None:
            return lambda: None
        entry = _Watched(key, who.name if who is not None else "?", close, what)
        self._watched.setdefault(key, set()).add(entry)

        def unwatch() -> None:
            entries = self._watched.get(key)
            if entries is not None:
                entries.discard(entry)
                if not entries:
                    del self._watched[key]

        return unwatch

    @property
    def open_streams(self) -> int:
        return sum(len(entries) for entries in self._watched.values())

    def end(self, key: IdentityKey, reason: str) -> None:
        """The identity ended in this process (logout): close its streams now."""
        for entry in list(self._watched.pop(key, ())):
            self._close(entry, reason)

    def _close(self, entry: _Watched, reason: str) -> None:
        if entry.closed:
            return
        entry.closed = True
        self.closed_total += 1
        log.info("closing %s of %s: %s", entry.what, entry.user, reason)
        try:
            result = entry.close(reason)
        except Exception:
            log.warning("closing %s of %s failed", entry.what, entry.user, exc_info=True)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._closing.add(task)
            task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Future[object]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing a stream failed", exc_info=task.exception())

    async def check(self) -> None:
        """Close the streams of every identity that has ended (one database call)."""
        if not self._watched:
            return
        sessions = {k[1]: next(iter(v)).user for k, v in self._watched.items() if k[0] == "session" and v}
        tokens = {k[1] for k in self._watched if k[0] == "token"}
        ended = await self.db.call(self.db.ended_identities, sessions, tokens, self.idle_seconds, self.max_seconds)
        for key, reason in ended.items():
            self.end(key, reason)

    async def run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:
                # The first failure is a warning; repeats (every interval) only debug, never a log flood.
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "checking the identities of open streams failed", exc_info=True)
                failing = True
            else:
                if failing:
                    log.info("checking the identities of open streams works again")
                failing = False

    def start(self) -> None:
        """Run the check loop (idempotent); :meth:`stop` ends it."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="identity-watch")

    async def stop(self) -> None:
        """End the check loop and wait for streams being closed. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        await asyncio.gather(*(t for t in (task,) if t is not None), *self._closing, return_exceptions=True)
