"""Alerts out: POST every alarm open/close as JSON to a configured webhook.

One sender per webhook with a bounded queue of its own: the alarm store hands
changes over without waiting (a full queue drops the oldest waiting change and
counts it), and a worker task delivers them in order, retrying a failed delivery
with capped exponential backoff.  A dead receiver therefore delays only its own
queue, never the daemon or other receivers.  New alarms only wake an idle
worker: during an outage they wait in the queue and never cut the backoff short
(which gave up on a burst's alarms within milliseconds); only ``stop()`` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import aiohttp

from nvr import __version__
from nvr.base import secrets
from nvr.base.config import Alerts, Webhook
from nvr.health.alarms import AlarmChange

log = logging.getLogger(__name__)


class WebhookSender:
    def __init__(self, webhook: Webhook, alerts: Alerts, station: str) -> None:
        self.webhook = webhook
        self.alerts = alerts
        self.station = station
        self.display_url = secrets.redact_url(webhook.url)
        self.delivered = 0
        self.failed = 0  # gave up after max_attempts or a permanent error
        self.dropped = 0  # queue full
        self._queue: deque[dict[str, Any]] = deque()  # waiting, not the one being delivered
        self._in_flight = False
        self._wake = asyncio.Event()  # something was queued
        self._stopped = asyncio.Event()  # ends a backoff pause at once
        self._stopping = False
        self._full_logged = False

    def submit(self, change: AlarmChange) -> None:
        """Alarm listener (loop thread): queue the change, never wait."""
        if self._stopping:
            return
        if len(self._queue) >= self.alerts.queue_size:
            self._queue.popleft()
            self.dropped += 1
            # Once per episode of a full queue: a burst must not log a line per alarm.
            level = logging.DEBUG if self._full_logged else logging.WARNING
            log.log(level, "webhook %s: queue full (%d waiting), dropping the oldest alarm changes (%d so far)",
                    self.display_url, len(self._queue), self.dropped)
            self._full_logged = True
        elif len(self._queue) < self.alerts.queue_size // 2:
            self._full_logged = False
        self._queue.append({**change.json(), "station": self.station})
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue) + (1 if self._in_flight else 0)

    def stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        self._wake.set()

    async def run(self) -> None:
        headers = {"User-Agent": f"nvr/{__version__}"}
        if self.webhook.token:
            headers["Authorization"] = f"Bearer {self.webhook.token}"
        timeout = aiohttp.ClientTimeout(total=self.webhook.timeout_seconds)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            while not self._stopping:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                payload = self._queue.popleft()
                self._in_flight = True
                try:
                    await self._deliver(session, payload)
                finally:
                    self._in_flight = False

    async def _deliver(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        delay = self.alerts.retry_initial_seconds
        for attempt in range(1, self.alerts.max_attempts + 1):
            problem = await self._post(session, payload)
            if problem is None:
                self.delivered += 1
                return
            permanent = problem.startswith("HTTP 4") and not problem.startswith("HTTP 429")
            if permanent or attempt == self.alerts.max_attempts or self._stopping:
                self.failed += 1
                log.error(
                    "webhook %s: giving up on %s after %d attempt(s): %s",
                    self.display_url,
                    payload.get("event"),
                    attempt,
                    problem,
                )
                return
            level = logging.WARNING if attempt == 1 else logging.DEBUG
            log.log(level, "webhook %s: %s; retrying in %.0f s", self.display_url, problem, delay)
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, self.alerts.retry_max_seconds)

    async def _post(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> str | None:
        try:
            async with session.post(self.webhook.url, json=payload) as response:
                await response.read()
                if response.status >= 300:
                    return f"HTTP {response.status}"
                return None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return secrets.redact(f"{type(exc).__name__}: {exc}")
