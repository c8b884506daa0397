"""A Debian 12 station server in a container with a real systemd as PID 1, for tests/system.

The root filesystem is made once with ``debootstrap`` (the Debian packages of a bare server plus
the ones ``deploy/install-station.sh`` installs) and cached under ``$NVR_SYSTEM_CACHE``
(default ``/var/cache/nvr-system-test``), keyed by a hash of the package list and mirror; the
Python wheels the project needs are downloaded once the same way, keyed by ``setup.cfg``,
``constraints.txt`` and ``pyproject.toml``, so the container needs no network at all.

Each run boots ``systemd-nspawn --boot`` on an overlay of that cache (the cache stays pristine)
inside a network namespace the run creates (loopback plus one veth address, as
``tests/isolated.sh``), with the source tree copied to ``/usr/src/nvr``. Commands run inside with
``nsenter`` into the container's namespaces; the simulated camera runs on this host inside the
same network namespace. Everything is undone on exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NVR_SYSTEM_CACHE", "/var/cache/nvr-system-test"))
SUITE = "bookworm"
# What a bare Debian 12 server boots with; install-station.sh adds the station's own packages.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
CACHE_FORMAT = 1  # bump when the way the image is made changes
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VETH_ADDRESS = "10.213.0.1"  # ICE offers host addresses, never loopback: one of our own

log = logging.getLogger(__name__)


class Unsupported(Exception):
    """This machine cannot boot the container; the message says exactly why."""


def run(argv: list[str], out: IO[bytes] | None = None, timeout: float = 600, **kwargs: object
        ) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv``; its output goes to ``out`` (a log file) or is returned; fail loudly."""
    proc = subprocess.run(argv, stdout=out or subprocess.PIPE, stderr=subprocess.STDOUT if out else subprocess.PIPE,
                          timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        detail = "" if out else (proc.stdout + proc.stderr).decode(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(map(str, argv))} exited with {proc.returncode}{': ' + detail if detail else ''}")
    return proc


def station_packages() -> list[str]:
    out = run(["bash", str(REPO / "deploy/install-station.sh"), "--print-packages"]).stdout.decode()
    return out.split()


def debian_mirror() -> str:
    """The Debian archive this host's apt uses (deb822 .sources or one-line .list), for debootstrap."""
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line + " ")
                if m:
                    return m.group(1)
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in path.read_text().split("\n\n"):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if SUITE in fields.get("Suites", "").split() and "deb" in fields.get("Types", "deb").split():
                    return fields["URIs"].split()[0]
    return "http://deb.debian.org/debian"


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _replace_cached(kind: str, key: str) -> tuple[Path, Path]:
    """(final, partial) paths of one cache entry; older entries of the same kind are removed."""
    final = CACHE / f"{kind}-{key}"
    for old in CACHE.glob(f"{kind}-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    partial = CACHE / f"{kind}-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    return final, partial


def rootfs(logdir: Path) -> Path:
    """The cached Debian 12 image, made with debootstrap on first use."""
    mirror = debian_mirror()
    packages = sorted({*BASE_PACKAGES, *station_packages()})
    key = _key(CACHE_FORMAT, SUITE, mirror, packages)
    final = CACHE / f"rootfs-{key}"
    if (final / "etc/os-release").exists():
        log.info("root filesystem: cached %s", final)
        return final
    final, partial = _replace_cached("rootfs", key)
    started = time.monotonic()
    log.info("root filesystem: debootstrap %s from %s with %s", SUITE, mirror, ",".join(packages))
    with (logdir / "debootstrap.log").open("wb") as out:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(partial), mirror],
            out=out, timeout=1200)
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    (partial / "etc/hostname").write_text("station\n")
    partial.rename(final)
    log.info("root filesystem: made in %.0f s", time.monotonic() - started)
    return final


def wheelhouse(logdir: Path) -> Path:
    """The project's Python dependencies as wheels (and the build backend), for an offline install."""
    files = [REPO / name for name in ("setup.cfg", "constraints.txt", "pyproject.toml")]
    key = _key(CACHE_FORMAT, sys.version_info[:2], [f.read_bytes().decode() for f in files])
    final = CACHE / f"wheels-{key}"
    if final.is_dir():
        log.info("wheels: cached %s", final)
        return final
    final, partial = _replace_cached("wheels", key)
    started = time.monotonic()
    with (logdir / "pip-download.log").open("wb") as out:
        # `pip wheel`, not `pip download --only-binary`: a dependency published only as a source archive
        # (WSDiscovery) is built into a wheel here, so the station installs with no build step and no index.
        run([sys.executable, "-m", "pip", "wheel", "-q", "--prefer-binary", "-w", str(partial),
             "-c", str(REPO / "constraints.txt"), str(REPO), "setuptools>=61", "wheel"], out=out, timeout=900)
    for own in partial.glob("nvr-*.whl"):
        own.unlink()  # the station installs nvr from its source tree
    partial.rename(final)
    log.info("wheels: downloaded in %.0f s", time.monotonic() - started)
    return final


