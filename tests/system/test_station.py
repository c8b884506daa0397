"""A station administrator installs nvr on a bare Debian 12 server, and systemd runs it.

Real systemd 252 as PID 1 in a ``systemd-nspawn --boot`` container (see ``station.py``), the
README's Deployment steps as ``deploy/install-station.sh``, the unit exactly as shipped in
``systemd/nvr.service``, and a simulated camera that requires RTSP authentication. The tests
run in order on one container and tell one story: installed and ready, recording under the
full syscall filter with the password from ``LoadCredential=``, restarted by the watchdog when
hung, stopped cleanly, and a journal without refused system calls.

Run with ``make test-system`` (root; installs debootstrap and systemd-container). Logs of the
last run: ``/var/cache/nvr-system-test/last-run/``.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.client import SimCamera
from tests.conftest import wait_until
from tests.system.station import CACHE, REPO, Station, Unsupported, booted

pytestmark = [pytest.mark.system, pytest.mark.timeout(1200)]
log = logging.getLogger(__name__)

CAMERA_USER = "viewer"
CAMERA_PASSWORD = "Pa55@w:rd%21!"  # percent-encoded into the URL by the daemon, never logged
ADMIN_PASSWORD = "correct horse battery staple"
CAMERA_PORT = 8554
SEGMENT_SECONDS = 4
CONFIG = f"""\
station: {{id: st-system, name: "System test station"}}
storage: {{path: /var/lib/nvr, segment_seconds: {SEGMENT_SECONDS}}}
web: {{listen: "127.0.0.1:8080"}}
log: {{level: info}}
cameras:
  - id: cell-1
    name: Holding cell 1
    zone: holding_cell
    url: rtsp://{CAMERA_USER}:${{CELL1_PASS}}@127.0.0.1:{CAMERA_PORT}/stream
