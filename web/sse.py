"""Server-Sent Events: the one loop for every event feed (the station's alarm feed, the console's fleet feed).

A feed is bounded at every step, and ends cleanly:

- a slot of ``access.event_streams`` is taken before the first await (429/503
  when the total or the user's share is used up);
- events wait in a bounded queue; a client too slow to drain it is closed
  (it reconnects and starts from a fresh snapshot) rather than buffered;
- a keepalive comment every ``keepalive_seconds`` lets proxies and clients
  tell a quiet feed from a dead one;
- it ends when the client goes, when the identity that opened it does
  (logout, expiry, removal, revocation: :class:`web.identity_watch.IdentityWatch`),
  and at shutdown (``closers``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from web.access import ACCESS, identity, limit_error
from web.slots import LimitReached

log = logging.getLogger(__name__)

QUEUE_EVENTS = 256
KEEPALIVE_SECONDS = 15.0
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    body: dict[str, Any]
    id: str | None = None

    def encode(self) -> bytes:
        head = f"id: {self.id}\n" if self.id is not None else ""
        return f"{head}event: {self.name}\ndata: {json.dumps(self.body)}\n\n".encode()


Publish = Callable[[Event], None]
# Register a publisher with the source of events; returns how to unregister it.
Subscribe = Callable[[Publish], Callable[[], None]]
# Everything drained from the queue at once → what to write (e.g. coalesced snapshots).
Batch = Callable[[list[Event]], Iterable[Event]]


async def serve(request: web.Request, feed: str, subscribe: Subscribe, initial: Callable[[], Iterable[Event]],
                closers: set[Callable[[], None]], batch: Batch | None = None,
                greeting: bytes = b"") -> web.StreamResponse:
    """Run one feed named ``feed`` (for the log) until it ends; ``initial()`` is written first."""
    access = request.app[ACCESS]
    who = identity(request)
    try:
        slot = access.event_streams.take(who.name if who is not None else "anonymous")  # before any await
    except LimitReached as limit:
        raise limit_error(limit) from None
    queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_EVENTS)
    ended = asyncio.Event()

    def publish(event: Event) -> None:
        if ended.is_set():
            return
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            log.warning("%s client too slow; closing its stream", feed)
            close()

    def close() -> None:
        if ended.is_set():
            return
        ended.set()
        unsubscribe()
        try:  # wake the writer now, not at the next keepalive (shutdown must not wait for it)
            queue.put_nowait(None)
        except asyncio.QueueFull:
            pass

    unsubscribe = subscribe(publish)
    unwatch = access.watch.watch(who, feed, lambda _reason: close())
    closers.add(close)
    response = web.StreamResponse(headers=HEADERS)
    try:
        await response.prepare(request)
        if greeting:
            await response.write(greeting)
        for event in initial():
            await response.write(event.encode())
        while not ended.is_set():
            try:
                first = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            drained = [first] + [queue.get_nowait() for _ in range(queue.qsize())]
            events = [e for e in drained if e is not None]
            if ended.is_set():
                break
            for event in batch(events) if batch is not None else events:
                await response.write(event.encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        closers.discard(close)
        close()
        unwatch()
        slot.release()
    return response


async def close_all(closers: set[Callable[[], None]]) -> None:
    """At shutdown: end every open feed."""
    for close in list(closers):
        close()
