"""An auditor's story: find what was recorded around an outage, play a clip, export signed evidence, verify it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nvr.base.timeutil import iso
from recorder.index import SegmentIndex
from tests.conftest import REPO, StationProcess, wait_until

FPS = 15


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One camera recorded in 3 s segments, with a camera outage of a few seconds in the middle."""
    from sim.client import SimCamera

    workdir = tmp_path_factory.mktemp("evidence")
    cam = SimCamera("ev", fps=FPS, gop=FPS)
    cam.start()
    daemon = StationProcess(workdir, [{"id": "cell-2", "name": "Holding cell 2", "zone": "holding_cell", "url": cam.url},
                              {"id": "hall", "name": "Hall", "url": "rtsp://127.0.0.1:1/none"}],
                    storage={"segment_seconds": 3}, recordings={"max_range_hours": 1, "max_export_jobs": 2})
    daemon.start()
    try:
        daemon.wait_state("cell-2", "online")
        wait_until(lambda: segments(daemon) >= 3, 30, "first segments")
        cam.stop()
        daemon.wait_state("cell-2", "offline", timeout=10)
        time.sleep(2)
        outage_end = time.time()
        cam.start()
        daemon.wait_state("cell-2", "online", timeout=20)
        before = segments(daemon)
        wait_until(lambda: segments(daemon) >= before + 2, 30, "segments after the outage")
        yield {"daemon": daemon, "camera": cam, "outage_end": outage_end}
    finally:
        daemon.stop()
        cam.stop()


def segments(daemon: StationProcess) -> int:
    index = SegmentIndex(daemon.storage / "index.sqlite3")
    try:
        return len(index.all_segments("cell-2"))
    finally:
        index.close()


def q(**params: str) -> str:
    return urllib.parse.urlencode(params)


def nvr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_search_across_outage_shows_two_spans_and_the_gap(recorded: dict[str, Any]) -> None:
    daemon: StationProcess = recorded["daemon"]
    now = time.time()
    status, body = daemon.get("/api/recordings?" + q(camera="cell-2", start=iso(now - 120), end=iso(now)))
    assert status == 200, body
    assert len(body["spans"]) == 2, body["spans"]
    inner = [g for g in body["gaps"] if g["start"] == body["spans"][0]["end"]]
    assert len(inner) == 1 and inner[0]["seconds"] >= 2
    assert "offline" in (inner[0]["cause"] or ""), inner  # explained by the camera's outage alarm
    assert body["segments"] and all(len(s["sha256"]) == 64 for s in body["segments"])
    assert all(s["start"].endswith("Z") for s in body["segments"])
    # input with an offset instead of Z means the same instant
    status, same = daemon.get("/api/recordings?" + q(
        camera="cell-2", start=time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(now - 120 + 7200)),
        end=iso(now)))
    assert status == 200 and len(same["spans"]) == 2


def test_clip_across_segment_boundaries_plays_continuously(recorded: dict[str, Any], tmp_path: Path) -> None:
    daemon: StationProcess = recorded["daemon"]
    index = SegmentIndex(daemon.storage / "index.sqlite3")
    rows = index.all_segments("cell-2")
    index.close()
    first = rows[0]
    start, end = first.start + 0.5, first.start + 7.5  # crosses two boundaries (3 s segments)
    status, data = daemon.get(f"/api/recordings/cell-2/clip.mp4?{q(start=iso(start), end=iso(end))}")
    assert status == 200 and isinstance(data, bytes)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                          "frame=key_frame,pts_time", "-of", "json", str(clip)], capture_output=True, text=True,
                         check=True)
    frames = json.loads(out.stdout)["frames"]
    assert frames[0]["key_frame"] == 1  # starts at the keyframe at or before start
    times = [float(f["pts_time"]) for f in frames]
    duration = times[-1] - times[0] + 1 / FPS
    assert abs(duration - (end - first.start)) <= 1.0 + 1 / FPS  # ±1 GOP (the keyframe before start)
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(steps) < 3 / FPS and min(steps) > 0  # no timestamp discontinuity at the boundaries
    check = subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-fps_mode", "passthrough", "-enc_time_base", "-1", "-f", "null", "-"], capture_output=True,
                           text=True)
    assert check.returncode == 0 and not check.stderr.strip()


