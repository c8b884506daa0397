"""A camera's own recordings (ONVIF Profile G): which of them cover a time range, and where to replay them.

One short ONVIF session per question, beside the camera's long-lived
:class:`streams.onvif.OnvifLink` (whose event long-poll it never waits for):
``GetServices`` (a camera offers edge storage when it lists both the search
and the replay service; one that does not is :attr:`EdgeReason.NO_PROFILE_G`),
``GetRecordingSummary``, ``FindRecordings`` and ``GetRecordingSearchResults``
until the search is ``Completed`` (bounded), ``EndSearch``, then
``GetReplayUri`` for each recording that overlaps the range.  Times here are
the camera's clock; turning them into the station's is the caller's job (it
knows the measured clock offset).  Every request is bounded by
``onvif.timeout_seconds`` and every answer by the link's 4 MB read limit;
failures are :class:`EdgeError` with a reason and a secret-free message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nvr.base import secrets
from nvr.base.config import Onvif
from streams.onvif import REPLAY_NS, SEARCH_NS, DeviceAddress, _bounded_camera_class, classify

_MAX_RECORDINGS = 100
_MAX_RESULT_ROUNDS = 20  # GetRecordingSearchResults calls before a search that never completes is given up


class EdgeReason(StrEnum):
    NO_PROFILE_G = "no_profile_g"  # the camera offers no search/replay services (no edge storage)
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth_failed"
    SOAP_FAULT = "soap_fault"
    BAD_ANSWER = "bad_answer"


class EdgeError(secrets.ReasonedError[EdgeReason]):
    """Why searching the card failed (``reason``) and what to tell the technician (``message``, no secrets)."""


@dataclass(frozen=True, slots=True)
class EdgeRecording:
    token: str
    start: float  # camera clock
    end: float
    replay_uri: str


@dataclass(frozen=True, slots=True)
class EdgeSearch:
    card_start: float | None  # the oldest footage on the card (camera clock), from GetRecordingSummary
    card_end: float | None
    recordings: list[EdgeRecording]  # those overlapping the range asked for


class EdgeStorage:
    def __init__(self, config: Onvif) -> None:
        self.config = config
        self.address = DeviceAddress.of(config.url)

    async def _bounded(self, call: Any) -> Any:
        async with asyncio.timeout(self.config.timeout_seconds):
            return await call

    async def search(self, start: float, end: float) -> EdgeSearch:
        """The camera's recordings overlapping [start, end] (camera clock), each with its replay URI."""
        try:
            return await self._search(start, end)
        except EdgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - every library failure becomes a reason
            reason, message = classify(exc)
            mapped = {"unreachable": EdgeReason.UNREACHABLE, "auth_failed": EdgeReason.AUTH_FAILED,
                      "soap_fault": EdgeReason.SOAP_FAULT}.get(reason.value, EdgeReason.BAD_ANSWER)
            raise EdgeError(mapped, message) from None

    async def _search(self, start: float, end: float) -> EdgeSearch:
        onvif = await asyncio.to_thread(importlib.import_module, "onvif")
        address = self.address
        camera = _bounded_camera_class(onvif)(address.host, address.port, address.user, address.password,
                                              no_cache=True, adjust_time=True)
        try:
            await self._bounded(camera.update_xaddrs())
            if SEARCH_NS not in camera.xaddrs or REPLAY_NS not in camera.xaddrs:
                raise EdgeError(EdgeReason.NO_PROFILE_G,
                                "the camera offers no ONVIF search and replay services (no Profile G edge storage)")
            search = await camera.create_search_service()
            summary = await self._bounded(search.GetRecordingSummary())
            card_start, card_end = _time(getattr(summary, "DataFrom", None)), _time(getattr(summary, "DataUntil", None))
            found = await self._find(search)
            overlapping = [r for r in found if r[1] <= end and r[2] >= start]
            if not overlapping:
                return EdgeSearch(card_start, card_end, [])
            replay = await camera.create_replay_service()
            recordings = []
            for token, first, last in overlapping:
                answer = await self._bounded(replay.GetReplayUri({
                    "StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                    "RecordingToken": token}))
                uri = str(answer if isinstance(answer, str) else getattr(answer, "Uri", answer) or "")
                if not uri.startswith("rtsp://"):
                    raise EdgeError(EdgeReason.BAD_ANSWER, "GetReplayUri gave no rtsp:// URI")
                recordings.append(EdgeRecording(token, first, last, uri))
            return EdgeSearch(card_start, card_end, recordings)
        finally:
            await camera.close()

    async def _find(self, search: Any) -> list[tuple[str, float, float]]:
        answer = await self._bounded(search.FindRecordings({
            "Scope": {}, "MaxMatches": _MAX_RECORDINGS, "KeepAliveTime": dt.timedelta(seconds=30)}))
        token = str(answer if isinstance(answer, str) else getattr(answer, "SearchToken", answer) or "")
        if not token:
            raise EdgeError(EdgeReason.BAD_ANSWER, "FindRecordings gave no search token")
        found: list[tuple[str, float, float]] = []
        try:
            for _ in range(_MAX_RESULT_ROUNDS):
                result = await self._bounded(search.GetRecordingSearchResults({
                    "SearchToken": token, "MinResults": 1, "MaxResults": _MAX_RECORDINGS,
                    "WaitTime": dt.timedelta(seconds=2)}))
                for info in (getattr(result, "RecordingInformation", None) or [])[:_MAX_RECORDINGS]:
                    entry = _recording(info)
                    if entry is not None and len(found) < _MAX_RECORDINGS:
                        found.append(entry)
                if str(getattr(result, "SearchState", "")) == "Completed":
                    return found
            raise EdgeError(EdgeReason.BAD_ANSWER, "the camera's recording search never completed")
        finally:
            try:
                await self._bounded(search.EndSearch({"SearchToken": token}))
            except Exception:  # noqa: BLE001 - the camera ends it at its keep-alive time anyway
                pass


def _recording(info: Any) -> tuple[str, float, float] | None:
    """(token, first, last) of a RecordingInformation: its video track's data, else its earliest/latest."""
    token = getattr(info, "RecordingToken", None)
    if not token:
        return None
    spans = [(_time(getattr(t, "DataFrom", None)), _time(getattr(t, "DataTo", None)))
             for t in getattr(info, "Track", None) or [] if str(getattr(t, "TrackType", "")) == "Video"]
    spans = [s for s in spans if s[0] is not None and s[1] is not None]
    if spans:
        first, last = min(s[0] for s in spans if s[0] is not None), max(s[1] for s in spans if s[1] is not None)
        return str(token), first, last
    first_at, last_at = _time(getattr(info, "EarliestRecording", None)), _time(getattr(info, "LatestRecording", None))
    if first_at is None or last_at is None:
        return None
    return str(token), first_at, last_at


def _time(value: Any) -> float | None:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return None
