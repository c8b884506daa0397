"""``nvr console``: wiring and lifecycle of the central console (no cameras, no footage).

:class:`Console` is what :func:`nvr.service.run` runs for the console, as
:class:`nvr.station.Daemon` is for a station: the same runner gives both TLS,
connection limits, signals, systemd readiness and the watchdog.
"""

from __future__ import annotations

import asyncio
import logging

from central.app import ConsoleRuntime
from central.config import ConsoleConfig
from nvr.base.config import Web

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 10.0


class Console:
    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self.runtime = ConsoleRuntime(config)

    @property
    def name(self) -> str:
        return f"console {self.config.console.id} ({len(self.config.stations)} station(s))"

    @property
    def web_settings(self) -> Web:
        return self.config.web

    @property
    def camera_streams(self) -> int:
        return 0  # the console holds no RTSP sessions: video goes from the stations to the browsers

    @property
    def registry(self) -> None:
        return None

    async def start(self) -> None:
        runtime, config = self.runtime, self.config
        try:
            head = await runtime.auth.call(runtime.audit.head)
        except Exception as exc:  # noqa: BLE001 - any database failure stops the console here, loudly
            log.critical("the console's auth database %s cannot be opened: %s", runtime.auth.path, exc)
            raise SystemExit(1) from None
        log.info("audit log head: entry %d, hash %s", *head)
        runtime.audit.record("console.start", actor="system", console=config.console.id,
                             stations=[s.id for s in config.stations])

    async def serving(self) -> None:
        self.runtime.fleet.start()

    def problem(self) -> str | None:
        return None

    async def stop(self, timeout: float) -> None:
        runtime = self.runtime
        await runtime.fleet.stop()
        await asyncio.to_thread(runtime.witness.close)
        runtime.audit.record("console.stop", actor="system")
        await asyncio.to_thread(runtime.auth.close)