def test_bad_requests_name_the_field(recorded: dict[str, Any]) -> None:
    daemon: StationProcess = recorded["daemon"]
    now = time.time()
    cases = [
        ("/api/recordings?" + q(camera="cell-2", start=iso(now), end=iso(now - 10)), 400, "end"),
        ("/api/recordings?" + q(camera="cell-2", start="yesterday", end=iso(now)), 400, "start"),
        ("/api/recordings?" + q(camera="cell-2", start="2026-01-01T00:00:00", end=iso(now)), 400, "start"),
        ("/api/recordings?" + q(camera="nope", start=iso(now - 10), end=iso(now)), 404, "camera"),
        ("/api/recordings/cell-2/clip.mp4?" + q(start=iso(now - 7200), end=iso(now)), 400, "limit"),
        ("/api/recordings/cell-2/clip.mp4?" + q(start=iso(now - 86400 * 300), end=iso(now - 86400 * 300 + 60)),
         404, "no recordings"),
        # Traversal is refused before routing (access control, see test_access.py): 400 bad_path.
        ("/api/recordings/..%2f..%2fetc/clip.mp4?" + q(start=iso(now - 10), end=iso(now)), 400, ""),
    ]
    for path, status, needle in cases:
        got, body = daemon.get(path)
        assert got == status, (path, body)
        assert isinstance(body, dict) and "error" in body and needle in body["message"], (path, body)
    got, body = daemon.request("POST", "/api/exports", {"cameras": ["cell-2"], "start": iso(now - 60),
                                                        "end": iso(now)})
    assert got == 400 and body["message"].startswith("reason")
    got, body = daemon.request("POST", "/api/exports", b"{not json", headers={"Content-Type": "application/json"})
    assert got == 400 and body["error"] == "invalid_json"
    got, body = daemon.request("POST", "/api/exports", {"cameras": ["cell-2", "ghost"], "start": iso(now - 60),
                                                        "end": iso(now), "reason": "x"})
    assert got == 404 and "ghost" in body["message"]


@contextlib.contextmanager
def altered_segment(daemon: StationProcess, tmp_path: Path) -> Iterator[Any]:
    """One byte of an indexed segment flipped on disk, as an insider with the daemon's account could; put back after."""
    index = SegmentIndex(daemon.storage / "index.sqlite3")
    victim = index.all_segments("cell-2")[1]
    index.close()
    path = daemon.storage / victim.path
    backup = tmp_path / "backup.mp4"
    shutil.copy2(path, backup)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    try:
        yield victim
    finally:
        shutil.copy2(backup, path)


def export_package(daemon: StationProcess, tmp_path: Path, start: float, end: float) -> Path:
    status, job = daemon.request("POST", "/api/exports", {
        "cameras": ["cell-2"], "start": iso(start), "end": iso(end), "reason": "complaint 2026/113"})
    assert status == 202, job

    def done() -> dict[str, Any] | None:
        _, state = daemon.get(f"/api/exports/{job['id']}")
        assert state["state"] != "failed", state
        return state if state["state"] == "done" else None

    state = wait_until(done, 60, "export never finished")
    assert state["progress"] == 1.0
    status, data = daemon.get(state["download"])
    assert status == 200
    package = tmp_path / "package.zip"
    package.write_bytes(data)
    return package


