"""The fleet: every followed station, merged into what the central monitoring room sees.

:class:`Fleet` owns one :class:`~central.station_link.StationLink` per
configured station and turns their states into JSON: stations with
reachability and counts, cameras grouped by station with their open alarms,
and one merged alarm list (critical first, holding cells first among equals,
newest first).  An unreachable station adds a console-side critical alarm
``station_unreachable`` to the merged list.  Camera allow-lists of console
users name cameras ``STATION/CAMERA`` (or ``STATION/*``), since camera ids
are unique only within a station.  Listeners (the console's SSE
streams) get every change; they must not block.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from central.config import ConsoleConfig
from central.station_link import Reachability, StationLink
from central.witness import Witness
from nvr.base.timeutil import iso
from nvr.identity.roles import Identity
from web.access import may_see, station_camera
from web.schema import AlarmView

log = logging.getLogger(__name__)

FleetListener = Callable[[str, dict[str, Any]], None]
_CAMERA_FIELDS = ("id", "name", "zone", "state", "state_reason", "state_message", "state_changed_at", "codec",
                  "width", "height", "fps", "recording", "recording_error", "last_packet_at")


class Fleet:
    def __init__(self, config: ConsoleConfig, witness: Witness | None = None) -> None:
        self.config = config
        self.links: dict[str, StationLink] = {
            s.id: StationLink(s, config.follow, config.console.id, self._changed, witness) for s in config.stations
        }
        self.listeners: list[FleetListener] = []

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    async def stop(self) -> None:
        import asyncio

        await asyncio.gather(*(link.stop() for link in self.links.values()))

    # -- changes --------------------------------------------------------------------------

    def _changed(self, link: StationLink, kind: str, payload: Any) -> None:
        events: list[tuple[str, dict[str, Any]]] = []
        if kind in ("opened", "closed") and isinstance(payload, AlarmView):
            events.append((f"alarm.{kind}", {"station": link.id, "alarm": self._alarm_json(link, payload)}))
        events.append(("station", {"station": link.id}))
        for listener in list(self.listeners):
            for name, body in events:
                try:
                    listener(name, body)
                except Exception:
                    log.warning("fleet listener failed", exc_info=True)

    # -- views ----------------------------------------------------------------------------

    def _camera_info(self, link: StationLink) -> dict[str, dict[str, Any]]:
        return {c.id: {"name": c.name, "zone": c.zone} for c in link.state.cameras}

    def _alarm_json(self, link: StationLink, alarm: AlarmView) -> dict[str, Any]:
        camera = self._camera_info(link).get(alarm.camera or "", {})
        return {
            **alarm.model_dump(),
            "station": link.id,
            "station_name": link.config.display_name,
            "camera_name": camera.get("name"),
            "zone": camera.get("zone"),
        }

    def station_json(self, station_id: str, who: Identity | None = None) -> dict[str, Any]:
        link = self.links[station_id]
        state = link.state
        stale = state.reachability is not Reachability.REACHABLE
        alarms = [a for a in link.open_alarms() if may_see(who, station_camera(link.id, a.camera))]
        by_camera: dict[str | None, list[dict[str, Any]]] = {}
        for alarm in alarms:
            by_camera.setdefault(alarm.camera, []).append(self._alarm_json(link, alarm))
        cameras = []
        for camera in state.cameras:
            if not may_see(who, station_camera(link.id, camera.id)):
                continue
            body = {name: getattr(camera, name) for name in _CAMERA_FIELDS}
            body["stale"] = stale  # the last state the station reported, while it cannot be asked
            body["open_alarms"] = by_camera.get(camera.id, [])
            cameras.append(body)
        states = [c["state"] for c in cameras]
        return {
            "id": link.id,
            "name": link.config.display_name,
            "url": link.config.url,
            **link.json_state(),
            "counts": {
                "cameras": len(cameras),
                "online": states.count("online"),
                "offline": states.count("offline"),
                "other": len(states) - states.count("online") - states.count("offline"),
                "alarms_open": len(alarms),
                "critical_open": sum(1 for a in alarms if a.severity == "critical"),
            },
            "station_alarms": by_camera.get(None, []),
            "cameras": cameras,
        }

    def fleet_json(self, who: Identity | None = None) -> dict[str, Any]:
        stations = [self.station_json(sid, who) for sid in self.links]
        return {
            "console": {"id": self.config.console.id, "name": self.config.console.name},
            "generated_at": iso(time.time()),
            "totals": {
                "stations": len(stations),
                "reachable": sum(1 for s in stations if s["reachable"]),
                "cameras": sum(s["counts"]["cameras"] for s in stations),
                "online": sum(s["counts"]["online"] for s in stations),
                "alarms_open": sum(s["counts"]["alarms_open"] for s in stations),
                "critical_open": sum(s["counts"]["critical_open"] for s in stations),
            },
            "stations": stations,
        }

    def alarms_json(self, who: Identity | None = None) -> list[dict[str, Any]]:
        """Every open alarm of the fleet, most urgent first."""
        merged: list[dict[str, Any]] = []
        for link in self.links.values():
            state = link.state
            if state.reachability is Reachability.UNREACHABLE:
                problem = state.problem
                merged.append({
                    "id": f"console:{link.id}:unreachable", "camera": None, "type": "station_unreachable",
                    "severity": "critical", "opened_at": iso(state.since), "closed_at": None, "open": True,
                    "details": {"reason": problem.reason.value if problem else None,
                                "message": problem.message if problem else None},
                    "station": link.id, "station_name": link.config.display_name, "camera_name": None,
                    "zone": None,
                })
            merged += [self._alarm_json(link, a) for a in link.open_alarms()
                       if may_see(who, station_camera(link.id, a.camera))]
        merged.sort(key=lambda a: a["opened_at"] or "", reverse=True)
        merged.sort(key=lambda a: (a["severity"] != "critical", a["zone"] != "holding_cell"))
        return merged
