"""Lifecycle checks that need no camera: the watchdog is fed only while recording really progresses."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from nvr.base import config
from nvr.station import Station
from streams.rtsp_source import SourceState


def test_watchdog_starves_on_a_silently_stuck_recorder_only(tmp_path: Path) -> None:
    cfg = config.parse(
        f"station: {{id: st-1, name: S}}\nstorage: {{path: {tmp_path}}}\nhealth: {{recording_stall_seconds: 10}}\n"
        "cameras:\n  - {id: a, name: A, url: 'rtsp://127.0.0.1:1/x'}\n",
        environ={},
    )
    station = Station(cfg)
    runtime = station.cameras["a"]
    core = SimpleNamespace(error=None, last_write_mono=time.monotonic())
    station.recording.recorders["a"] = SimpleNamespace(core=core)  # type: ignore[assignment]
    runtime.source.state = SourceState.ONLINE
    runtime.source.changed_at = time.time() - 3600
    assert station.problem() is None  # writing: fine

    core.last_write_mono = time.monotonic() - 25  # online for an hour, nothing written for 25 s, no reason given
    assert station.stuck_recorders() == ["a"] and station.problem() is not None

    core.error = "write failed: No space left on device"  # a reported error is not a hang
    assert station.problem() is None
    core.error = None
    runtime.source.state = SourceState.OFFLINE  # nothing to record
    assert station.problem() is None


def test_systemd_notify_ready_watchdog_and_stopping(tmp_path: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """What systemd sees of a Type=notify service, through a NOTIFY_SOCKET of our own."""
    import signal
    import socket

    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(20)
    daemon = daemon_factory([], start=False, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    daemon.start()
    messages: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and messages.count("WATCHDOG=1") < 3:
        messages.extend(sock.recv(4096).decode().splitlines())
    assert "READY=1" in messages and messages.count("WATCHDOG=1") >= 3
    daemon.signal(signal.SIGTERM)
    while "STOPPING=1" not in messages:
        messages.extend(sock.recv(4096).decode().splitlines())
    assert daemon.proc.wait(15) == 0  # type: ignore[union-attr]
    sock.close()
