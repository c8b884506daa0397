"""Body-camera uploads: throughput beside a plain copy, and what a large upload takes from recording.

Phases (each prints one JSON line, also appended to bench/results/results.jsonl):

- ``bodycam_upload``: one file of ``--mb`` MB (1080p25 H.264 ~4 Mbps in MP4, made by remuxing a
  pre-encoded clip, so about an hour of video for 2 GB) is uploaded over loopback to a daemon with no
  camera (``POST /api/bodycams/{id}/recordings`` with the dock's ``?sha256=``, streamed in 1 MiB
  writes), timed from the first byte to the 201 (receive, hash, fsync, probe every packet, move,
  index).  Baseline in the same run: a plain copy of the same file onto the same disk, with fsync
  (``shutil.copyfile``), and the copy plus a SHA-256 pass (what an upload must do at least).
- ``bodycam_upload_under_recording``: the same upload to a daemon recording N cameras (1080p25 from a
  pre-encoded clip): the daemon's CPU per camera-minute in a window before the upload and during it
  (split into the event-loop thread and the other threads: demux, muxing, hashing, the upload's
  writer and probe threads), the upload's MB/s under that load, and whether every camera kept
  closing segments while it ran.

    python bench/bench_bodycam.py [--mb 2048] [--cameras 16]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_http import per_camera_minute, segments_total, thread_cpu  # noqa: E402
from bench.common import clip_1080p, report  # noqa: E402
from nvr.base.timeutil import iso  # noqa: E402
from nvr.identity.accounts_cli import create_token  # noqa: E402
from nvr.identity.roles import Role  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402

DEVICE = "bwc-0001"
_CHUNK = 1 << 20


def make_file(folder: Path, megabytes: int) -> Path:
    """About ``megabytes`` of 1080p25 H.264 in an MP4, its creation time an hour and a bit ago."""
    ten_seconds = folder / "ten.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-r", "25", "-i", str(clip_1080p()),
                    "-c", "copy", str(ten_seconds)], check=True, timeout=120)
    loops = max(1, round(megabytes * (1 << 20) / ten_seconds.stat().st_size)) - 1
    out = folder / "FILE0001.MP4"
    start = time.time() - 10 * (loops + 1) - 600
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", str(loops), "-i",
                    str(ten_seconds), "-c", "copy", "-metadata", f"creation_time={iso(start)}", str(out)],
                   check=True, timeout=1800)
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def plain_copy(source: Path, target: Path, hashed: bool) -> float:
    started = time.monotonic()
    if hashed:
        digest = hashlib.sha256()
        with source.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    else:
        shutil.copyfile(source, target)
        with target.open("rb") as f:
            os.fsync(f.fileno())
    elapsed = time.monotonic() - started
    target.unlink()
    return elapsed


def upload(daemon: StationProcess, token: str, path: Path, digest: str) -> tuple[float, dict[str, Any]]:
    size = path.stat().st_size
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=600)
    started = time.monotonic()
    conn.putrequest("POST", f"/api/bodycams/{DEVICE}/recordings?sha256={digest}")
    for name, value in (("Authorization", f"Bearer {token}"), ("Content-Type", "video/mp4"),
                        ("Content-Length", str(size))):
        conn.putheader(name, value)
    conn.endheaders()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            conn.send(chunk)
    response = conn.getresponse()
    body = json.loads(response.read())
    elapsed = time.monotonic() - started
    conn.close()
    if response.status != 201:
        raise SystemExit(f"upload failed: {response.status} {body}")
    return elapsed, body


def station(root: Path, cameras: list[dict[str, Any]]) -> tuple[StationProcess, str]:
    root.mkdir()
    daemon = StationProcess(root, cameras, storage={"segment_seconds": 4}, log={"level": "warning"})
    daemon.config["bodycams"] = [{"id": DEVICE, "name": "Body camera 1"}]
    daemon.config_path.write_text(yaml.safe_dump(daemon.config, sort_keys=False))
    token = create_token(daemon.auth_db, "dock", Role.DOCK)
    daemon.start()
    return daemon, token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=2048, help="size of the uploaded file")
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--window", type=float, default=20.0, help="seconds of recording measured before the upload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nvr-bench-bodycam-", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        source = make_file(root, args.mb)
        size = source.stat().st_size
        digest = sha256(source)  # also puts the file in the page cache, for both sides alike
        mb = size / (1 << 20)

        daemon, token = station(root / "idle", [])
        try:
            copy_seconds = plain_copy(source, daemon.storage / "copy.bin", hashed=False)
            copy_hash_seconds = plain_copy(source, daemon.storage / "copy.bin", hashed=True)
            upload_seconds, item = upload(daemon, token, source, digest)
        finally:
            daemon.stop()
        shutil.rmtree(root / "idle")
        report("bodycam_upload", file_mb=round(mb, 1), video_seconds=item["duration_seconds"],
               upload_mb_per_s=round(mb / upload_seconds, 1), copy_mb_per_s=round(mb / copy_seconds, 1),
               copy_and_sha256_mb_per_s=round(mb / copy_hash_seconds, 1),
               upload_vs_copy=round(copy_seconds / upload_seconds, 3),
               upload_vs_copy_and_sha256=round(copy_hash_seconds / upload_seconds, 3))

        clip = clip_1080p()
        cams = [SimCamera(f"r{i}", file=str(clip), fps=25) for i in range(args.cameras)]
        try:
            for cam in cams:
                cam.start()
            daemon, token = station(root / "rec", [{"id": c.name, "name": c.name, "url": c.url} for c in cams])
            try:
                wait_until(lambda: len(segments_total(daemon)) == args.cameras
                           and all(v >= 1 for v in segments_total(daemon).values()), 90, "not every camera recorded")
                assert daemon.proc is not None
                pid = daemon.proc.pid
                t0, cpu0 = time.monotonic(), thread_cpu(pid)
                time.sleep(args.window)
                idle = per_camera_minute(cpu0, thread_cpu(pid), args.cameras, time.monotonic() - t0)
                segs0 = segments_total(daemon)
                t0, cpu0 = time.monotonic(), thread_cpu(pid)
                loaded_seconds, _ = upload(daemon, token, source, digest)
                elapsed = time.monotonic() - t0
                during = per_camera_minute(cpu0, thread_cpu(pid), args.cameras, elapsed)
                segs1 = segments_total(daemon)
                # 4 s segments: every camera closes at least (elapsed / 5) - 1 of them during the upload.
                kept = all(segs1[c] - segs0[c] >= elapsed / 5 - 1 for c in segs0)
            finally:
                daemon.stop()
        finally:
            for cam in cams:
                cam.stop()
        extra = {k: round(during[k] - idle[k], 3) for k in idle}
        report("bodycam_upload_under_recording", file_mb=round(mb, 1), cameras=args.cameras,
               stream="1080p25 H.264 ~4 Mbps", upload_seconds=round(loaded_seconds, 1),
               upload_mb_per_s=round(mb / loaded_seconds, 1), cpu_s_per_camera_min_before=idle,
               cpu_s_per_camera_min_during_upload=during, upload_cpu_s_per_camera_min=extra,
               upload_cpu_seconds=round(extra["total"] * args.cameras * elapsed / 60, 1),
               every_camera_kept_recording=kept)


if __name__ == "__main__":
    main()
