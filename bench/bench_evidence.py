"""Auditor paths: search latency at scale, clip and export throughput for a 1 h range.

- search: ``recorder.search.search`` (spans, gaps, segments) for one camera and one day over an index of
  30 days x 64 cameras of one-minute segments; p50/p99 (goal: p99 < 20 ms).
- clip / export: one hour of 1080p segments (60 x 1 min, real H.264 from the pre-encoded clip, recorded
  through the real SegmentWriter), remuxed into a clip and packed into a signed export; MB/s next to a plain
  copy of the same bytes in the same run (goal: about disk speed).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_index import fill  # noqa: E402
from bench.common import clip_1080p, report  # noqa: E402
from recorder.clip import ClipResult, write_clip  # noqa: E402
from recorder.export import ExportRequest, build_package  # noqa: E402
from recorder.index import NewSegment, SegmentIndex  # noqa: E402
from recorder.keys import StationKey  # noqa: E402
from recorder.search import search  # noqa: E402
from recorder.segment_writer import ClosedSegment, DiskWriter, SegmentWriter, Template  # noqa: E402
from recorder.storage import segment_relpath  # noqa: E402
from streams import bitstream  # noqa: E402
from streams.media import TrackInfo, TrackKind  # noqa: E402


def one_minute_segment(root: Path, start: float) -> tuple[str, int, int]:
    """Record 60 s of the 1080p clip through SegmentWriter; returns (relpath, bytes, frames)."""
    clip = clip_1080p()
    units = []
    with av.open(str(clip), format="h264") as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                units.append((bytes(packet), bool(packet.is_keyframe)))
    params = bitstream.parameter_sets("h264", units[0][0])
    video = TrackInfo(kind=TrackKind.VIDEO, codec="h264", time_base=Fraction(1, 90000), extradata=params,
                      width=1920, height=1080)
    template = Template(video, units[0][0])
    disk = DiskWriter("cam-00", threaded=False)
    writer = SegmentWriter(root, "cam-00", start, video, None, template, disk)
    fps = 25
    for n in range(60 * fps):
        data, key = units[n % len(units)]
        tick = n * 90000 // fps
        writer.write_video(data, tick, tick, key if n % len(units) else True, Fraction(1, 90000))
    closed: list[ClosedSegment] = []
    writer.close(start, closed.append)
    template.close()
    return closed[0].relpath, closed[0].bytes, writer.frames


def main() -> None:
    t0 = 1_780_000_000.0
    with tempfile.TemporaryDirectory(prefix="nvr-bench-evidence-") as tmp:
        root = Path(tmp)
        index = SegmentIndex(root / "index.sqlite3")
        fill(index, 64, 30, 60, t0)
        latencies = []
        for i in range(200):
            camera = f"cam-{i % 64:02d}"
            day = t0 + (i % 29) * 86400 + 1800
            s = time.perf_counter()
            result = search(index, camera, day, day + 86400)
            latencies.append((time.perf_counter() - s) * 1000)
            assert len(result.spans) == 1
        latencies.sort()
        report("search", rows=64 * 30 * 1440, day_search_ms_median=round(statistics.median(latencies), 2),
               day_search_ms_p99=round(latencies[int(len(latencies) * 0.99) - 1], 2), goal="p99 < 20 ms")
        index.close()

    with tempfile.TemporaryDirectory(prefix="nvr-bench-evidence-") as tmp:
        root = Path(tmp)
        index = SegmentIndex(root / "index.sqlite3")
        start = time.time() - 7200
        template_rel, size, frames = one_minute_segment(root, start)
        template = root / template_rel
        template_sha = hashlib.sha256(template.read_bytes()).hexdigest()  # every copy is the same bytes
        total = 0
        for minute in range(60):
            seg_start = start + minute * 60
            rel = segment_relpath("cam-00", seg_start)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel != template_rel:
                shutil.copyfile(template, root / rel)
            total += size
            index.add_segment(NewSegment(camera="cam-00", start=seg_start, end=seg_start + 60, frames=frames,
                                         bytes=size, sha256=template_sha, codec="h264", width=1920, height=1080,
                                         params='{"extradata": ""}', path=rel))
        segments = index.segments("cam-00", start, start + 3600)
        mb = total / 1e6

        s = time.perf_counter()
        copy_target = root / "copy.bin"
        with copy_target.open("wb") as out:
            for seg in segments:
                with (root / seg.path).open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        copy_s = time.perf_counter() - s
        copy_target.unlink()

        class FileSink(io.RawIOBase):
            """Like the HTTP response: sequential writes, no seeking."""

            def __init__(self, path: Path) -> None:
                self.file = path.open("wb")

            def writable(self) -> bool:
                return True

            def write(self, data: bytes) -> int:  # type: ignore[override]
                return self.file.write(data)

        s = time.perf_counter()
        sink = FileSink(root / "clip.mp4")
        write_clip(root, segments, start, start + 3600, sink, ClipResult())
        sink.file.close()
        clip_s = time.perf_counter() - s
        (root / "clip.mp4").unlink()

        s = time.perf_counter()
        build_package(root=root, index=index, key=StationKey.load_or_create(root), station={"id": "s", "name": "s"},
                      camera_info={}, request=ExportRequest(["cam-00"], start, start + 3600, "bench", "bench"),
                      output=root / "export.zip", now=time.time())
        export_s = time.perf_counter() - s
        report("clip_export", range="1 h of 1080p (60 x 1 min segments)", megabytes=round(mb, 1),
               copy_mb_s=round(mb / copy_s, 1), clip_mb_s=round(mb / clip_s, 1), export_mb_s=round(mb / export_s, 1),
               clip_to_copy_ratio=round(copy_s / clip_s, 3), export_to_copy_ratio=round(copy_s / export_s, 3))
        verify_throughput(root / "export.zip", StationKey.load_or_create(root))
        checkpoint_cost(root, index, StationKey.load_or_create(root))
        index.close()


def verify_throughput(package: Path, key: StationKey) -> None:
    """`nvr verify` (a fresh process, as an auditor runs it) against `sha256sum` of the same zip, same run."""
    pem = package.parent / "station.pem"
    pem.write_bytes(key.public_pem)
    mb = package.stat().st_size / 1e6
    runs: dict[str, list[float]] = {"verify": [], "sha256sum": []}
    for _ in range(3):
        s = time.perf_counter()
        subprocess.run(["sha256sum", str(package)], check=True, capture_output=True)
        runs["sha256sum"].append(time.perf_counter() - s)
        s = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "nvr", "verify", str(package), "--pubkey", str(pem)],
                                cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
        runs["verify"].append(time.perf_counter() - s)
        assert result.returncode == 0, result.stdout + result.stderr
    verify_s, sha_s = min(runs["verify"]), min(runs["sha256sum"])
    report("verify", package_mb=round(mb, 1), verify_mb_s=round(mb / verify_s, 1),
           sha256sum_mb_s=round(mb / sha_s, 1), verify_to_sha256sum_ratio=round(sha_s / verify_s, 3),
           note="best of 3; verify includes interpreter start and signature check")


def checkpoint_cost(root: Path, index: SegmentIndex, key: StationKey) -> None:
    """Signing a checkpoint of 64 cameras' chain heads, and a witness checking and storing it."""
    from central.witness import Witness
    from recorder import checkpoint

    heads = {f"cam-{n:02d}": (n * 1000, "ab" * 32, time.time()) for n in range(64)}
    witness = Witness(root / "witness.sqlite3")
    count = 200
    sign_s = 0.0
    rows = []
    for seq in range(1, count + 1):
        s = time.perf_counter()
        body = checkpoint.make_body(station="st", seq=seq, now=time.time(), reason="periodic", key=key,
                                    audit_head=(seq * 10, "cd" * 32), heads=heads)
        envelope = checkpoint.sign(key, body)
        index.add_checkpoint(seq, body["at_epoch"], envelope.body, envelope.signature)
        sign_s += time.perf_counter() - s
        rows.append((seq, envelope.body, envelope.signature))
    size = sum(len(b) + len(sig) for _, b, sig in rows) / count
    s = time.perf_counter()
    for row in rows:
        stored, problems = witness.add_checkpoints("st", key.public_pem.decode(), [row], time.time())
        assert stored == 1 and not problems
    witness_s = time.perf_counter() - s
    witness.close()
    per_day = 86400 / 300
    report("checkpoint", cameras=64, bytes_each=round(size), sign_and_store_ms=round(1000 * sign_s / count, 2),
           witness_check_and_store_ms=round(1000 * witness_s / count, 2),
           per_station_day={"checkpoints": per_day, "station_cpu_s": round(per_day * sign_s / count, 3),
                            "console_cpu_s": round(per_day * witness_s / count, 3),
                            "shipped_mb": round(per_day * size / 1e6, 2)},
           note="checkpoint_seconds 300; HTTP transfer not included (one request per follow.checkpoint_seconds)")


if __name__ == "__main__":
    main()