def source_files() -> list[str]:
    """The working tree as git sees it: tracked and new files, without ignored ones (.venv, caches)."""
    out = run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
    return [name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


class Station:
    """One booted container. ``sh`` runs a shell command inside it as root."""

    def __init__(self, image: Path, wheels: Path, workdir: Path) -> None:
        self.image, self.wheels, self.workdir = image, wheels, workdir
        self.netns = f"nvr-system-{os.getpid()}"
        self.root = workdir / "merged"  # the container's / as seen from the host
        self.boot_log = workdir / "boot.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1 = 0
        self._mounted = False
        self._netns = False

    # -------------------------------------------------------------- lifecycle
    def boot(self, timeout: float = 90) -> None:
        run(["ip", "netns", "add", self.netns])
        self._netns = True
        for argv in (["link", "set", "lo", "up"], ["link", "add", "nvr0", "type", "veth", "peer", "name", "nvr1"],
                     ["addr", "add", f"{VETH_ADDRESS}/24", "dev", "nvr0"], ["link", "set", "nvr0", "up"],
                     ["link", "set", "nvr1", "up"]):
            run(["ip", "-n", self.netns, *argv])
        for sub in ("upper", "work", "merged"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        try:
            run(["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={self.image},upperdir={self.workdir / 'upper'},workdir={self.workdir / 'work'}",
                 str(self.root)])
            self._mounted = True
        except RuntimeError as exc:  # no overlayfs: a private copy of the image (slower, same result)
            log.info("overlayfs unavailable (%s); copying the image", exc)
            run(["cp", "-a", f"{self.image}/.", str(self.root)])
        src = self.root / "usr/src/nvr"
        for name in source_files():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
        with self.boot_log.open("wb") as out:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", "--directory", str(self.root), "--machine", "station",
                 "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{self.netns}",
                 f"--bind-ro={self.wheels}:/var/cache/nvr-wheels", "--console=read-only", "--resolv-conf=off",
                 "--timezone=off"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.pid1:
            self._check_alive()
            with contextlib.suppress(OSError, ValueError):
                children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
                if children and Path(f"/proc/{children[0]}/comm").read_text().strip() == "systemd":
                    self.pid1 = int(children[0])
            if time.monotonic() > deadline:
                raise Unsupported(f"systemd-nspawn started no systemd within {timeout:.0f} s:\n{self.boot_tail()}")
            time.sleep(0.1)
        while True:
            self._check_alive()
            state = self.sh("systemctl is-system-running", check=False, timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise Unsupported(f"systemd in the container did not finish booting ({state!r}):\n{self.boot_tail()}")
            time.sleep(0.3)
        if state == "degraded":
            log.info("container booted degraded: %s", self.sh("systemctl --failed --no-legend", check=False).stdout)

    def _check_alive(self) -> None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise Unsupported(f"systemd-nspawn --boot exited with {self.nspawn.returncode}:\n{self.boot_tail()}")

    def boot_tail(self, n: int = 3000) -> str:
        try:
            return self.boot_log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def shutdown(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            # nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: a clean poweroff.
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(10)
        if self._mounted:
            subprocess.run(["umount", str(self.root)], check=False)
            self._mounted = False
        if self._netns:
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
            self._netns = False
        shutil.rmtree(self.workdir / "upper", ignore_errors=True)
        shutil.rmtree(self.workdir / "work", ignore_errors=True)
        with contextlib.suppress(OSError):
            if self.root.is_dir() and not os.path.ismount(self.root):
                shutil.rmtree(self.root, ignore_errors=True)

    # -------------------------------------------------------------- inside
    def sh(self, script: str, input: str | None = None, check: bool = True, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
        """``bash -c script`` as root inside the container (its mount, PID, network, IPC, UTS namespaces)."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "--", "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8",
             "HOME=/root", "TERM=dumb", "bash", "-c", script],
            input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"in the container: {script!r} exited with {proc.returncode}:\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = "nvr.service") -> str:
        return self.sh(f"journalctl -u {unit} -b --no-pager -o short-iso-precise").stdout

    def in_netns(self, argv: list[str], timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """A command on this host, inside the container's network namespace (so on its loopback)."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True,
                              timeout=timeout, **kwargs)  # type: ignore[call-overload]


@contextlib.contextmanager
def booted(workdir: Path) -> Iterator[Station]:
    """Build or reuse the caches, boot a station container, and take it all down afterwards."""
    if os.geteuid() != 0:
        raise Unsupported("needs root (debootstrap, mount, network namespaces, systemd-nspawn)")
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "ip", "ffprobe"):
        if shutil.which(tool) is None:
            raise Unsupported(f"{tool} is not installed (make test-system installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(workdir / "merged"):  # left mounted by an interrupted run
        subprocess.run(["umount", "--lazy", str(workdir / "merged")], check=False)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one system test at a time on this machine
        started = time.monotonic()
        image, wheels = rootfs(workdir), wheelhouse(workdir)
        log.info("caches ready in %.0f s", time.monotonic() - started)
        station = Station(image, wheels, workdir)
        try:
            started = time.monotonic()
            station.boot()
            log.info("container booted in %.1f s (systemd PID 1 is host PID %d)", time.monotonic() - started,
                     station.pid1)
            yield station
        finally:
            with contextlib.suppress(Exception):
                (workdir / "journal.txt").write_text(station.sh("journalctl -b --no-pager", check=False).stdout)
            station.shutdown()
