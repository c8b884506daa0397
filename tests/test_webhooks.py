"""Alarm webhooks through a receiver outage: a burst of alarms waits, backs off, and arrives when it is back.

The story: the control room's alerting endpoint is down (restarting, or
overloaded and answering 503) exactly when a cell block's cameras go dark
and a burst of alarms opens.  None of the alarms that fit in the queue may be
given up while the receiver is away; they must all arrive, in order, once it
answers again, and the retries must respect the backoff instead of hammering.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from nvr.base.config import Alerts, Webhook
from nvr.health.alarms import Alarm, AlarmAction, AlarmChange, AlarmType, Severity
from nvr.health.webhooks import WebhookSender
from tests.conftest import free_port

QUEUE = 10


class Receiver:
    """A real HTTP receiver on loopback that can be down (not listening) or answer 503."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self.attempts = 0
        self.status = 200
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.status != 200:
            return web.json_response({"error": "overloaded"}, status=self.status)
        body = await request.json()
        self.received.append(body["alarm"]["id"])
        return web.json_response({"ok": True})

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def change(n: int) -> AlarmChange:
    alarm = Alarm(id=f"alarm-{n}", camera="cell-1", type=AlarmType.OFFLINE, severity=Severity.CRITICAL,
                  opened_at=time.time())
    return AlarmChange(AlarmAction.OPENED, alarm)


async def until(check: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.02)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r
    await r.down()


@pytest.fixture
async def sender(receiver: Receiver) -> AsyncIterator[WebhookSender]:
    alerts = Alerts(queue_size=QUEUE, retry_initial_seconds=0.2, retry_max_seconds=0.4, max_attempts=10)
    s = WebhookSender(Webhook(url=f"http://127.0.0.1:{receiver.port}/hook", timeout_seconds=2), alerts, "st-1")
    task = asyncio.create_task(s.run())
    yield s
    s.stop()
    await asyncio.wait_for(task, 5)


async def burst_while_the_first_is_retried(sender: WebhookSender, count: int) -> None:
    sender.submit(change(0))
    await until(lambda: sender.queued == 1 and sender.delivered == 0, 2, "the first alarm never went out")
    await asyncio.sleep(0.1)  # its first attempt has failed; it is in its backoff pause
    for n in range(1, count):  # cameras going dark one after another
        sender.submit(change(n))
        await asyncio.sleep(0.05)


async def test_a_burst_during_an_outage_waits_and_all_that_fit_arrive_when_the_receiver_returns(
        receiver: Receiver, sender: WebhookSender) -> None:
    await burst_while_the_first_is_retried(sender, 15)  # receiver down: connection refused
    await asyncio.sleep(1.5)
    assert sender.failed == 0, "alarms were given up while the receiver was away"
    assert sender.dropped == 15 - 1 - QUEUE  # the oldest waiting ones beyond the queue
    await receiver.up()
    await until(lambda: sender.delivered == 1 + QUEUE, 5, f"only {receiver.received} arrived")
    assert receiver.received == ["alarm-0"] + [f"alarm-{n}" for n in range(15 - QUEUE, 15)]
    assert sender.failed == 0 and sender.queued == 0


async def test_retries_against_an_overloaded_receiver_follow_the_backoff(
        receiver: Receiver, sender: WebhookSender) -> None:
    receiver.status = 503
    await receiver.up()
    started = time.monotonic()
    await burst_while_the_first_is_retried(sender, 8)
    await asyncio.sleep(1.5)
    elapsed = time.monotonic() - started
    # Pauses of 0.2, 0.4, 0.4, ... s: a handful of attempts, not one more per new alarm.
    assert receiver.attempts <= 3 + elapsed / 0.4, (receiver.attempts, elapsed)
    assert sender.failed == 0
    receiver.status = 200
    await until(lambda: sender.delivered == 8, 5, f"only {receiver.received} arrived")
    assert receiver.received == [f"alarm-{n}" for n in range(8)]