def rewrite(package: Path, target: Path, change: Any) -> Path:
    """Copy a zip, letting ``change(name, data)`` alter or drop (None) each member."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = change(item.filename, src.read(item.filename))
            if data is not None:
                dst.writestr(item.filename, data)
    return target


def test_export_verifies_and_every_tampering_fails(recorded: dict[str, Any], tmp_path: Path) -> None:
    daemon: StationProcess = recorded["daemon"]
    now = time.time()
    package = export_package(daemon, tmp_path, now - 120, now)
    _, key = daemon.get("/api/key")
    pubkey = tmp_path / "station.pem"
    pubkey.write_text(key["public_key_pem"])

    ok = nvr("verify", str(package), "--pubkey", str(pubkey))
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    assert key["fingerprint"] in ok.stdout

    with zipfile.ZipFile(package) as z:
        manifest = json.loads(z.read("manifest.json"))
        names = z.namelist()
    assert manifest["reason"] == "complaint 2026/113" and manifest["station"]["id"] == "st-test"
    camera = manifest["cameras"][0]
    assert camera["id"] == "cell-2" and camera["zone"] == "holding_cell"
    assert len(camera["gaps"]) >= 1 and len(camera["spans"]) == 2
    videos = [n for n in names if n.startswith("cameras/cell-2/")]
    assert len(videos) == len(camera["segments"]) >= 4
    assert {"manifest.json", "manifest.sig", "public_key.pem", "VERIFY.txt"} <= set(names)

    def flip(name: str, data: bytes) -> bytes:
        if name == videos[1]:
            middle = len(data) // 2
            return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        return data

    bad = nvr("verify", str(rewrite(package, tmp_path / "flipped.zip", flip)), "--pubkey", str(pubkey))
    assert bad.returncode == 1
    assert f"FAIL {videos[1]}" in bad.stdout and "SHA-256 mismatch" in bad.stdout and "segment" in bad.stdout

    def edit(name: str, data: bytes) -> bytes:
        return data.replace(b"complaint 2026/113", b"complaint 2026/999") if name == "manifest.json" else data

    bad = nvr("verify", str(rewrite(package, tmp_path / "edited.zip", edit)), "--pubkey", str(pubkey))
    assert bad.returncode == 1 and "manifest.json: signature does not verify" in bad.stdout

    def remove(name: str, data: bytes) -> bytes | None:
        return None if name == videos[2] else data

    bad = nvr("verify", str(rewrite(package, tmp_path / "removed.zip", remove)), "--pubkey", str(pubkey))
    assert bad.returncode == 1 and f"{videos[2]}" in bad.stdout and "missing from the package" in bad.stdout

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from recorder.keys import public_pem

    other = tmp_path / "other.pem"
    other.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    bad = nvr("verify", str(package), "--pubkey", str(other))
    assert bad.returncode == 1 and "signature does not verify" in bad.stdout

    def insert(name: str, data: bytes) -> bytes:
        return data

    inserted = rewrite(package, tmp_path / "inserted.zip", insert)
    with zipfile.ZipFile(inserted, "a") as z:
        z.writestr("cameras/cell-2/extra.mp4", b"not evidence")
    bad = nvr("verify", str(inserted), "--pubkey", str(pubkey))
    assert bad.returncode == 1 and "extra.mp4: not listed in the manifest" in bad.stdout


def test_cli_export_and_verify_storage_catches_altered_segment(recorded: dict[str, Any], tmp_path: Path) -> None:
    daemon: StationProcess = recorded["daemon"]
    now = time.time()
    out = tmp_path / "cli.zip"
    result = nvr("export", "-c", str(daemon.config_path), "--camera", "cell-2", "--start", iso(now - 120),
                 "--end", iso(now), "--reason", "court order 7", "-o", str(out))
    assert result.returncode == 0, result.stderr
    unanchored = nvr("verify", str(out))
    assert unanchored.returncode == 3 and "NOT authenticated" in unanchored.stdout, unanchored.stdout
    shown = nvr("key", "show", "-c", str(daemon.config_path))
    _, key = daemon.get("/api/key")
    assert shown.returncode == 0 and key["fingerprint"] in shown.stdout
    anchored = nvr("verify", str(out), "--fingerprint", key["fingerprint"])
    assert anchored.returncode == 0 and "OK" in anchored.stdout, anchored.stdout

    clean = nvr("verify-storage", "-c", str(daemon.config_path), "--camera", "cell-2")
    assert clean.returncode == 0, clean.stdout
    with altered_segment(daemon, tmp_path) as victim:
        bad = nvr("verify-storage", "-c", str(daemon.config_path), "--camera", "cell-2")
        assert bad.returncode == 1
        assert f"segment {victim.path}: file modified (SHA-256 mismatch)" in bad.stdout


def test_holds_api(recorded: dict[str, Any]) -> None:
    daemon: StationProcess = recorded["daemon"]
    now = time.time()
    status, hold = daemon.request("POST", "/api/holds", {"camera": "cell-2", "start": iso(now - 60),
                                                         "end": iso(now), "reason": "complaint 2026/113"})
    assert status == 201 and hold["reason"] == "complaint 2026/113"
    _, holds = daemon.get("/api/holds")
    assert [h["id"] for h in holds] == [hold["id"]]
    status, body = daemon.request("POST", "/api/holds", {"camera": "cell-2", "start": iso(now), "end": iso(now - 5),
                                                         "reason": "x"})
    assert status == 400 and body["message"].startswith("end")
    assert daemon.request("DELETE", f"/api/holds/{hold['id']}")[0] == 204
    assert daemon.request("DELETE", f"/api/holds/{hold['id']}")[0] == 404
    assert daemon.get("/api/holds")[1] == []


def test_export_queue_full_answers_503(tmp_path: Path) -> None:
    from recorder.export import ExportRequest
    from recorder.export_jobs import ExportLimits, ExportQueue, QueueFull
    from recorder.keys import StationKey

    limits = ExportLimits(quota_bytes=1 << 30, keep_seconds=3600, keep_after_download_seconds=60, min_free_percent=5)
    queue = ExportQueue(tmp_path, tmp_path / "exports", StationKey.load_or_create(tmp_path), {"id": "s", "name": "s"},
                        {}, max_jobs=1, limits=limits)
    request = ExportRequest(["c"], 0.0, 1.0, "r", "u")
    import asyncio

    async def submit_concurrently() -> None:
        # Both submissions race; the slot is taken before any await, so exactly one gets in.
        results = await asyncio.gather(queue.submit(request), queue.submit(request), return_exceptions=True)
        assert sum(isinstance(r, QueueFull) for r in results) == 1, results

    asyncio.run(submit_concurrently())


# -- an adversary's packages (issue 11) ---------------------------------------------------------


def station_private(daemon: StationProcess) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key((daemon.storage / "keys" / "station-ed25519.pem").read_bytes(), None)


def resign(package: Path, target: Path, private: Any, edit_manifest: Any = None, edit_member: Any = None,
           embed_key: bool = True) -> Path:
    """Rebuild a package with an edited manifest, signed by ``private`` (the station's or a forger's)."""
    from recorder.keys import public_pem

    with zipfile.ZipFile(package) as src:
        members = {i.filename: src.read(i.filename) for i in src.infolist()}
    manifest = json.loads(members["manifest.json"])
    if edit_member is not None:
        for name in list(members):
            members[name] = edit_member(name, members[name], manifest)
    if edit_manifest is not None:
        edit_manifest(manifest)
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
    members["manifest.json"] = raw
    members["manifest.sig"] = private.sign(raw)
    if embed_key:
        members["public_key.pem"] = public_pem(private.public_key())
    with zipfile.ZipFile(target, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    return target


@pytest.fixture(scope="module")
def package(recorded: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    daemon: StationProcess = recorded["daemon"]
    workdir = tmp_path_factory.mktemp("packages")
    now = time.time()
    path = export_package(daemon, workdir, now - 120, now)
    _, key = daemon.get("/api/key")
    pubkey = workdir / "station.pem"
    pubkey.write_text(key["public_key_pem"])
    return {"path": path, "pubkey": pubkey, "fingerprint": key["fingerprint"], "dir": workdir}


def test_a_package_re_signed_with_a_fresh_key_is_not_trusted(recorded: dict[str, Any], package: dict[str, Any]
                                                             ) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from recorder.keys import fingerprint

    forger = Ed25519PrivateKey.generate()

    def rewrite_reason(manifest: dict[str, Any]) -> None:
        manifest["reason"] = "complaint 2026/999"

    # A careless forger leaves the station's key_fingerprint in the manifest: caught even without an anchor.
    careless = resign(package["path"], package["dir"] / "careless.zip", forger, rewrite_reason)
    bad = nvr("verify", str(careless))
    assert bad.returncode == 1 and "is not the key that signed it" in bad.stdout, bad.stdout

    # A careful one names their own key: consistent, so without an anchor the verdict is 3, never OK ...
    def own_fingerprint(manifest: dict[str, Any]) -> None:
        rewrite_reason(manifest)
        manifest["key_fingerprint"] = fingerprint(forger.public_key())

    careful = resign(package["path"], package["dir"] / "careful.zip", forger, own_fingerprint)
    alone = nvr("verify", str(careful))
    assert alone.returncode == 3, alone.stdout
    assert "UNAUTHENTICATED" in alone.stdout and "OK:" not in alone.stdout
    # ... and with the station's key or fingerprint it fails, the signature's failure said first.
    for anchor in (["--pubkey", str(package["pubkey"])], ["--fingerprint", package["fingerprint"]]):
        bad = nvr("verify", str(careful), *anchor)
        assert bad.returncode == 1, (anchor, bad.stdout)
        assert bad.stdout.startswith("FAIL "), bad.stdout
    by_key = nvr("verify", str(careful), "--pubkey", str(package["pubkey"]))
    assert "re-signed by someone else" in by_key.stdout, by_key.stdout


def test_fingerprint_keyring_and_pubkey_anchors_accept_the_real_package(package: dict[str, Any]) -> None:
    from recorder.trust import KEYRING_FORMAT

    for anchor in (["--pubkey", str(package["pubkey"])], ["--fingerprint", package["fingerprint"]],
                   ["--fingerprint", package["fingerprint"].replace("SHA256:", "").replace(":", "").upper()]):
        ok = nvr("verify", str(package["path"]), *anchor)
        assert ok.returncode == 0 and "OK: package verified" in ok.stdout, (anchor, ok.stdout)
    ring = package["dir"] / "ring.json"
    ring.write_text(json.dumps({"format": KEYRING_FORMAT, "keys": [
        {"station": "st-test", "fingerprint": package["fingerprint"], "public_key_pem": package["pubkey"].read_text()}]}))
    assert nvr("verify", str(package["path"]), "--keyring", str(ring)).returncode == 0
    # the right key listed for another station: the package claims st-test, the keyring says otherwise
    ring.write_text(json.dumps({"format": KEYRING_FORMAT, "keys": [
        {"station": "st-other", "fingerprint": package["fingerprint"], "public_key_pem": package["pubkey"].read_text()}]}))
    wrong = nvr("verify", str(package["path"]), "--keyring", str(ring))
    assert wrong.returncode == 1 and "st-other" in wrong.stdout
    bad = nvr("verify", str(package["path"]), "--fingerprint", "SHA256:1234")
    assert bad.returncode == 2 and "64 hex digits" in bad.stderr and "Traceback" not in bad.stderr


def test_a_segment_whose_hash_differs_from_the_index_does_not_verify(recorded: dict[str, Any],
                                                                     package: dict[str, Any]) -> None:
    """What the old exporter produced for a segment changed on disk: files[] carries the new hash, the
    segment its indexed one, and the station's key signs it all. It must not verify."""
    import hashlib

    daemon: StationProcess = recorded["daemon"]
    with zipfile.ZipFile(package["path"]) as z:
        manifest = json.loads(z.read("manifest.json"))
    victim = manifest["cameras"][0]["segments"][1]["file"]

    def flip(name: str, data: bytes, manifest: dict[str, Any]) -> bytes:
        if name != victim:
            return data
        changed = data[:100] + bytes([data[100] ^ 0x01]) + data[101:]
        for entry in manifest["files"]:
            if entry["path"] == name:
                entry["sha256"] = hashlib.sha256(changed).hexdigest()
        return changed

    old_style = resign(package["path"], package["dir"] / "old-style.zip", station_private(daemon), edit_member=flip)
    bad = nvr("verify", str(old_style), "--pubkey", str(package["pubkey"]))
    assert bad.returncode == 1, bad.stdout
    assert f"FAIL {victim}" in bad.stdout and "not the one the station recorded" in bad.stdout