"""
RECORDINGS = "var/lib/nvr/recordings/cell-1"
REFUSED = re.compile(r"Operation not permitted|EPERM|seccomp|SIGSYS|Bad system call", re.I)


@pytest.fixture(scope="module")
def station() -> Iterator[Station]:
    try:
        with booted(CACHE / "last-run") as station:
            yield station
    except Unsupported as exc:
        pytest.skip(f"no real systemd can run here: {exc}")


@pytest.fixture(scope="module")
def camera(station: Station, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCamera]:
    # camsim runs on this host with Debian's python3, inside the container's network namespace.
    wrapper = tmp_path_factory.mktemp("camsim") / "python-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {station.netns} /usr/bin/python3 "$@"\n')
    wrapper.chmod(0o755)
    mp = pytest.MonkeyPatch()
    mp.setenv("CAMSIM_PYTHON", str(wrapper))
    cam = SimCamera("cell-1", port=CAMERA_PORT, user=CAMERA_USER, password=CAMERA_PASSWORD,
                    log_path=station.workdir / "camsim.log")
    cam.start()
    try:
        yield cam
    finally:
        cam.stop()
        mp.undo()


def segments(station: Station) -> list[Path]:
    return sorted((station.root / RECORDINGS).glob("*/*.mp4"))


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height:format=duration",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main_pid(station: Station) -> int:
    return int(station.show("nvr", "MainPID")["MainPID"])


def test_administrator_installs_the_station_and_systemd_reports_it_ready(station: Station,
                                                                         camera: SimCamera) -> None:
    # As the README says: a first run installs the annotated example config and stops ...
    started = time.monotonic()
    script = "/usr/src/nvr/deploy/install-station.sh --wheels /var/cache/nvr-wheels"
    first = station.sh(script, timeout=600, check=False)
    (station.workdir / "install-1.log").write_text(first.stdout + first.stderr)
    assert first.returncode == 0, f"install-station.sh failed:\n{first.stdout[-5000:]}\n{first.stderr[-3000:]}"
    assert "Edit /etc/nvr/config.yaml" in first.stdout
    config = station.root / "etc/nvr/config.yaml"
    assert config.read_text() == (REPO / "config.yaml").read_text()
    # ... the administrator edits it and stores the camera password where LoadCredential=CELL1_PASS
    # finds it (no terminal here to answer the script's prompt) ...
    config.write_text(CONFIG)
    station.sh("umask 077 && cat > /etc/credstore/CELL1_PASS", input=CAMERA_PASSWORD)
    # ... and runs it again with the first admin (the password on standard input).
    install = station.sh(f"{script} --admin admin", input=ADMIN_PASSWORD + "\n", timeout=600, check=False)
    (station.workdir / "install-2.log").write_text(install.stdout + install.stderr)
    assert install.returncode == 0, f"install-station.sh failed:\n{install.stdout[-5000:]}\n{install.stderr[-3000:]}"
    log.info("install-station.sh took %.1f s", time.monotonic() - started)

    status = station.sh("systemctl --no-pager status nvr", check=False).stdout
    log.info("systemctl status nvr:\n%s", "\n".join(status.splitlines()[:8]))
    assert "Active: active (running)" in status
    shown = station.show("nvr", "Type", "ActiveState", "SubState", "StatusText", "NotifyAccess", "UnitFileState",
                         "LimitNOFILE", "LimitNOFILESoft")
    # Type=notify: systemd calls it active only after READY=1; STATUS=running came in the same message.
    assert shown["Type"] == "notify" and shown["NotifyAccess"] == "main"
    assert (shown["ActiveState"], shown["SubState"], shown["StatusText"]) == ("active", "running", "running")
    assert shown["UnitFileState"] == "enabled"
    # LimitNOFILE=65536; where the container may not raise the hard limit (no CAP_SYS_RESOURCE)
    # systemd applies the closest it can. Either way, well above the default soft limit of 1024.
    limits = station.sh(f"cat /proc/{main_pid(station)}/limits").stdout
    soft, hard = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M).groups()  # type: ignore[union-attr]
    log.info("LimitNOFILE: configured %s, in effect soft %s hard %s", shown["LimitNOFILE"], soft, hard)
    assert shown["LimitNOFILE"] == "65536" and int(soft) > 1024
    exposure = station.sh("systemd-analyze security --no-pager nvr.service", check=False).stdout.strip()
    log.info("systemd-analyze security (online): %s", exposure.splitlines()[-1] if exposure else "?")
    users = station.sh("nvr-admin user list -c /etc/nvr/config.yaml").stdout
    assert re.search(r"^admin\tadmin\t", users, re.M), users
    assert "GET /healthz: 200" in install.stdout or "GET /healthz: 503" in install.stdout


def test_records_the_camera_under_the_syscall_filter_with_the_password_from_loadcredential(
        station: Station, camera: SimCamera) -> None:
    wait_until(lambda: len(segments(station)) >= 3, 60, "no three finished segments")
    for path in segments(station)[:3]:
        probe = ffprobe(path)
        assert probe["streams"][0]["codec_name"] == "h264"
        assert (probe["streams"][0]["width"], probe["streams"][0]["height"]) == (640, 360)
        assert SEGMENT_SECONDS - 1 <= float(probe["format"]["duration"]) <= SEGMENT_SECONDS + 3, probe

    pid = main_pid(station)
    status = dict(line.split(":\t", 1) for line in station.sh(f"cat /proc/{pid}/status").stdout.splitlines()
                  if ":\t" in line)
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["Uid"].split()[0] == station.sh("id -u nvr").stdout.strip()
    environ = station.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout
    assert "CREDENTIALS_DIRECTORY=/run/credentials/nvr.service" in environ
    assert CAMERA_PASSWORD not in environ
    assert station.sh("cat /run/credentials/nvr.service/CELL1_PASS").stdout == CAMERA_PASSWORD

    # Live view exercises aiortc (ICE over netlink, UDP, DTLS) under the same filter.
    token = station.sh("nvr-admin token create -c /etc/nvr/config.yaml --name system-test --role admin"
                       ).stdout.strip().splitlines()[-1]
    whep = station.in_netns([sys.executable, str(Path(__file__).with_name("whep_client.py")),
                             "http://127.0.0.1:8080", "cell-1", token], timeout=90, cwd=REPO)
    assert whep.returncode == 0, whep.stdout + whep.stderr
    log.info("live view: %s", whep.stdout.strip())
    assert json.loads(whep.stdout)["frames"] >= 10
    # Picture checks decode keyframes (PyAV) and analyse them (OpenCV, NumPy) under the filter too.
    metrics = station.in_netns([sys.executable, "-c", "import sys, urllib.request; print(urllib.request.urlopen("
                                "urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2]}),"
                                " timeout=10).read().decode())", "http://127.0.0.1:8080/metrics", token])
    analysed = re.search(r'^nvr_health_analyses_total\{camera="cell-1"\} (\S+)', metrics.stdout, re.M)
    assert analysed and float(analysed.group(1)) > 0, metrics.stdout[-2000:] + metrics.stderr
    log.info("picture checks: %s keyframes analysed", analysed.group(1))


def test_a_hung_daemon_is_killed_and_restarted_by_the_watchdog(station: Station, camera: SimCamera) -> None:
    before = station.show("nvr", "MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "30s"
    station.sh(f"kill -STOP {before['MainPID']}")
    stopped = time.monotonic()

    def restarted() -> dict[str, str] | None:
        now = station.show("nvr", "MainPID", "NRestarts", "ActiveState", "SubState")
        ok = (int(now["NRestarts"]) > int(before["NRestarts"]) and now["MainPID"] not in ("0", before["MainPID"])
              and now["SubState"] == "running")
        return now if ok else None

    after = wait_until(restarted, 120, "the watchdog did not restart the hung daemon")
    assert after is not None
    log.info("watchdog: MainPID %s -> %s, NRestarts %s, %.0f s after SIGSTOP", before["MainPID"],
             after["MainPID"], after["NRestarts"], time.monotonic() - stopped)
    journal = station.journal()
    lines = [line for line in journal.splitlines() if re.search(r"Watchdog timeout|SIGABRT|Scheduled restart", line)]
    log.info("journal:\n%s", "\n".join(lines))
    assert any("Watchdog timeout (limit 30s)!" in line for line in lines)

    # Recording resumes after the restart.
    count = len(segments(station))
    wait_until(lambda: len(segments(station)) >= count + 2, 60, "no new segments after the restart")


def test_systemctl_stop_ends_it_cleanly_with_the_last_segment_indexed(station: Station,
                                                                     camera: SimCamera) -> None:
    started = time.monotonic()
    station.sh("systemctl stop nvr", timeout=60)
    took = time.monotonic() - started
    shown = station.show("nvr", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "TimeoutStopUSec")
    log.info("systemctl stop took %.1f s: %s", took, shown)
    assert shown["ActiveState"] == "inactive" and shown["Result"] == "success"
    assert (shown["ExecMainCode"], shown["ExecMainStatus"]) == ("1", "0")  # CLD_EXITED, status 0
    assert took < 15  # TimeoutStopSec=15

    on_disk = {str(p.relative_to(station.root / "var/lib/nvr")) for p in segments(station)}
    assert not list((station.root / RECORDINGS).glob("*/*.part")), "a half-written segment was left behind"
    rows = station.sh(
        "runuser -u nvr -- /opt/nvr/venv/bin/python -c "
        "'import json, sqlite3; db = sqlite3.connect(\"/var/lib/nvr/index.sqlite3\"); "
        "print(json.dumps(db.execute(\"SELECT path, status FROM segments\").fetchall()))'").stdout
    indexed = {path: status for path, status in json.loads(rows)}
    assert on_disk and on_disk <= set(indexed), f"not in the index: {sorted(on_disk - set(indexed))}"
    last = max(on_disk)
    assert indexed[last] == "ok", (last, indexed[last])
    log.info("%d segments on disk, all indexed; the last: %s", len(on_disk), last)
    verify = station.sh("nvr-admin verify-storage -c /etc/nvr/config.yaml", check=False)
    log.info("nvr verify-storage: exit %d\n%s", verify.returncode, verify.stdout[-1500:])
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_not_one_system_call_is_refused_even_when_a_refusal_would_kill(station: Station,
                                                                      camera: SimCamera) -> None:
    # The unit answers a filtered call with EPERM, which a library may swallow without a word.
    # For this run a runtime drop-in makes any refused call kill the process (SIGSYS, and the
    # kernel names the call): recording, picture checks (OpenCV), live view (aiortc) and a stop.
    dropin = "/run/systemd/system/nvr.service.d"
    station.sh(f"mkdir -p {dropin} && printf '[Service]\\nSystemCallErrorNumber=kill\\n' > {dropin}/strict.conf"
               " && systemctl daemon-reload && systemctl start nvr")
    try:
        # The control: under the same filter a privileged call (chroot) is now fatal.
        control = station.sh("systemd-run --wait -p User=nvr -p NoNewPrivileges=yes "
                             "-p SystemCallFilter=@system-service -p SystemCallFilter=~@privileged "
                             "-p SystemCallErrorNumber=kill /opt/nvr/venv/bin/python -c 'import os; os.chroot(\"/\")'",
                             check=False)
        assert "code=killed/status=SYS" in control.stderr, control
        assert station.show("nvr", "SystemCallErrorNumber")["SystemCallErrorNumber"] != "1"  # EPERM no more
        count = len(segments(station))
        wait_until(lambda: len(segments(station)) >= count + 3, 60, "no new segments under SystemCallErrorNumber=kill")
        token = station.sh("nvr-admin token create -c /etc/nvr/config.yaml --name system-test-strict --role admin"
                           ).stdout.strip().splitlines()[-1]
        whep = station.in_netns([sys.executable, str(Path(__file__).with_name("whep_client.py")),
                                 "http://127.0.0.1:8080", "cell-1", token], timeout=90, cwd=REPO)
        assert whep.returncode == 0, whep.stdout + whep.stderr
        shown = station.show("nvr", "NRestarts", "SubState")
        station.sh("systemctl stop nvr", timeout=60)
        after = station.show("nvr", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts")
        assert (after["Result"], after["ExecMainCode"], after["ExecMainStatus"]) == ("success", "1", "0"), after
        assert after["NRestarts"] == shown["NRestarts"] and shown["SubState"] == "running"
    finally:
        station.sh(f"rm -f {dropin}/strict.conf && systemctl daemon-reload", check=False)
    killed = [line for line in station.journal().splitlines() if re.search(r"status=(31/)?SYS", line)]
    assert not killed, "\n".join(killed)
    log.info("SystemCallErrorNumber=kill: recorded, live view, stopped with status 0; nothing refused")


def test_the_journal_shows_no_refused_system_calls_and_no_password(station: Station) -> None:
    journal = station.journal()
    (station.workdir / "nvr-journal.txt").write_text(journal)
    refused = [line for line in journal.splitlines() if REFUSED.search(line)]
    assert not refused, "\n".join(refused)
    assert CAMERA_PASSWORD not in journal
    assert "Started nvr.service" in journal and "Stopped nvr.service" in journal
