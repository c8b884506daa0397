"""Long-lived tasks of a service: started by name, restarted after a crash, stopped in explicit phases.

Each component starts its tasks through :meth:`Supervisor.spawn` and says in
which :class:`Phase` it stops:

- :attr:`Phase.FINISH`: the component is told to stop (``source.stop()``,
  ``recorder.stop()``) and finishes by itself: sources end their sessions,
  recorders close and index their open segments.  The supervisor waits for
  these, up to the stop timeout;
- :attr:`Phase.CANCEL`: queues, monitors, loops that hold nothing to finish:
  cancelled after the FINISH tasks are done.

A task that returns is done; one that raises is logged with its traceback and
started again after a pause.  :meth:`dead` is what the watchdog looks at.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import Enum

log = logging.getLogger(__name__)

RESTART_PAUSE_SECONDS = 2.0


class Phase(Enum):
    FINISH = "finish"
    CANCEL = "cancel"


class Supervisor:
    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[None], Phase] = {}
        self.stopping = False

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], phase: Phase = Phase.CANCEL
              ) -> asyncio.Task[None]:
        """Run ``factory()`` as a task named ``name``; restart it if it crashes, until stop()."""
        task = asyncio.get_running_loop().create_task(self._supervise(name, factory), name=name)
        self._tasks[task] = phase
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        while not self.stopping:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.error("%s crashed; restarting in %.0f s", name, RESTART_PAUSE_SECONDS, exc_info=True)
                await asyncio.sleep(RESTART_PAUSE_SECONDS)

    def dead(self) -> list[str]:
        """Names of tasks that ended though nobody asked them to (the watchdog must not be fed)."""
        if self.stopping:
            return ["stopping"]
        return [t.get_name() for t in self._tasks if t.done()]

    async def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the FINISH tasks (already told to stop), then cancel the rest."""
        self.stopping = True
        finishing = {t for t, phase in self._tasks.items() if phase is Phase.FINISH}
        if finishing:
            _, late = await asyncio.wait(finishing, timeout=timeout)
            for task in late:
                log.warning("%s did not finish within %.0f s; cancelling it", task.get_name(), timeout)
        pending = {t for t in self._tasks if not t.done()}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