def test_a_segment_changed_on_disk_after_indexing_is_not_exported(recorded: dict[str, Any], tmp_path: Path) -> None:
    daemon: StationProcess = recorded["daemon"]
    with altered_segment(daemon, tmp_path) as victim:
        status, job = daemon.request("POST", "/api/exports", {
            "cameras": ["cell-2"], "start": iso(victim.start - 5), "end": iso(victim.end + 5), "reason": "test"})
        assert status == 202, job

        def finished() -> dict[str, Any] | None:
            _, state = daemon.get(f"/api/exports/{job['id']}")
            return state if state["state"] in ("done", "failed") else None

        state = wait_until(finished, 60, "export never finished")
        assert state["state"] == "failed", state
        assert Path(victim.path).name in state["error"] and "modified after it was written" in state["error"]
        assert str(daemon.storage) not in state["error"] and "/tmp" not in state["error"]  # no absolute paths
        assert daemon.get(f"/api/exports/{job['id']}/download")[0] == 409
        exports = daemon.storage / "exports"
        assert not list(exports.glob("*.partial")) and not (exports / f"{job['id']}.zip").exists()
        cli = nvr("export", "-c", str(daemon.config_path), "--camera", "cell-2", "--start", iso(victim.start - 5),
                  "--end", iso(victim.end + 5), "--reason", "court order 8", "-o", str(tmp_path / "cli.zip"))
        assert cli.returncode == 1 and "modified after it was written" in cli.stderr, cli.stderr
        assert not (tmp_path / "cli.zip").exists() and not (tmp_path / "cli.partial").exists()


