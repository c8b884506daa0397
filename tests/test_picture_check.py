"""The picture analyser on synthetic frames (the simulator's scenes), through a real H.264 encode and decode.

Cheap and deterministic: the long "normal scene raises nothing" run covers ten
minutes of scene time (people walking, light drifting over a 90 s cycle) here,
where the live test can afford only half a minute.
"""

from __future__ import annotations

import asyncio
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from nvr.base.config import PictureChecks
from nvr.health import coverage
from nvr.health.alarms import AlarmStore, AlarmType, Run, Severity
from streams.picture_check import Condition, PictureCheck, decode_keyframe
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "sim"))
import scene as scenes  # noqa: E402

W, H = 640, 360


class Camera:
    """Renders simulator frames and encodes each as an H.264 keyframe (what the analyser is fed)."""

    def __init__(self) -> None:
        self.views = {0: scenes.Scene(W, H, 0), 1: scenes.Scene(W, H, 1)}
        self.frame_no = 0

    def keyframe(self, t: float, mode: str = "normal", still: np.ndarray | None = None) -> bytes:
        if mode == "black":
            buf = np.frombuffer(scenes.black_frame(W, H), np.uint8)
        elif mode == "grey":
            buf = np.concatenate([np.full(W * H, 120, np.uint8), np.full(W * H // 2, 128, np.uint8)])
        elif mode == "blur":
            buf = self.views[0].render_blurred(t, self.frame_no)
        elif mode == "still":
            assert still is not None
            buf = still
        else:
            buf = self.views[1 if mode == "scene" else 0].render(t, self.frame_no, wall=1.7e9 + t)
        self.frame_no += 15
        self.last = buf.copy()
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt = W, H, "yuv420p"
        encoder.time_base = Fraction(1, 15)
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "repeat-headers": "1"}
        frame = av.VideoFrame(W, H, "yuv420p")
        frame.planes[0].update(np.ascontiguousarray(buf[: W * H]))
        frame.planes[1].update(np.ascontiguousarray(buf[W * H : W * H * 5 // 4]))
        frame.planes[2].update(np.ascontiguousarray(buf[W * H * 5 // 4 :]))
        frame.pts = 0
        packets = list(encoder.encode(frame)) + list(encoder.encode(None))
        return b"".join(bytes(p) for p in packets)


def analyse(check: PictureCheck, data: bytes) -> frozenset[Condition]:
    gray = decode_keyframe("h264", b"", data, check.thresholds.analysis_width)
    assert gray is not None and gray.shape == (180, 320)
    return check.analyse(gray).conditions


@pytest.fixture(scope="module")
def learned() -> tuple[Camera, PictureCheck]:
    camera, check = Camera(), PictureCheck(PictureChecks())
    for t in range(3):
        assert analyse(check, camera.keyframe(t * 3.0)) == frozenset()
    assert check.learned
    return camera, check


def test_ten_minutes_of_normal_scene_raise_nothing() -> None:
    camera, check = Camera(), PictureCheck(PictureChecks())
    found = {t: analyse(check, camera.keyframe(float(t))) for t in range(0, 600, 3)}
    assert {t: c for t, c in found.items() if c} == {}


def test_dark_or_uniform_picture_is_covered_and_nothing_else(learned: tuple[Camera, PictureCheck]) -> None:
    camera, check = learned
    assert analyse(check, camera.keyframe(10, "black")) == {Condition.COVERED}
    assert analyse(check, camera.keyframe(11, "grey")) == {Condition.COVERED}
    assert analyse(check, camera.keyframe(12)) == frozenset()


def test_defocused_picture_is_blurred(learned: tuple[Camera, PictureCheck]) -> None:
    camera, check = learned
    assert analyse(check, camera.keyframe(20, "blur")) == {Condition.BLURRED}
    assert analyse(check, camera.keyframe(21)) == frozenset()


def test_turned_camera_is_moved_until_the_reference_is_relearned(learned: tuple[Camera, PictureCheck]) -> None:
    camera, check = learned
    assert analyse(check, camera.keyframe(30, "scene")) == {Condition.MOVED}
    check.relearn()
    for t in (31, 34, 37):
        analyse(check, camera.keyframe(t, "scene"))
    assert analyse(check, camera.keyframe(40, "scene")) == frozenset()
    assert analyse(check, camera.keyframe(43)) == {Condition.MOVED}
    check.relearn()
    for t in (46, 49, 52):
        analyse(check, camera.keyframe(t))


def test_identical_keyframes_are_frozen_and_a_reconnect_is_not(learned: tuple[Camera, PictureCheck]) -> None:
    camera, check = learned
    analyse(check, camera.keyframe(60))
    still = camera.last
    assert analyse(check, camera.keyframe(63, "still", still)) == {Condition.FROZEN}
    assert analyse(check, camera.keyframe(66, "still", still)) == {Condition.FROZEN}
    check.new_session()
    assert analyse(check, camera.keyframe(69, "still", still)) == frozenset()
    assert analyse(check, camera.keyframe(72)) == frozenset()


def test_garbage_is_not_a_picture() -> None:
    assert decode_keyframe("h264", b"", b"\x00\x00\x00\x01\x65garbage", 320) is None


# -- coverage ---------------------------------------------------------------------------------


def _alarm(kind: AlarmType, opened: float, closed: float | None, **details: object) -> object:
    from nvr.health.alarms import Alarm

    return Alarm(f"{kind}-{opened}", "cam", kind, Severity.WARNING, opened, closed, dict(details))


def test_coverage_names_every_gap_by_its_cause() -> None:
    runs = [Run("a", 0, 100, 100), Run("b", 150, 400, None)]
    alarms = [
        _alarm(AlarmType.OFFLINE, 205, 230, reason="unreachable", last_packet_at=200),
        _alarm(AlarmType.RECORDING_STALLED, 300, 320),
    ]
    spans = [(0, 100), (155, 200), (230, 300), (320, 400)]
    report = coverage.compute("cam", 0, 400, spans, alarms, runs, now=400)  # type: ignore[arg-type]
    causes = [(g.start, g.end, g.cause, g.reason) for g in report.gaps]
    assert causes == [
        (100, 150, "daemon_down", None),
        (150, 155, "unknown", None),
        (200, 230, "offline", "unreachable"),
        (300, 320, "recording_stalled", None),
    ]
    assert report.recorded_seconds == 100 + 45 + 70 + 80
    assert report.percent == pytest.approx(73.75)


# -- the alarm store ----------------------------------------------------------------------------


async def test_alarms_work_without_storage_then_move_onto_it_and_a_crash_is_closed(tmp_path: Path) -> None:
    changes: list[str] = []
    store = AlarmStore()
    store.listeners.append(lambda change: changes.append(f"{change.action}:{change.alarm.type}"))
    opened = store.open("cam", AlarmType.COVERED, Severity.CRITICAL, {"brightness": 3.0}, at=1000.0)
    assert opened is not None and store.open("cam", AlarmType.COVERED, Severity.CRITICAL) is None
    assert [a.id for a in await store.query(open_only=True)] == [opened.id]  # in memory, storage refused

    await store.attach(tmp_path / "alarms.db")
    closed = store.close("cam", AlarmType.COVERED, at=1010.0)
    assert closed is not None and closed.duration == 10.0
    store.open("cam", AlarmType.OFFLINE, Severity.CRITICAL, {"reason": "stalled"}, at=1020.0)
    assert changes == ["opened:covered", "closed:covered", "opened:offline"]
    history = await store.query(camera="cam")
    assert [(a.type, a.closed_at) for a in history] == [(AlarmType.COVERED, 1010.0), (AlarmType.OFFLINE, None)]
    assert [a.type for a in await store.query(since=1011.0)] == [AlarmType.OFFLINE]

    # A crash: the store is never shut down. The next run closes the alarm at the last heartbeat.
    store.submit(store._touch_run, 1030.0).result()
    store.worker.close()
    again = AlarmStore()
    await again.attach(tmp_path / "alarms.db")
    offline = await again.query(camera="cam", kind=AlarmType.OFFLINE)
    assert offline[0].closed_at == 1030.0 and offline[0].details["closed_by"] == "daemon_down"
    assert len(await again.runs(0, 2e9)) == 2
    await again.shutdown()
    await asyncio.sleep(0)


def test_alert_rules_parse_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((REPO / "deploy/prometheus/nvr-alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {"NvrCameraDown", "NvrCameraTampered", "NvrDiskNearlyFull", "NvrRecordingStalled"} <= set(alerts)
    # Series are owned by their components: the daemon's collector and the archive's (recorder/archive.py).
    exported = (REPO / "nvr/metrics.py").read_text() + (REPO / "recorder/archive.py").read_text()
    for expr in alerts.values():
        for name in set(__import__("re").findall(r"\bnvr_[a-z_]+", expr)):
            base = name.removesuffix("_total")
            assert f'"{base}"' in exported, name
