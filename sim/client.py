"""Stdlib-only controller for simulated cameras (sim/camsim.py).

Importable from any Python >= 3.11 (no gi/numpy needed here): the camera itself
runs in a child process under Debian's /usr/bin/python3 (override with the
CAMSIM_PYTHON environment variable).

    with SimCamera("cam1", user="admin", password="Pa55@w:rd%21!") as cam:
        cam.start()
        url = cam.url_with("admin", "Pa55@w:rd%21!")
        cam.command("black")
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

SIM_DIR = Path(__file__).resolve().parent
REPO_ROOT = SIM_DIR.parent
CAMSIM = SIM_DIR / "camsim.py"
PASSWORD_ENV = "CAMSIM_PASSWORD"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Spawner:
    """Spawns children from one long-lived thread.

    The camera sets PR_SET_PDEATHSIG, which fires when the *thread* that forked it
    exits; spawning from a dedicated thread that lives as long as the interpreter
    keeps cameras started from short-lived worker threads (e.g. asyncio.to_thread)
    alive.
    """

    _lock = threading.Lock()
    _q: queue.Queue | None = None

    @classmethod
    def popen(cls, *args, **kwargs) -> subprocess.Popen:
        with cls._lock:
            if cls._q is None:
                cls._q = queue.Queue()
                threading.Thread(target=cls._run, name="camsim-spawner", daemon=True).start()
        done: queue.Queue = queue.Queue(1)
        cls._q.put((args, kwargs, done))
        ok, val = done.get()
        if not ok:
            raise val
        return val

    @classmethod
    def _run(cls) -> None:
        assert cls._q is not None
        while True:
            args, kwargs, done = cls._q.get()
            try:
                done.put((True, subprocess.Popen(*args, **kwargs)))
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                done.put((False, e))


class SimCameraError(RuntimeError):
    pass


class SimCamera:
    def __init__(self, name: str, *, port: int | None = None, host: str = "127.0.0.1",
                 path: str = "/stream", codec: str = "h264", width: int = 640, height: int = 360,
                 fps: int = 15, gop: int | None = None, bitrate_kbps: int = 800,
                 audio: str = "none", user: str | None = None, password: str | None = None,
                 file: str | os.PathLike | None = None, inband_only: bool = False, profile: str | None = None,
                 log_path: str | os.PathLike | None = None):
        self.name = name
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.path = path if path.startswith("/") else "/" + path
        self.codec, self.width, self.height, self.fps = codec, width, height, fps
        self.gop, self.bitrate_kbps, self.audio = gop, bitrate_kbps, audio
        self.user, self.password = user, password
        self.file = os.fspath(file) if file is not None else None
        self.inband_only = inband_only
        self.profile = profile  # H.264 profile of the encoder (camsim --profile); None: its default
        self.log_path = os.fspath(log_path) if log_path is not None else None
        self._tmp_log: str | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ready = threading.Event()
        self._cmd_lock = threading.Lock()
        self._paused = False

    # ------------------------------------------------------------------ urls
    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.path}"

    def url_with(self, user: str | None, password: str | None) -> str:
        if user is None:
            return self.url
        cred = urllib.parse.quote(user, safe="")
        if password is not None:
            cred += ":" + urllib.parse.quote(password, safe="")
        return f"rtsp://{cred}@{self.host}:{self.port}{self.path}"

    # ------------------------------------------------------------------ process
    def _argv(self) -> list[str]:
        py = os.environ.get("CAMSIM_PYTHON", "/usr/bin/python3")
        a = [py, str(CAMSIM), "--port", str(self.port), "--host", self.host, "--path", self.path,
             "--codec", self.codec, "--width", str(self.width), "--height", str(self.height),
             "--fps", str(self.fps), "--bitrate-kbps", str(self.bitrate_kbps), "--audio", self.audio]
        if self.gop:
            a += ["--gop", str(self.gop)]
        if self.user:
            a += ["--user", self.user, "--password-env", PASSWORD_ENV]
        if self.file:
            a += ["--file", self.file]
        if self.inband_only:
            a.append("--inband-only")
        if self.profile is not None:
            a += ["--profile", self.profile]
        return a

    @property
    def log_file(self) -> str:
        if self.log_path:
            return self.log_path
        if self._tmp_log is None:
            fd, self._tmp_log = tempfile.mkstemp(prefix=f"camsim-{self.name}-", suffix=".log")
            os.close(fd)
        return self._tmp_log

    def stderr_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        env = dict(os.environ)
        env.pop(PASSWORD_ENV, None)
        if self.user:
            env[PASSWORD_ENV] = self.password or ""
        env.setdefault("GST_DEBUG", "1")
        self._ready.clear()
        self._lines = queue.Queue()
        self._paused = False
        with open(self.log_file, "ab") as log:
            log.write(f"--- {self.name} start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self._proc = _Spawner.popen(
                self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=env, cwd=str(REPO_ROOT), close_fds=True, bufsize=0)
        threading.Thread(target=self._reader, args=(self._proc, self._lines),
                         name=f"camsim-{self.name}-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self._proc.poll() is not None:
                raise SimCameraError(f"camera {self.name} exited with {self._proc.returncode} "
                                     f"before READY:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise SimCameraError(f"camera {self.name} not READY within {timeout:.1f}s:\n{self.stderr_tail()}")

    def _reader(self, proc: subprocess.Popen, lines: queue.Queue) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("READY "):
                self._ready.set()
            else:
                lines.put(line)
        lines.put(None)  # EOF

    def stop(self, timeout: float = 5.0) -> None:
        p = self._proc
        if p is None:
            return
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                if self._paused:
                    p.send_signal(signal.SIGCONT)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
            except ProcessLookupError:
                pass
        self._paused = False
        for f in (p.stdin, p.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Stall the camera (SIGSTOP): connections stay open but no packets flow."""
        p = self._proc
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        p = self._proc
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
        self._paused = False

    def command(self, line: str, timeout: float = 5.0) -> None:
        line = line.strip()
        if not self.running:
            raise SimCameraError(f"camera {self.name} is not running")
        with self._cmd_lock:
            while True:  # drop stale lines
                try:
                    self._lines.get_nowait()
                except queue.Empty:
                    break
            try:
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write((line + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                raise SimCameraError(f"camera {self.name}: cannot send {line!r}: {e}") from e
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SimCameraError(f"camera {self.name}: no answer to {line!r} within "
                                         f"{timeout:.1f}s\n{self.stderr_tail()}")
                try:
                    ans = self._lines.get(timeout=left)
                except queue.Empty:
                    continue
                if ans is None:
                    raise SimCameraError(f"camera {self.name} exited while handling {line!r}\n{self.stderr_tail()}")
                if ans == "OK " + line:
                    if line.split()[0].lower() == "quit":
                        try:
                            self._proc.wait(timeout)
                        except subprocess.TimeoutExpired:
                            pass
                    return
                if ans.startswith("ERR"):
                    raise SimCameraError(f"camera {self.name}: {line!r} failed: {ans}")

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> SimCamera:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
        except Exception:  # noqa: BLE001 - best effort at GC
            pass

    def __repr__(self) -> str:
        return "SimCamera({!r}, {}, {})".format(self.name, self.url, "running" if self.running else "stopped")