def _zip_with(target: Path, members: list[tuple[str, bytes]]) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names: that is the point
        with zipfile.ZipFile(target, "w") as z:
            for name, data in members:
                z.writestr(zipfile.ZipInfo(name), data)
    return target


def test_duplicate_and_unsafe_entry_names_fail_cleanly(package: dict[str, Any]) -> None:
    with zipfile.ZipFile(package["path"]) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    video = next(n for n, _ in members if n.startswith("cameras/"))
    cases = {
        "duplicate": (members + [(video, b"another copy shown by other tools")], "two entries with this name"),
        "dotdot": (members + [("cameras/../../etc/passwd", b"x")], "'..'"),
        "absolute": (members + [("/etc/cron.d/evil", b"x")], "absolute path"),
        "backslash": (members + [("cameras\\cell-2\\x.mp4", b"x")], "backslash"),
    }
    for label, (entries, needle) in cases.items():
        bad = nvr("verify", str(_zip_with(package["dir"] / f"{label}.zip", entries)), "--pubkey", str(package["pubkey"]))
        assert bad.returncode == 1, (label, bad.stdout, bad.stderr)
        assert needle in bad.stdout and "Traceback" not in bad.stderr, (label, bad.stdout, bad.stderr)


def _max_rss_mb(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``nvr ARGS`` in a fresh interpreter and report its peak resident memory."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "nvr", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    return result, int(result.stderr.strip().splitlines()[-1]) / 1024


def test_hostile_manifests_fail_in_bounded_memory(recorded: dict[str, Any], package: dict[str, Any]) -> None:
    daemon: StationProcess = recorded["daemon"]
    workdir: Path = package["dir"]
    # A zip bomb: 300 MB of manifest in a few hundred KB.
    bomb = workdir / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("manifest.json", "w") as f:
            f.write(b'{"format": "nvr-evidence-export/1", "reason": "')
            block = b" " * (1 << 20)
            for _ in range(300):
                f.write(block)
            f.write(b'"}')
        z.writestr("manifest.sig", b"\0" * 64)
    assert bomb.stat().st_size < 2 << 20
    result, rss = _max_rss_mb("verify", str(bomb), "--pubkey", str(package["pubkey"]))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "manifest.json" in result.stdout and ("bomb" in result.stdout or "allowed" in result.stdout)
    assert rss < 100, f"verifier peaked at {rss:.0f} MB"

    # Deeply nested JSON, signed by the station itself: a schema failure, not a RecursionError.
    private = station_private(daemon)
    nested = workdir / "nested.zip"
    raw = b"[" * 200_000 + b"]" * 200_000
    with zipfile.ZipFile(nested, "w") as z:
        z.writestr("manifest.json", raw)
        z.writestr("manifest.sig", private.sign(raw))
    result, rss = _max_rss_mb("verify", str(nested), "--pubkey", str(package["pubkey"]))
    assert result.returncode == 1 and "Traceback" not in result.stderr and rss < 100, (result.stdout, rss)
    assert "not the manifest schema" in result.stdout or "manifest.json" in result.stdout

    # The wrong shape, properly signed by the station's key.
    def wrong_shape(manifest: dict[str, Any]) -> None:
        manifest["cameras"] = "cell-2"
        manifest["files"][0]["bytes"] = "many"

    shaped = resign(package["path"], workdir / "shape.zip", private, wrong_shape)
    bad = nvr("verify", str(shaped), "--pubkey", str(package["pubkey"]))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert "cameras" in bad.stdout and "not the manifest schema" in bad.stdout

    # An entry bigger than the manifest says is refused before it is read.
    with zipfile.ZipFile(package["path"]) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    video = next(n for n, _ in members if n.startswith("cameras/"))
    grown = [(n, d + b"\0" * 4096 if n == video else d) for n, d in members]
    bad = nvr("verify", str(_zip_with(workdir / "grown.zip", grown)), "--pubkey", str(package["pubkey"]))
    assert bad.returncode == 1 and "the manifest says" in bad.stdout, bad.stdout

    # Truncated and garbage files.
    for label, data in (("truncated", package["path"].read_bytes()[:5000]), ("garbage", b"PK\x03\x04" + b"x" * 999)):
        target = workdir / f"{label}.zip"
        target.write_bytes(data)
        bad = nvr("verify", str(target), "--pubkey", str(package["pubkey"]))
        assert bad.returncode == 1 and "Traceback" not in bad.stderr and "not a readable zip" in bad.stdout, bad


def test_after_a_signature_failure_it_says_so_first_and_does_not_hash(package: dict[str, Any]) -> None:
    def edit(name: str, data: bytes) -> bytes | None:
        if name == "manifest.json":
            return data.replace(b"complaint 2026/113", b"complaint 2026/999")
        return data

    edited = rewrite(package["path"], package["dir"] / "edited2.zip", edit)
    bad = nvr("verify", str(edited), "--pubkey", str(package["pubkey"]))
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[0].startswith("FAIL manifest.json: signature does not verify")
    assert "file contents were not hashed" in bad.stdout


def test_search_and_coverage_agree_on_the_same_range_including_a_lost_file(recorded: dict[str, Any]) -> None:
    """One timeline: /api/recordings and /api/coverage give the same recorded time and the same gaps."""
    import sqlite3

    daemon: StationProcess = recorded["daemon"]
    index = SegmentIndex(daemon.storage / "index.sqlite3")
    rows = index.all_segments("cell-2")
    index.close()
    victim = rows[1]
    start, end = rows[0].start - 10, rows[-1].end  # nothing in progress, nothing in the future
    path = daemon.storage / victim.path
    data = path.read_bytes()
    db = sqlite3.connect(daemon.storage / "index.sqlite3")
    try:
        path.unlink()  # the file is lost; the index says so, as reconcile would
        db.execute("UPDATE segments SET status = 'missing' WHERE id = ?", (victim.id,))
        db.commit()
        _, found = daemon.get("/api/recordings?" + q(camera="cell-2", start=iso(start), end=iso(end)))
        _, covered = daemon.get("/api/coverage?" + q(camera="cell-2", start=iso(start), end=iso(end)))
    finally:
        path.write_bytes(data)
        db.execute("UPDATE segments SET status = 'ok' WHERE id = ?", (victim.id,))
        db.commit()
        db.close()
    report = covered["cameras"][0]
    assert found["recorded_seconds"] == report["recorded_seconds"]
    assert found["gaps"] == report["gaps"], (found["gaps"], report["gaps"])
    lost = [g for g in found["gaps"] if g["cause"] == "file_missing"]
    assert len(lost) == 1 and lost[0]["start"] == iso(victim.start) and lost[0]["end"] == iso(victim.end)
    assert any(g["cause"] == "offline" for g in found["gaps"])  # the outage, explained the same way in both
    assert victim.id not in [s["id"] for s in found["segments"]]
