"""Archive uploads against a real radosgw on loopback, next to plain uploads of the same files.

The same files (one-minute segments of a 1080p camera at 4 Mbit/s: 30 MB
each) go to the store three ways, all with boto3 and one connection at a time:

- ``archiver``: recorder.archive.Archiver as the daemon runs it (queue in the
  index, PutObject with Content-MD5, metadata, Object Lock retention), with the
  read-back and hash of every version (``verify_uploads``) and without it;
- ``put_object``: a plain PutObject of each file, nothing else;
- ``upload_file``: boto3's managed transfer (multipart, as ``aws s3 cp`` does).

Reported: MB/s of each, and the archiver's CPU per recorded camera (CPU
seconds of this process per camera-minute of footage uploaded).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3  # noqa: E402
from botocore.config import Config as BotoConfig  # noqa: E402

from bench.common import report  # noqa: E402
from nvr.base.config import Archive  # noqa: E402
from recorder.archive import Archiver  # noqa: E402
from recorder.index import NewSegment, SegmentIndex  # noqa: E402
from recorder.storage import init_storage, segment_relpath  # noqa: E402
from sim.radosgw import RadosGateway  # noqa: E402

CAMERA_MINUTE_BYTES = 4_000_000 // 8 * 60  # 1080p at 4 Mbit/s


def make_segments(root: Path, index: SegmentIndex, count: int, size: int) -> list[Path]:
    paths = []
    t0 = time.time() - 86400
    for n in range(count):
        start = t0 + 60 * n
        rel = segment_relpath("cam", start)
        data = os.urandom(size)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        index.add_segment(NewSegment(camera="cam", start=start, end=start + 60, frames=1500, bytes=size,
                                     sha256=hashlib.sha256(data).hexdigest(), codec="h264", width=1920, height=1080,
                                     params="{}", path=rel))
        paths.append(root / rel)
    return paths


def archive_run(gateway: RadosGateway, bucket: str, root: Path, verify: bool) -> tuple[float, float]:
    """Upload every queued segment; return (seconds, CPU seconds of this process)."""
    config = Archive(endpoint=gateway.endpoint, bucket=bucket, access_key=gateway.access_key,
                     secret_key=gateway.secret_key, lock_days=1, verify_uploads=verify, prefix=f"v{int(verify)}/")
    archiver = Archiver(root, "st-bench", config)
    cpu0, t0 = time.process_time(), time.perf_counter()
    while True:
        step = archiver.step()
        assert step.error is None, step.error
        if not step.worked:
            break
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    archiver.db.close()
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--mb", type=int, default=30, help="segment size in MB")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    total = args.segments * size
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        work = Path(tmp)
        gateway = RadosGateway(work / "rgw", memstore_mb=max(2048, 5 * total // 1_000_000))
        gateway.start()
        try:
            client = boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=gateway.access_key,
                                  aws_secret_access_key=gateway.secret_key, region_name="default",
                                  config=BotoConfig(s3={"addressing_style": "path"},
                                                    request_checksum_calculation="when_required",
                                                    response_checksum_validation="when_required"))
            client.create_bucket(Bucket="nvr-bench", ObjectLockEnabledForBucket=True)
            client.create_bucket(Bucket="plain-bench")
            root = work / "storage"
            init_storage(root, "st-bench")
            index = SegmentIndex(root / "index.sqlite3")
            paths = make_segments(root, index, args.segments, size)
            index.close()
            results: dict[str, float] = {}

            cpu0, t0 = time.process_time(), time.perf_counter()
            for n, path in enumerate(paths):
                with path.open("rb") as f:
                    client.put_object(Bucket="plain-bench", Key=f"put/{n}.mp4", Body=f)
            results["put_object_s"], results["put_object_cpu_s"] = time.perf_counter() - t0, time.process_time() - cpu0

            cpu0, t0 = time.process_time(), time.perf_counter()
            for n, path in enumerate(paths):
                client.upload_file(str(path), "plain-bench", f"cp/{n}.mp4")
            results["upload_file_s"], results["upload_file_cpu_s"] = (time.perf_counter() - t0,
                                                                      time.process_time() - cpu0)

            results["archiver_s"], results["archiver_cpu_s"] = archive_run(gateway, "nvr-bench", root, verify=False)
            # Same files again under another prefix, now with the read-back of every version.
            import sqlite3

            db = sqlite3.connect(root / "index.sqlite3")
            db.execute("DELETE FROM archive_objects")
            db.execute("DELETE FROM archive_state")
            db.commit()
            db.close()
            results["archiver_verify_s"], results["archiver_verify_cpu_s"] = archive_run(
                gateway, "nvr-bench", root, verify=True)
        finally:
            gateway.stop()
    mb = total / 1e6
    minutes = total / CAMERA_MINUTE_BYTES
    report(
        "archive_upload",
        segments=args.segments, segment_mb=args.mb,
        put_object_mb_s=round(mb / results["put_object_s"], 1),
        upload_file_mb_s=round(mb / results["upload_file_s"], 1),
        archiver_mb_s=round(mb / results["archiver_s"], 1),
        archiver_verify_mb_s=round(mb / results["archiver_verify_s"], 1),
        put_object_cpu_s_per_camera_minute=round(results["put_object_cpu_s"] / minutes, 4),
        archiver_cpu_s_per_camera_minute=round(results["archiver_cpu_s"] / minutes, 4),
        archiver_verify_cpu_s_per_camera_minute=round(results["archiver_verify_cpu_s"] / minutes, 4),
        archiver_verify_core_percent_per_camera=round(100 * results["archiver_verify_cpu_s"] / minutes / 60, 3),
    )


if __name__ == "__main__":
    main()
