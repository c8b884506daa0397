"""Thumbnails as an auditor's timeline uses them: kept from the picture checks' keyframes, found, thinned, deleted
with their footage.

The first story runs the real daemon against a simulated camera; the
retention story writes real index rows and real thumbnail files below it.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from av.video.frame import VideoFrame

from nvr.base.config import Storage
from nvr.base.timeutil import iso, parse_iso
from nvr.identity.accounts_cli import create_token
from nvr.identity.roles import Role
from recorder.index import NewSegment
from recorder.retention import Retention
from recorder.thumbnails import ThumbnailStore, jpeg_of
from tests.conftest import StationProcess, wait_until
from tests.test_hls import new_storage


def q(**query: str) -> str:
    return urllib.parse.urlencode(query)


def test_a_recording_camera_keeps_thumbnails_of_its_checked_keyframes_and_the_api_serves_them(
    cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]
) -> None:
    cam = cameras("hall", gop=15, width=640, height=360)
    still = cameras("yard", gop=15)
    daemon = daemon_factory(
        [{"id": "hall", "name": "Hall", "url": cam.url},
         {"id": "yard", "name": "Yard", "url": still.url, "record": False}],
        health={"analyse_seconds": 1.0}, storage={"segment_seconds": 4})
    daemon.wait_state("hall", "online", timeout=30)
    daemon.wait_state("yard", "online", timeout=30)
    began = time.time() - 2

    def listed() -> list[dict[str, str]] | None:
        status, body = daemon.get("/api/recordings/hall/thumbnails?" + q(start=iso(began) or "",
                                                                          end=iso(time.time() + 1) or ""))
        assert status == 200, body
        return body["thumbnails"] if len(body["thumbnails"]) >= 4 else None

    thumbs = wait_until(listed, 30, "no thumbnails kept")
    times = [parse_iso(t["at"]) for t in thumbs]
    assert times == sorted(times) and all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False))
    status, jpeg = daemon.get(thumbs[1]["url"])
    assert status == 200 and isinstance(jpeg, bytes)
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (180, 320, 3)  # 320 wide, the camera's aspect kept
    assert float(picture.std()) > 5  # a picture, not a blank
    assert len(jpeg) < 40_000
    # The nearest one to a moment between two, named in the header; the footage of that moment exists.
    moment = (times[1] + times[2]) / 2 - 0.1
    req = urllib.request.Request(daemon.base_url + "/api/recordings/hall/thumbnail.jpg?" + q(at=iso(moment) or ""),
                                 headers={"Authorization": f"Bearer {daemon.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert parse_iso(resp.headers["X-Thumbnail-At"]) == pytest.approx(times[1], abs=0.002)
    status, found = daemon.get("/api/recordings?" + q(camera="hall", start=iso(times[0] - 10) or "",
                                                       end=iso(times[-1] + 10) or ""))
    assert status == 200 and any(parse_iso(s["start"]) <= times[1] <= parse_iso(s["end"]) + 4
                                 for s in found["spans"])
    # Thinned evenly: at most `limit`, spread over the range.
    status, body = daemon.get("/api/recordings/hall/thumbnails?" + q(start=iso(times[0]) or "",
                                                                      end=iso(times[-1] + 0.5) or "", limit="2"))
    assert status == 200 and len(body["thumbnails"]) == 2
    assert parse_iso(body["thumbnails"][1]["at"]) > (times[0] + times[-1]) / 2 - 1.5
    # A camera that is not recorded keeps none (there is no footage to preview).
    status, body = daemon.get("/api/recordings/yard/thumbnails?" + q(start=iso(began) or "",
                                                                      end=iso(time.time()) or ""))
    assert status == 200 and body["thumbnails"] == []

    # Bad input: clear errors; a restricted auditor sees only their cameras.
    assert daemon.get("/api/recordings/hall/thumbnail.jpg?at=noon")[1]["error"] == "invalid_at"
    assert daemon.get("/api/recordings/hall/thumbnail.jpg")[1]["error"] == "invalid_at"
    status, body = daemon.get("/api/recordings/hall/thumbnail.jpg?" + q(at="2001-01-01T00:00:00Z"))
    assert (status, body["error"]) == (404, "nothing_recorded")
    status, body = daemon.get("/api/recordings/hall/thumbnails?" + q(start=iso(began) or "",
                                                                      end=iso(time.time()) or "", limit="0"))
    assert (status, body["error"]) == (400, "invalid_limit")
    status, body = daemon.get("/api/recordings/hall/thumbnails?" + q(start="2001-01-02T00:00:00Z",
                                                                      end="2001-01-01T00:00:00Z"))
    assert (status, body["error"]) == (400, "invalid_end")
    yard_only = create_token(daemon.auth_db, "yard-auditor", Role.AUDITOR, frozenset({"yard"}))
    status, body = daemon.request("GET", thumbs[1]["url"], headers={"Authorization": f"Bearer {yard_only}"})
    assert (status, body["error"]) == (403, "camera_forbidden")
    # Viewing thumbnails is audited, a hovering pointer's at most once a minute.
    status, body = daemon.get("/api/audit?" + q(action="recordings.thumbnails"))
    assert status == 200
    entries = [e for e in body["entries"] if e["action"] == "recordings.thumbnails" and e["camera"] == "hall"]
    singles = [e for e in entries if "viewed" in json.dumps(e)]
    assert len(singles) == 1, singles  # two single thumbnails within a minute: one entry
    assert len(entries) - len(singles) >= 3  # every strip listed


def frame(width: int = 640, height: int = 360) -> VideoFrame:
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = (200, 60, 30)
    return VideoFrame.from_ndarray(img, format="rgb24")


def test_the_store_finds_the_nearest_lists_a_range_and_never_serves_half_a_file(tmp_path: Path) -> None:
    store = ThumbnailStore(tmp_path)
    data = jpeg_of(frame())
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (180, 320, 3)
    base = 1_800_000_000.0 - 7  # across an hour boundary
    for n in range(6):
        store.put("hall", base + 3 * n, data)
    assert store.between("hall", base, base + 18) == [base + 3 * n for n in range(6)]
    assert store.between("hall", base + 1, base + 6) == [base + 3]
    found = store.nearest("hall", base + 7.9, within=10)
    assert found is not None and found[0] == base + 9 and found[1].read_bytes() == data
    assert store.nearest("hall", base + 100, within=10) is None
    assert store.nearest("yard", base, within=10) is None
    (found[1].parent / "123.part").write_bytes(b"half")  # a write torn by a crash is never listed
    assert store.between("hall", base, base + 18) == [base + 3 * n for n in range(6)]
    with pytest.raises(ValueError):
        store.put("../etc", base, data)


def test_retention_deletes_thumbnails_with_their_footage_and_keeps_those_of_held_footage(tmp_path: Path) -> None:
    with new_storage(tmp_path) as (root, index):
        day = 1_700_000_000.0
        store = ThumbnailStore(root)
        data = jpeg_of(frame(64, 36))
        for n, start in enumerate((day, day + 60)):  # two one-minute segments with real files
            rel = f"recordings/cam/x/{n}.mp4"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"footage")
            index.add_segment(NewSegment(camera="cam", start=start, end=start + 60, frames=1, bytes=7,
                                         sha256="0" * 64, codec="h264", width=1, height=1, params="{}", path=rel))
            for k in range(0, 60, 10):
                store.put("cam", start + k, data)
        orphan = day - 3 * 3600  # thumbnails of a camera watched while its recording failed: no footage
        store.put("cam", orphan, data)
        index.add_hold("cam", day, day + 30, "case 7", "auditor")  # holds the first segment
        retention = Retention(root, Storage(path=root, retention_days=1, min_free_percent=0), index)
        retention.thumbnails = store
        result = retention.sweep(now=day + 10 * 86400)
        assert result.deleted_by_age == 1
        assert store.between("cam", day, day + 60) == [day + k for k in range(0, 60, 10)]  # held: kept
        assert store.between("cam", day + 60, day + 120) == []  # deleted with its footage
        assert store.between("cam", orphan - 1, orphan + 1) == []  # expired with no footage left
        # Once the hold is released, the rest goes with its footage too, and the directories with it.
        (hold,) = index.active_holds()
        index.release_hold(hold.id)
        retention.sweep(now=day + 10 * 86400)
        assert store.between("cam", day - 86400, day + 86400) == []
        assert not any((root / "thumbnails" / "cam").iterdir())
