"""Shared fixtures: real simulated cameras and the real daemon, on loopback."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import yaml

if TYPE_CHECKING:
    from recorder.index import SegmentIndex
    from sim.client import SimCamera
    from sim.onvif_camera import OnvifCamera

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, SegmentIndex]]:
    """An initialised storage root and its open segment index."""
    from recorder.index import SegmentIndex
    from recorder.storage import init_storage

    root = tmp_path / "storage"
    init_storage(root, "st-test")
    index = SegmentIndex(root / "index.sqlite3")
    index.open()
    yield root, index
    index.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], T], timeout: float, message: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``message`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        if last and not isinstance(last, AssertionError):
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout:.0f} s; last: {last!r})")
        time.sleep(interval)


class StationProcess:
    """The real ``nvr run`` in a subprocess, with its log captured to a file."""

    def __init__(self, workdir: Path, cameras: list[dict[str, Any]], env: dict[str, str] | None = None,
                 init_storage: bool = True, nofile: tuple[int, int] | None = None, **sections: Any) -> None:
        self.workdir = workdir
        self.nofile = nofile  # (soft, hard) RLIMIT_NOFILE to start with, e.g. a service's (1024, 1024)
        self.port = free_port()
        self.storage = workdir / "storage"
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "daemon.log"
        self.env = {**os.environ, **(env or {})}
        config: dict[str, Any] = {
            "station": {"id": "st-test", "name": "Test station"},
            "storage": {"path": str(self.storage)},
            "web": {"listen": f"127.0.0.1:{self.port}"},
            "health": {"stall_seconds": 3},
            "ingest": {"backoff_initial_seconds": 0.5, "backoff_max_seconds": 2},
            "log": {"level": "debug", "ffmpeg_level": "warning"},
            "cameras": cameras,
        }
        for key, value in sections.items():
            config[key] = {**config.get(key, {}), **value}
        self.config = config
        self.storage = Path(config["storage"]["path"])
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        if init_storage:
            from recorder.storage import init_storage as init

            init(self.storage, config["station"]["id"])
        # Access control is deny-by-default: requests carry an admin API token unless told otherwise.
        from nvr.identity.accounts_cli import create_token
        from nvr.identity.roles import Role

        self.auth_db = Path(config.get("auth", {}).get("database") or self.storage / "auth.sqlite3")
        self.token = create_token(self.auth_db, "test-admin", Role.ADMIN)
        self.ssl_context: Any = None  # for a daemon with web.tls: trusts the test's certificate

    @property
    def base_url(self) -> str:
        scheme = "https" if self.config["web"].get("tls") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def add_user(self, name: str, role: str, password: str, cameras: str | None = None) -> None:
        """A console user in the daemon's auth database (as ``nvr user add`` does)."""
        from nvr.identity.authdb import AuthDatabase
        from nvr.identity.roles import Role, parse_cameras

        db = AuthDatabase(self.auth_db)
        try:
            db.add_user(name, Role(role), password, parse_cameras(cameras))
        finally:
            db.close()

    def start(self, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        nofile = self.nofile

        def limit_descriptors() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nvr", "run", "-c", str(self.config_path)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            preexec_fn=limit_descriptors if nofile is not None else None,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                return self.get("/healthz")[0] in (200, 503)
            except OSError:
                return False

        wait_until(up, timeout, "daemon did not start")

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 10.0, auth: bool = True) -> tuple[int, Any]:
        """One request; with the admin token unless ``auth=False`` or ``headers`` bring credentials."""
        data = None
        headers = dict(headers or {})
        if auth and "Authorization" not in headers and "Cookie" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
                raw = resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raw = err.read()
            status = err.code
            ctype = err.headers.get("Content-Type", "")
        if "json" in ctype:
            return status, json.loads(raw)
        return status, raw

    def camera(self, camera_id: str) -> dict[str, Any]:
        status, body = self.get(f"/api/cameras/{camera_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def wait_state(self, camera_id: str, state: str, timeout: float = 20.0, reason: str | None = None
                   ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            cam = self.camera(camera_id)
            if cam["state"] == state and (reason is None or cam["state_reason"] == reason):
                return cam
            return None

        return wait_until(check, timeout, f"camera {camera_id} never became {state}/{reason}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cameras() -> Iterator[Callable[..., SimCamera]]:
    """Factory of started simulated cameras, all stopped at the end of the test."""
    from sim.client import SimCamera

    started: list[SimCamera] = []

    def make(name: str, **kwargs: Any) -> SimCamera:
        cam = SimCamera(name, **kwargs)
        cam.start()
        started.append(cam)
        return cam

    yield make
    for cam in started:
        cam.stop()


@pytest.fixture
def onvif_cameras() -> Iterator[Callable[..., OnvifCamera]]:
    """Factory of started simulated ONVIF cameras (sim/onvif_camera.py), all stopped at the end of the test."""
    from sim.onvif_camera import OnvifCamera

    made: list[OnvifCamera] = []

    def make(**kwargs: Any) -> OnvifCamera:
        cam = OnvifCamera(**kwargs).start()
        made.append(cam)
        return cam

    yield make
    for cam in made:
        cam.stop()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., StationProcess]]:
    made: list[StationProcess] = []

    def make(cameras: list[dict[str, Any]], start: bool = True, **kwargs: Any) -> StationProcess:
        workdir = tmp_path / f"daemon{len(made)}"
        workdir.mkdir()
        daemon = StationProcess(workdir, cameras, **kwargs)
        made.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in made:
        try:
            daemon.stop()
        except subprocess.TimeoutExpired:
            pass
