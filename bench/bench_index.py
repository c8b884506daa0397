"""Index at scale: 30 days x 64 cameras of one-minute segments (2.76 M rows).

Reports the cost of adding one segment row (with its chain hash) and the
latency of looking up one day of one camera, next to a plain full scan of the
same table in the same run as the baseline.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report  # noqa: E402
from recorder.index import NewSegment, SegmentIndex  # noqa: E402


def fill(index: SegmentIndex, cameras: int, days: int, seg_seconds: int, t0: float) -> int:
    db = index.db
    per_camera = days * 86400 // seg_seconds
    params = json.dumps({"extradata": "00" * 30})
    db.execute("BEGIN")
    for c in range(cameras):
        camera = f"cam-{c:02d}"
        rows = (
            (camera, t0 + i * seg_seconds, t0 + (i + 1) * seg_seconds, 1500, 30_000_000, "ab" * 32, "h264", 1920,
             1080, params, f"recordings/{camera}/{i}.mp4", "ok", "0" * 64, "1" * 64, t0)
            for i in range(per_camera)
        )
        db.executemany(
            "INSERT INTO segments (camera, start, end, frames, bytes, sha256, codec, width, height, params, path,"
            " status, prev_chain, chain_hash, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("COMMIT")
    return cameras * per_camera


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cameras", type=int, default=64)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    t0 = 1_780_000_000.0
    with tempfile.TemporaryDirectory(prefix="nvr-bench-index-") as tmp:
        index = SegmentIndex(Path(tmp) / "index.sqlite3")
        started = time.perf_counter()
        total = fill(index, args.cameras, args.days, 60, t0)
        fill_s = time.perf_counter() - started

        end = t0 + args.days * 86400
        adds = []
        for i in range(200):
            seg = NewSegment(camera="cam-00", start=end + i * 60, end=end + (i + 1) * 60, frames=1500,
                             bytes=30_000_000, sha256="cd" * 32, codec="h264", width=1920, height=1080,
                             params="{}", path=f"recordings/cam-00/new-{i}.mp4")
            s = time.perf_counter()
            index.add_segment(seg)
            adds.append((time.perf_counter() - s) * 1000)

        rng = random.Random(1)
        lookups = []
        for _ in range(args.queries):
            camera = f"cam-{rng.randrange(args.cameras):02d}"
            day = t0 + rng.randrange(args.days - 1) * 86400 + rng.randrange(3600)
            s = time.perf_counter()
            found = index.segments(camera, day, day + 86400)
            lookups.append((time.perf_counter() - s) * 1000)
            assert len(found) >= 1439

        scans = []
        for _ in range(5):
            s = time.perf_counter()
            index.db.execute("SELECT count(*) FROM segments WHERE bytes < 0").fetchone()
            scans.append((time.perf_counter() - s) * 1000)
        index.close()

    lookups.sort()
    report(
        "index",
        rows=total, fill_seconds=round(fill_s, 1),
        add_segment_ms_median=round(statistics.median(adds), 3),
        day_lookup_ms_median=round(statistics.median(lookups), 3),
        day_lookup_ms_p99=round(lookups[int(len(lookups) * 0.99) - 1], 3),
        full_scan_ms_median=round(statistics.median(scans), 1),
        lookup_to_full_scan_ratio=round(statistics.median(lookups) / statistics.median(scans), 4),
        goal="day lookup for one camera < 10 ms",
    )


if __name__ == "__main__":
    main()
