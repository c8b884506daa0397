"""A real Ceph RADOS Gateway (S3 with Object Lock) on 127.0.0.1, for tests, the demo and benchmarks.

One monitor, one memory-backed OSD and radosgw, each a foreground child
process of ours (``-f``), so that :meth:`RadosGateway.stop` ends exactly the
processes it started, by pid, and nothing is left running.  Everything lives
under one directory; the OSD keeps its objects in memory (``memstore``), so
stopping it forgets the store.

:meth:`stop_gateway` / :meth:`start_gateway` stop and restart radosgw alone
(the objects survive in the OSD): an outage of the store as the station sees it.

Needs Debian's ``ceph-mon ceph-osd radosgw ceph-common`` (the Makefile installs them).

    python sim/radosgw.py DIR [PORT]    # runs until Ctrl-C, printing the endpoint and keys
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ACCESS_KEY = "NVRTESTKEY"
SECRET_KEY = "NVRTESTSECRET0123456789abcdef"
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")


class RadosGatewayError(RuntimeError):
    pass


def available() -> str | None:
    """None if the Ceph binaries are installed, else which one is missing."""
    for name in BINARIES:
        if shutil.which(name) is None:
            return name
    return None


def _free_port() -> int:
    """A free port chosen at random from a wide range, not the kernel's next ephemeral one: two gateways
    started at the same moment (another test run) must not both be handed the port neither has bound yet."""
    for _ in range(100):
        port = random.randint(20000, 60000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RadosGatewayError("no free port for radosgw")


class RadosGateway:
    def __init__(self, directory: Path, port: int | None = None, memstore_mb: int = 1024) -> None:
        self.dir = directory
        self.port = port or _free_port()
        self.mon_port = _free_port()
        self.memstore_mb = memstore_mb
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.conf = directory / "ceph.conf"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- life cycle -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start everything; a cluster that does not come up is stopped and made again on new ports."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                return
            except RadosGatewayError:
                if attempt == attempts:
                    raise
                self.port, self.mon_port = _free_port(), _free_port()
                self.endpoint = f"http://127.0.0.1:{self.port}"

    def _start_once(self, timeout: float) -> None:
        missing = available()
        if missing is not None:
            raise RadosGatewayError(f"{missing} is not installed (apt-get install ceph-mon ceph-osd radosgw)")
        deadline = time.monotonic() + timeout
        if self.dir.exists():
            shutil.rmtree(self.dir)
        for sub in ("mon", "osd0", "rgw", "run", "log"):
            (self.dir / sub).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(self._config(fsid))
        try:
            self._run("monmaptool", "--create", "--add", "a", f"v1:127.0.0.1:{self.mon_port}", "--fsid", fsid,
                      str(self.dir / "monmap"))
            self._run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(self.dir / "monmap"))
            self._spawn("mon", "ceph-mon", "-f", "-c", str(self.conf), "-i", "a")
            # One uuid for the OSD on both sides: an OSD that boots with another one is refused ("wrong fsid").
            osd_uuid = str(uuid.uuid4())
            self._ceph("osd", "create", osd_uuid, "0")
            # The OSD is placed in the CRUSH map from here rather than by itself at start (see _config).
            self._ceph("osd", "crush", "add", "osd.0", "1.0", "root=default")
            self._run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=60)
            self._spawn("osd", "ceph-osd", "-f", "-c", str(self.conf), "-i", "0")
            self.start_gateway(max(5.0, deadline - time.monotonic()))
            self._run("radosgw-admin", "-c", str(self.conf), "user", "create", "--uid=nvr", "--display-name=nvr",
                      f"--access-key={self.access_key}", f"--secret={self.secret_key}",
                      timeout=max(5.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def start_gateway(self, timeout: float = 60.0) -> None:
        """Start radosgw (again) and wait until it answers HTTP."""
        self._spawn("rgw", "radosgw", "-f", "-c", str(self.conf), "-n", "client.rgw.a")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:  # e.g. an OSD refused by the monitor: no point in waiting
                    raise RadosGatewayError(f"{name} exited with {proc.returncode}: {self._why(name)}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers: any HTTP status will do
            except OSError:
                time.sleep(0.3)
        raise RadosGatewayError(f"radosgw did not answer on {self.endpoint} within {timeout:.0f} s")

    def stop_gateway(self) -> None:
        """Stop radosgw only: the store is unreachable, its objects stay in the OSD."""
        self._end("rgw")

    def stop(self) -> None:
        """End every process we started (gateway first, the memory-backed OSD last but one). Idempotent."""
        for name in ("rgw", "osd", "mon"):
            self._end(name)

    def __enter__(self) -> RadosGateway:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- helpers --------------------------------------------------------------------------

    def _config(self, fsid: str) -> str:
        d = self.dir
        return f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{self.mon_port}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd objectstore = memstore
# An OSD that places itself in the CRUSH map at start may send that command before it has the monitor's
# map, with a zero fsid: the monitor answers 'wrong fsid' and the OSD exits (seen on CI three starts in a row).
osd crush update on start = false
osd class update on start = false
memstore device bytes = {self.memstore_mb << 20}
osd crush chooseleaf type = 0
osd max object name len = 460
osd max object namespace len = 64
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
[mon.a]
mon data = {d}/mon
public addr = 127.0.0.1:{self.mon_port}
[osd.0]
osd data = {d}/osd0
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw data = {d}/rgw
"""

    def _run(self, *argv: str, timeout: float = 30.0) -> None:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).decode(errors="replace")[-2000:]
            raise RadosGatewayError(f"{argv[0]} failed ({result.returncode}): {tail}")

    def _ceph(self, *command: str, attempts: int = 5) -> None:
        """An (idempotent) cluster command.  A client of a monitor that has just started may send its first
        command before it has the monitor's map, with a zero fsid, and be refused with EPERM ('wrong fsid',
        'problem getting command descriptions'): such a refusal is asked again."""
        for attempt in range(1, attempts + 1):
            try:
                self._run("ceph", "-c", str(self.conf), "--connect-timeout", "30", *command, timeout=40)
                return
            except RadosGatewayError as exc:
                if "EPERM" not in str(exc) or attempt == attempts:
                    raise
                time.sleep(0.5)

    def _spawn(self, name: str, *argv: str) -> None:
        log = (self.dir / "log" / f"{name}.out").open("ab")
        try:
            self._procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def _why(self, name: str) -> str:
        """What a daemon said before it exited: its error lines (level -1), which come before any backtrace
        printed on the way out, else the end of its output."""
        out = (self.dir / "log" / f"{name}.out").read_text(errors="replace")
        errors = [line for line in out.splitlines() if " -1 " in line]
        return " | ".join(errors[:8]) if errors else out[-500:]

    def _end(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            # ceph-osd sometimes ignores SIGTERM while it flushes: the memory store needs no flush.
            proc.kill()
            proc.wait(10)


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("radosgw-data")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else None
    gateway = RadosGateway(directory.resolve(), port)
    gateway.start()
    print(f"endpoint {gateway.endpoint} access_key {gateway.access_key} secret_key {gateway.secret_key}", flush=True)
    stop = False

    def on_signal(*_args: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        gateway.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
