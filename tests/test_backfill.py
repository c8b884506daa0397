"""Edge backfill (ONVIF Profile G): a network cut on a camera with an SD card ends with the gap filled from the card.

The cameras are real (camsim RTSP) behind :class:`sim.onvif_camera.OnvifCamera`
with ``edge_storage=True``: an SD card that records the encoder whatever the
network does, a network relay the test cuts, the search and replay services,
and a replay RTSP server written from the ONVIF Streaming Specification.  The
daemon runs for real (``StationProcess``).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from nvr.base.config import Backoff, Onvif, Storage
from nvr.base.timeutil import iso, parse_iso
from recorder.backfill import BackfillWriter
from recorder.index import NewSegment, SegmentIndex, SegmentRecord, decode_meta
from sim.onvif_camera import OnvifCamera
from streams.edge_storage import EdgeError, EdgeReason, EdgeStorage
from streams.replay_client import AccessUnit, ReplayClient, ReplayError, ReplayReason
from tests.conftest import REPO, wait_until
from tests.media import encode_h264
from tests.test_evidence import resign, station_private
from tests.test_onvif import PASSWORD
from tests.test_recording import decodes_cleanly, probe, rows

BACKFILL = {"scan_seconds": 1, "min_gap_seconds": 1, "retry_seconds": 2, "timeout_seconds": 5}


def entry(cam_id: str, onvif: OnvifCamera, **extra: Any) -> dict[str, Any]:
    return {"id": cam_id, "name": cam_id, "zone": "holding_cell", "url": onvif.live_url,
            "onvif": {"url": onvif.url_with("admin", "${ONVIF_PASS}"), "clock_check_seconds": 5,
                      "timeout_seconds": 3, **extra}}


def search(daemon: Any, camera: str, start: float, end: float) -> dict[str, Any]:
    query = urllib.parse.urlencode({"camera": camera, "start": iso(start), "end": iso(end)})
    status, body = daemon.get(f"/api/recordings?{query}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def backfilled(segments: list[SegmentRecord]) -> list[SegmentRecord]:
    return [s for s in segments if decode_meta(s.meta).get("origin") == "backfill"]


def nvr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ONVIF_PASS": PASSWORD})


def no_overlaps(segments: list[SegmentRecord]) -> None:
    ordered = sorted(segments, key=lambda s: s.start)
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert b.start >= a.end - 1e-6, f"{a.path} ({a.start}-{a.end}) overlaps {b.path} ({b.start}-{b.end})"


def recorder_dropped(daemon: Any, camera: str) -> float:
    _, metrics = daemon.get("/metrics")
    found = re.search(rf'^nvr_reader_dropped_packets_total\{{camera="{camera}",reader="recorder:{camera}"\}} (\S+)$',
                      metrics.decode(), re.M)
    assert found is not None
    return float(found.group(1))


def cut_for(onvif: OnvifCamera, daemon: Any, camera: str, seconds: float) -> tuple[float, float]:
    """Cut the camera's network for ``seconds`` (once the daemon saw it go), bring it back, wait for recording."""
    daemon.wait_state(camera, "online")
    wait_until(lambda: len(rows(daemon.storage, camera)) >= 2, 30, "nothing recorded before the cut")
    cut_at = time.time()
    onvif.cut_network()
    daemon.wait_state(camera, "offline", timeout=30)
    time.sleep(max(0.0, seconds - (time.time() - cut_at)))
    onvif.restore_network()
    back = time.time()
    daemon.wait_state(camera, "online", timeout=30)
    return cut_at, back


def test_a_network_cut_on_a_camera_with_edge_storage_is_filled_from_its_card_and_verifies_like_any_footage(
        cameras, onvif_cameras, daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A keyframe every third of a second: the part of the gap before the card's first keyframe in it (which
    # cannot be cut out without re-encoding) is shorter than the timeline's join tolerance.
    rtsp = cameras("cell", fps=15, gop=5)
    onvif = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD, edge_storage=True)
    other = cameras("corridor", fps=15, gop=15)  # a camera beside it, without ONVIF, records throughout
    daemon = daemon_factory([entry("cell", onvif), {"id": "corridor", "name": "corridor", "url": other.url}],
                            env={"ONVIF_PASS": PASSWORD}, storage={"segment_seconds": 3}, backfill=BACKFILL)
    wait_until(lambda: (daemon.camera("cell").get("onvif") or {}).get("edge_storage"), 30,
               "the link never reported edge storage")
    daemon.wait_state("corridor", "online", timeout=45)
    wait_until(lambda: rows(daemon.storage, "corridor"), 30, "the other camera recorded nothing")
    dropped_before = recorder_dropped(daemon, "corridor")  # frames before its first keyframe
    cut_at, back = cut_for(onvif, daemon, "cell", 8)

    def filled() -> list[SegmentRecord] | None:
        found = backfilled(rows(daemon.storage, "cell"))
        return found if found and sum(s.duration for s in found) > 5 else None

    got = wait_until(filled, 60, "the gap was never backfilled")
    # One continuous span over the cut: live before, backfilled during, live after.
    one_span_over(daemon, "cell", cut_at - 5, back + 3)
    segments = rows(daemon.storage, "cell")
    no_overlaps(segments)
    for seg in got:
        meta = decode_meta(seg.meta)
        assert meta["source"]["recording"] == onvif.recording_token and meta["job"] >= 1
        assert cut_at - 3 < seg.start < back + 3
        assert probe(daemon.storage / seg.path)["streams"][0]["codec_name"] == "h264"
    decodes_cleanly(daemon.storage / got[0].path)
    # The other camera never stopped, nor lost a packet while the gap was retrieved.
    assert recorder_dropped(daemon, "corridor") == dropped_before
    corridor = rows(daemon.storage, "corridor")
    no_overlaps(corridor)
    assert sum(s.duration for s in corridor if s.end > cut_at and s.start < back) >= (back - cut_at) - 2

    # The audit trail says that footage joined the record later, from where, and how much.
    def finished() -> dict[str, Any] | None:
        status, audit = daemon.get("/api/audit?" + urllib.parse.urlencode({"action": "backfill.finished"}))
        assert status == 200, audit
        return next((e for e in audit["entries"] if e["camera"] == "cell"), None)

    # More of the gap may still be arriving when the first 5 s are in: the job's entry comes at its end.
    logged = wait_until(finished, 60, "the backfill job never finished")
    got = backfilled(rows(daemon.storage, "cell"))
    assert logged["actor"] == "system" and logged["details"]["state"] == "done"
    assert logged["details"]["segments"] == len(got) and logged["details"]["retrieved_seconds"] > 5
    # Export and verify like any other footage; an insider's edit of a backfilled file is caught.
    _, key = daemon.get("/api/key")
    out = tmp_path / "cut.zip"
    made = nvr("export", "-c", str(daemon.config_path), "--camera", "cell", "--start", iso(cut_at - 3),
               "--end", iso(back), "--reason", "complaint 17", "-o", str(out))
    assert made.returncode == 0, made.stderr
    checked = nvr("verify", str(out), "--fingerprint", key["fingerprint"])
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout
    # An insider with the station's key drops a segment of the range, or passes it off as a row outside it.
    for disguise in (False, True):
        def drop(manifest: dict[str, Any], disguise: bool = disguise) -> None:
            camera = manifest["cameras"][0]
            by_id = sorted(camera["segments"], key=lambda e: e["index_id"])
            victim = by_id[len(by_id) // 2]
            camera["segments"].remove(victim)
            manifest["files"] = [f for f in manifest["files"] if f["path"] != victim["file"]]
            if disguise:
                camera.setdefault("chain_links", []).append({k: victim[k] for k in (
                    "index_id", "start_epoch", "end_epoch", "prev_chain", "chain_hash")})

        forged = resign(out, tmp_path / f"forged{disguise}.zip", station_private(daemon), edit_manifest=drop)
        refused = nvr("verify", str(forged), "--fingerprint", key["fingerprint"])
        assert refused.returncode == 1 and "in the station's chain" in refused.stdout, refused.stdout
    assert daemon.stop() == 0
    assert nvr("verify-storage", "-c", str(daemon.config_path), "--camera", "cell").returncode == 0
    victim = daemon.storage / got[0].path
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = nvr("verify-storage", "-c", str(daemon.config_path), "--camera", "cell")
    assert bad.returncode == 1 and f"segment {got[0].path}: file modified (SHA-256 mismatch)" in bad.stdout
    text = daemon.log()
    assert PASSWORD not in text and urllib.parse.quote(PASSWORD, safe="") not in text


def test_what_the_card_did_not_have_stays_a_gap_edge_unavailable_and_a_camera_without_profile_g_is_left_alone(
        cameras, onvif_cameras, daemon_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rtsp = cameras("cell", fps=15, gop=5)
    # Its clock is 90 s fast: the card's times are moved by the measured offset.
    onvif = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD, edge_storage=True, clock_offset=90)
    plain_rtsp = cameras("yard", fps=15, gop=5)
    plain = onvif_cameras(rtsp_url=plain_rtsp.url, user="admin", password=PASSWORD, network=True)  # no card
    daemon = daemon_factory([entry("cell", onvif), entry("yard", plain)], env={"ONVIF_PASS": PASSWORD},
                            storage={"segment_seconds": 3}, backfill=BACKFILL)
    wait_until(lambda: (daemon.camera("cell").get("onvif") or {}).get("edge_storage"), 30, "no edge storage seen")
    wait_until(lambda: (daemon.camera("yard").get("onvif") or {}).get("edge_storage") is False, 30,
               "the camera without Profile G was never reported as such")
    # A simulator's first session can miss the 10 s open timeout on a loaded machine; the retry gets it.
    daemon.wait_state("yard", "online", timeout=45)
    assert onvif.card is not None
    daemon.wait_state("cell", "online", timeout=45)
    wait_until(lambda: len(rows(daemon.storage, "cell")) >= 2 and len(rows(daemon.storage, "yard")) >= 2, 30,
               "nothing recorded before the cut")
    cut_at = time.time()
    onvif.cut_network()
    plain.cut_network()
    time.sleep(2.5)
    onvif.card.fail()  # the card is pulled for three seconds while the network is down
    pulled = time.time()
    time.sleep(3.0)
    onvif.card.restore()
    time.sleep(3.0)
    onvif.restore_network()
    plain.restore_network()
    back = time.time()
    daemon.wait_state("cell", "online", timeout=30)
    daemon.wait_state("yard", "online", timeout=30)

    def settled() -> dict[str, Any] | None:
        jobs = daemon.camera("cell")["backfill"]
        return jobs[0] if jobs and jobs[-1]["state"] == "done" else None

    job = wait_until(settled, 60, "the backfill job never finished")
    found = search(daemon, "cell", cut_at - 3, back + 3)
    # The card's hole (give or take a group of pictures and the clock reading's half second); slivers where
    # the card's times, moved by the measured offset, meet the live segments are no more than that.
    gaps = [g for g in found["gaps"] if g["seconds"] > 1.0]
    assert len(gaps) == 1 and gaps[0]["cause"] == "edge_unavailable", found
    assert gaps[0]["reason"] == "card_empty" and job["reason"] == "card_empty" and job["detail"]
    assert abs(gaps[0]["seconds"] - 3.0) < 1.5 and abs(parse_iso(gaps[0]["start"]) - pulled) < 1.5, gaps
    assert all(g["cause"] == "edge_unavailable" for g in found["gaps"]), found["gaps"]
    assert found["recorded_seconds"] > (back - cut_at) + 6 - 3 - 2.5, found
    assert job["segments"] >= 2 and job["retrieved_seconds"] > 3
    meta = decode_meta(backfilled(rows(daemon.storage, "cell"))[0].meta)
    assert 88.5 < meta["clock_offset_applied_seconds"] < 91.5
    no_overlaps(rows(daemon.storage, "cell"))
    # The camera without Profile G: no job, nothing asked of it but the device service; its gap says offline.
    assert daemon.camera("yard")["backfill"] == []
    assert "FindRecordings" not in plain.requests and "GetReplayUri" not in plain.requests
    yard = search(daemon, "yard", cut_at + 1, back - 1)
    assert [g["cause"] for g in yard["gaps"]] == ["offline"], yard["gaps"]
    status, metrics = daemon.get("/metrics")
    text = metrics.decode()
    assert re.search(r'^nvr_backfill_jobs\{camera="cell",state="done"\} 1\.0$', text, re.M), text[-2000:]
    assert float(re.search(r'^nvr_backfill_retrieved_seconds_total\{camera="cell"\} (\S+)$', text, re.M)
                 .group(1)) > 3  # type: ignore[union-attr]
    assert daemon.stop() == 0
    # An export from the command line (daemon stopped) names the same gap, with the same cause.
    out = tmp_path / "cli.zip"
    made = nvr("export", "-c", str(daemon.config_path), "--camera", "cell", "--start", iso(cut_at - 3),
               "--end", iso(back + 3), "--reason", "complaint 18", "-o", str(out))
    assert made.returncode == 0, made.stderr
    with zipfile.ZipFile(out) as package:
        manifest = json.loads(package.read("manifest.json"))
    exported = [g for g in manifest["cameras"][0]["gaps"] if g["cause"] == "edge_unavailable"]
    assert [g["reason"] for g in exported if parse_iso(g["end"]) - parse_iso(g["start"]) > 1.0] == ["card_empty"]


def one_span_over(daemon: Any, camera: str, start: float, end: float) -> dict[str, Any]:
    wait_until(lambda: time.time() > end + 3 and not search(daemon, camera, start, end)["gaps"], 60,
               "the backfilled range never joined the live spans")
    found = search(daemon, camera, start, end)
    assert len(found["spans"]) == 1, found
    return found


@pytest.mark.extended
def test_a_60_s_network_cut_ends_after_backfill_with_one_continuous_span(
        cameras, onvif_cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    rtsp = cameras("cell", fps=15, gop=5)
    onvif = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD, edge_storage=True)
    daemon = daemon_factory([entry("cell", onvif)], env={"ONVIF_PASS": PASSWORD}, storage={"segment_seconds": 4},
                            backfill=BACKFILL)
    wait_until(lambda: (daemon.camera("cell").get("onvif") or {}).get("edge_storage"), 30, "no edge storage seen")
    assert onvif.replay is not None
    onvif.replay.speed_limit = 10.0  # a minute of footage takes six seconds to come off this card
    cut_at, back = cut_for(onvif, daemon, "cell", 60)
    # While it is being retrieved, the timeline says so.
    wait_until(lambda: {g["cause"] for g in search(daemon, "cell", cut_at + 5, back - 5)["gaps"]} == {"edge_pending"},
               20, "the gap never showed as recorded on camera, not yet retrieved")
    one_span_over(daemon, "cell", cut_at - 5, back + 3)
    segments = rows(daemon.storage, "cell")
    no_overlaps(segments)
    got = backfilled(segments)
    assert sum(s.duration for s in got) > 55
    assert daemon.stop() == 0
    assert nvr("verify-storage", "-c", str(daemon.config_path), "--camera", "cell").returncode == 0


@pytest.mark.extended
def test_a_backfill_interrupted_by_a_restart_and_a_replay_cut_half_way_resumes_and_fills_the_gap_once(
        cameras, onvif_cameras, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    rtsp = cameras("cell", fps=15, gop=5)
    onvif = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD, edge_storage=True)
    assert onvif.replay is not None
    onvif.replay.speed_limit = 1.0  # this camera reads its card no faster than real time
    daemon = daemon_factory([entry("cell", onvif)], env={"ONVIF_PASS": PASSWORD}, storage={"segment_seconds": 2},
                            backfill=BACKFILL)
    wait_until(lambda: (daemon.camera("cell").get("onvif") or {}).get("edge_storage"), 30, "no edge storage seen")
    cut_at, back = cut_for(onvif, daemon, "cell", 20)
    wait_until(lambda: backfilled(rows(daemon.storage, "cell")), 30, "the backfill never started")
    assert daemon.stop() == 0  # mid-backfill: what was retrieved is kept, the job waits for the next start
    kept = backfilled(rows(daemon.storage, "cell"))
    assert kept and sum(s.duration for s in kept) < 18
    onvif.replay.speed_limit = None
    onvif.replay.stop_after_frames = 30  # the next replay breaks off after two seconds of footage
    daemon.start()
    daemon.wait_state("cell", "online", timeout=30)

    def retried() -> list[dict[str, Any]] | None:
        jobs = daemon.camera("cell")["backfill"]
        return jobs if jobs and jobs[-1]["attempts"] >= 2 else None

    jobs = wait_until(retried, 60, "the interrupted job was not tried again")
    assert "closed the replay" in (jobs[-1]["detail"] or "") or jobs[-1]["state"] != "done"
    onvif.replay.stop_after_frames = None
    one_span_over(daemon, "cell", cut_at - 3, back + 2)
    segments = rows(daemon.storage, "cell")
    no_overlaps(segments)
    assert {s.path for s in kept} <= {s.path for s in segments}  # nothing retrieved before was replaced
    assert len({round(s.start, 3) for s in segments}) == len(segments)
    assert daemon.stop() == 0
    assert nvr("verify-storage", "-c", str(daemon.config_path), "--camera", "cell").returncode == 0


# -- the simulated camera's replay server and the replay client ---------------------------------------


def replay(uri: str, start: float, end: float, password: str = PASSWORD, **kwargs: Any
           ) -> tuple[list[Any], ReplayClient, ReplayError | None]:
    client = ReplayClient(uri, "admin", password, **kwargs)
    got: list[Any] = []

    async def run() -> ReplayError | None:
        try:
            async for unit in client.replay(start, end):
                got.append(unit)
        except ReplayError as exc:
            return exc
        return None

    failure = asyncio.run(run())
    return got, client, failure


@pytest.fixture(scope="module")
def card_camera() -> Iterator[OnvifCamera]:
    """One camera with a card holding some seconds of footage, shared by the replay tests (they only read it)."""
    from sim.client import SimCamera

    with SimCamera("cardcam", fps=15, gop=15) as rtsp, OnvifCamera(
            rtsp_url=rtsp.url, user="admin", password=PASSWORD, edge_storage=True) as onvif:
        assert onvif.card is not None and onvif.card.recorded.wait(20)
        wait_until(lambda: (s := onvif.card.span()) is not None and s[1] - s[0] > 6, 20, "the card recorded nothing")
        yield onvif


def test_the_replay_server_serves_a_plain_rtsp_client_and_an_onvif_replay_of_exactly_a_clock_range(
        card_camera: OnvifCamera) -> None:
    assert card_camera.card is not None and card_camera.replay is not None
    uri = card_camera.replay.base_url + card_camera.recording_token
    # A standard client (plain PLAY, no ONVIF headers) reads it as an ordinary RTSP stream.
    plain = subprocess.run(["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries",
                            "stream=codec_name,width,height", "-of", "json",
                            uri.replace("rtsp://", f"rtsp://admin:{urllib.parse.quote(PASSWORD, safe='')}@")],
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["streams"][0] == {"codec_name": "h264", "width": 640, "height": 360}

    first, last = card_camera.card.span()  # type: ignore[misc]
    start, end = first + 2.0, first + 5.0
    began = time.monotonic()
    got, client, failure = replay(uri, start, end)
    took = time.monotonic() - began
    assert failure is None and client.stats.terminal
    assert took < 2.5, f"Rate-Control: no replayed 3 s of footage in {took:.1f} s"  # as fast as possible
    assert got[0].keyframe and got[0].at <= start + 0.05  # from the keyframe at or before the start
    assert start - 1.1 < got[0].at and got[-1].at <= end + 0.001 and got[-1].at > end - 0.2
    times = [u.at for u in got]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert 40 <= len(got) <= 65 and sum(u.keyframe for u in got) >= 3
    play = next(h for m, h in card_camera.replay.requests if m == "PLAY" and "require" in h)
    assert play["require"] == "onvif-replay" and play["rate-control"] == "no"
    assert re.fullmatch(r"clock=\d{8}T\d{6}\.\d{3}Z-\d{8}T\d{6}\.\d{3}Z", play["range"])
    assert play["authorization"].startswith("Digest ")  # the password never crosses the wire
    # What came over the wire is the card's bitstream, byte for byte.
    on_card = card_camera.card.frames(0.0)
    times = [f.at for f in on_card]

    def units(data: bytes) -> bytes:
        return data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01")

    first_sent = bisect.bisect_left(times, got[0].at - 1e-6)
    for frame, unit in zip(on_card[first_sent:], got, strict=False):  # every frame, in order, none skipped
        assert abs(frame.at - unit.at) < 1e-6 and units(frame.data) == units(unit.data)  # NTP: 2^-32 s steps


def test_the_bandwidth_cap_holds_a_replay_that_the_camera_could_send_faster(card_camera: OnvifCamera) -> None:
    # backfill.max_bitrate_kbps reaches the client as bytes a second: the card replays as fast as TCP takes it
    # (Rate-Control: no), and the client must not read faster than the cap, whatever the camera sends.
    assert card_camera.card is not None and card_camera.replay is not None
    first, _ = card_camera.card.span()  # type: ignore[misc]
    uri = card_camera.replay.base_url + card_camera.recording_token
    began = time.monotonic()
    got, client, failure = replay(uri, first, first + 4.0, max_bytes_per_second=100_000)
    took = time.monotonic() - began
    assert failure is None and got, failure
    assert client.stats.bytes > 150_000, client.stats  # enough footage that the cap has to bite
    # Pacing may run at most one read ahead of the cap, never more.
    assert client.stats.bytes / 100_000 - 1.0 <= took, (client.stats.bytes, took)


def test_junk_among_the_rtp_a_replay_cut_half_way_and_wrong_credentials_are_each_reported(
        card_camera: OnvifCamera) -> None:
    assert card_camera.card is not None and card_camera.replay is not None
    uri = card_camera.replay.base_url + card_camera.recording_token
    first, _ = card_camera.card.span()  # type: ignore[misc]
    clean, _, _ = replay(uri, first, first + 4)
    card_camera.replay.junk = True
    got, client, failure = replay(uri, first, first + 4)
    assert failure is None and client.stats.junk > 0
    assert [u.at for u in got] == [u.at for u in clean]  # junk dropped, every access unit whole
    card_camera.replay.junk = False
    card_camera.replay.stop_after_frames = 20
    got, client, failure = replay(uri, first, first + 4)
    assert failure is not None and failure.reason is ReplayReason.STOPPED and len(got) == 20
    card_camera.replay.stop_after_frames = None
    got, _, failure = replay(uri, first, first + 4, password="wrong")
    assert failure is not None and failure.reason is ReplayReason.AUTH_FAILED and not got
    assert "wrong" not in failure.message


def test_a_camera_that_replays_too_slowly_is_given_up_on_in_bounded_time_keeping_what_came(
        card_camera: OnvifCamera, store: tuple[Path, SegmentIndex]) -> None:
    from nvr.base.config import Backfill as BackfillSettings
    from recorder.backfill import Backfill, BackfillCamera, BackfillJobs
    from streams.onvif import OnvifLink

    root, index = store
    assert card_camera.card is not None and card_camera.replay is not None
    first, _ = card_camera.card.span()  # type: ignore[misc]
    onvif = Onvif(url=card_camera.url_with("admin", urllib.parse.quote(PASSWORD, safe="")))
    camera = BackfillCamera("cell", onvif, OnvifLink("cell", onvif, Backoff()))
    backfill = Backfill(root, Storage(path=root, segment_seconds=2), BackfillSettings(timeout_seconds=1), 2.0, index,
                        [camera])
    jobs = BackfillJobs(index)
    jobs.ensure_schema()
    # The hole starts on one of the card's keyframes, so the first footage that comes is keepable at once,
    # however slowly the loaded machine lets even the throttled replay run.
    keyframe = next(f.at for f in card_camera.card.frames(first + 1.0, first + 4.0)
                    if f.keyframe and f.at >= first + 1.0)
    hole = (keyframe, keyframe + 2.0)
    job = jobs.add("cell", *hole)
    card_camera.replay.speed_limit = 0.25  # two seconds of footage would take eight
    began = time.monotonic()
    try:
        outcome = asyncio.run(backfill._replay(job, camera, card_camera.replay.base_url + card_camera.recording_token,
                                               card_camera.recording_token, hole, 0.0))
    except ReplayError as exc:
        outcome = exc
    finally:
        card_camera.replay.speed_limit = None
    took = time.monotonic() - began
    assert isinstance(outcome, ReplayError) and outcome.reason is ReplayReason.TIMEOUT, outcome
    assert 4.5 < took < 8, took  # the deadline: twice the footage plus a read timeout, at least four timeouts
    kept = index.all_segments("cell")
    # (a millisecond of slack: the start comes back from the 90 kHz RTP clock, the hole from the card)
    assert kept and all(hole[0] - 1e-3 <= s.start and s.end <= hole[1] + 1e-3 for s in kept), (hole, kept)
    assert [j.segments for j in jobs.all() if j.camera == "cell"] == [len(kept)]


class _Hostile:
    """A replay server that answers with whatever the test gives it."""

    def __init__(self, answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> None:
        self.answer = answer

    async def run(self, start: float, **kwargs: Any) -> tuple[list[Any], ReplayClient, ReplayError | None]:
        server = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = ReplayClient(f"rtsp://127.0.0.1:{port}/replay/x", "admin", "pw", **kwargs)
        got: list[Any] = []
        try:
            async for unit in client.replay(start, start + 10):
                got.append(unit)
        except ReplayError as exc:
            return got, client, exc
        finally:
            server.close()
        return got, client, None


_SDP = (b"v=0\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        b"a=control:track1\r\n")


def _ok(cseq: int, extra: bytes = b"", body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return b"RTSP/1.0 200 OK\r\nCSeq: %d\r\n%s%s\r\n%s" % (cseq, extra, length, body)


async def _dialogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for cseq, extra, body in ((1, b"", _SDP), (2, b"Session: 1\r\nTransport: RTP/AVP/TCP;interleaved=0-1\r\n", b""),
                              (3, b"Session: 1\r\n", b"")):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_ok(cseq, extra, body))


@pytest.mark.parametrize("case", ["not_rtsp", "huge_body", "silent", "oversized_units", "no_timestamps",
                                  "garbage_after_play"])
def test_a_hostile_replay_server_is_a_clear_error_in_bounded_time_and_memory(case: str) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if case == "not_rtsp":
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
            elif case == "huge_body":
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: 999999999\r\n\r\n")
            elif case == "silent":
                await reader.readuntil(b"\r\n\r\n")
            else:
                await _dialogue(reader, writer)
                if case == "oversized_units":  # FU-A fragments of one never-ending NAL unit: dropped, not kept
                    fragment = b"\x80\x60\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x7c\x05" + b"\xab" * 60000
                    for n in range(200):
                        packet = bytearray(fragment)
                        packet[2:4] = n.to_bytes(2, "big")
                        writer.write(b"$\x00" + len(packet).to_bytes(2, "big") + bytes(packet))
                        await writer.drain()
                elif case == "no_timestamps":  # RTP without the ONVIF extension: no time, no footage
                    for n in range(50):
                        packet = b"\x80\xe0" + n.to_bytes(2, "big") + n.to_bytes(4, "big") + b"\x00" * 4 + b"\x65\x88"
                        writer.write(b"$\x00" + len(packet).to_bytes(2, "big") + packet)
                else:
                    writer.write(b"\x17\x03\x03" + b"\x00" * 64)
            await writer.drain()
            await asyncio.sleep(5)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    began = time.monotonic()
    got, client, failure = asyncio.run(_Hostile(answer).run(time.time(), timeout=1.5))
    assert time.monotonic() - began < 8
    assert not got and failure is not None, (case, got, failure)
    expected = {"not_rtsp": ReplayReason.BAD_ANSWER, "huge_body": ReplayReason.BAD_ANSWER,
                "silent": ReplayReason.TIMEOUT, "garbage_after_play": ReplayReason.BAD_ANSWER}
    if case in expected:
        assert failure.reason is expected[case], (case, failure.reason, failure.message)
    else:  # the stream went silent after the bad packets: a timeout, with the bad ones dropped and counted
        assert failure.reason in (ReplayReason.TIMEOUT, ReplayReason.STOPPED)
        assert client.stats.dropped >= 1 or client.stats.access_units == 0


# -- search: Profile G or not, and its faults -------------------------------------------------------


def test_search_finds_the_card_a_camera_without_profile_g_says_so_and_faults_are_reported(
        cameras, onvif_cameras) -> None:  # type: ignore[no-untyped-def]
    rtsp = cameras("s", fps=15, gop=15)
    with_card = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD, edge_storage=True)
    without = onvif_cameras(rtsp_url=rtsp.url, user="admin", password=PASSWORD)
    assert with_card.card is not None and with_card.card.recorded.wait(20)
    time.sleep(1)

    async def ask(cam: OnvifCamera, password: str = PASSWORD) -> Any:
        try:
            return await EdgeStorage(Onvif(url=cam.url_with("admin", urllib.parse.quote(password, safe="")))
                                     ).search(0, time.time() + 60)
        except EdgeError as exc:
            return exc

    found = asyncio.run(ask(with_card))
    assert [r.token for r in found.recordings] == [with_card.recording_token]
    assert found.recordings[0].replay_uri.startswith("rtsp://") and found.card_start is not None
    assert {"FindRecordings", "GetRecordingSearchResults", "EndSearch", "GetReplayUri"} <= set(with_card.requests)
    none = asyncio.run(ask(without))
    assert isinstance(none, EdgeError) and none.reason is EdgeReason.NO_PROFILE_G
    assert "GetRecordingSummary" not in without.requests
    wrong = asyncio.run(ask(with_card, "nope"))
    assert isinstance(wrong, EdgeError) and wrong.reason is EdgeReason.AUTH_FAILED
    with_card.search_fault = "the card is being formatted"
    fault = asyncio.run(ask(with_card))
    assert isinstance(fault, EdgeError) and fault.reason is EdgeReason.SOAP_FAULT
    assert "formatted" in fault.message


# -- the writer: clipped to the gap, never over recorded footage ----------------------------------------


def test_card_footage_overlapping_what_was_recorded_is_dropped_and_counted_and_segments_stay_in_the_gap(
        store: tuple[Path, SegmentIndex]) -> None:
    root, index = store
    units = encode_h264(150, fps=15, gop=15)  # 10 s, a keyframe every second
    base = 1_800_000_000.0
    # Recorded: [base, base+3.2) and [base+7.5, ...); the card has all ten seconds (its clock runs right).
    for start, end, name in ((base, base + 3.2, "a"), (base + 7.5, base + 12, "b")):
        index.add_segment(NewSegment(camera="cell", start=start, end=end, frames=1, bytes=1, sha256="0" * 64,
                                     codec="h264", width=320, height=180, params="{}",
                                     path=f"recordings/cell/x/{name}.mp4"))
    writer = BackfillWriter("cell", root, Storage(path=root, segment_seconds=2), index, (base + 3.2, base + 7.5),
                            {"origin": "backfill", "source": {"recording": "SD_1", "camera": "cell"}})
    writer.feed([(base + n / 15, AccessUnit(base + n / 15, data, key)) for n, (data, key) in enumerate(units)])
    stats = writer.finish()
    rows_now = index.all_segments("cell")
    added = [r for r in rows_now if decode_meta(r.meta).get("origin") == "backfill"]
    assert stats.segments == len(added) == 2
    assert added[0].start == pytest.approx(base + 4.0)  # the first keyframe at or after the gap's start
    assert added[-1].end <= base + 7.5 and added[-1].end > base + 7.3
    no_overlaps(rows_now)
    # Frames 0..47 fall before the gap; from frame 112 on a frame would still show at the next segment's start.
    assert stats.overlap_dropped == 48 + 38
    assert stats.before_keyframe == 12  # frames 48..59 wait for the keyframe at 4 s
    for row in added:
        assert probe(root / row.path)["streams"][0]["codec_name"] == "h264"
        assert (root / row.path).stat().st_size == row.bytes
    # The same footage again (a retry, a restart): nothing is written twice.
    again = BackfillWriter("cell", root, Storage(path=root, segment_seconds=2), index, (base + 3.2, base + 7.5), {})
    again.feed([(base + n / 15, AccessUnit(base + n / 15, data, key)) for n, (data, key) in enumerate(units)])
    assert again.finish().segments == 0 and len(index.all_segments("cell")) == len(rows_now)


def test_finished_jobs_are_forgotten_once_retention_deleted_their_time_and_the_counters_never_go_back(
        store: tuple[Path, SegmentIndex]) -> None:
    from nvr.base.config import Backfill as BackfillSettings
    from recorder.backfill import DONE, FAILED, PENDING, Backfill, BackfillCamera, BackfillCollector, BackfillJobs
    from streams.onvif import OnvifLink

    root, index = store
    base = 1_800_000_000.0
    rows = [index.add_segment(NewSegment(camera=camera, start=base + 10 * n, end=base + 10 * n + 8, frames=1,
                                         bytes=1, sha256="0" * 64, codec="h264", width=320, height=180,
                                         params="{}", path=f"recordings/{camera}/x/{n}.mp4"))
            for camera in ("cell", "hall") for n in range(4)]
    jobs = BackfillJobs(index)
    jobs.ensure_schema()
    made = {}
    for camera in ("cell", "hall"):
        for n in range(3):  # the holes between the four segments
            job = jobs.add(camera, base + 10 * n + 8, base + 10 * n + 10)
            state = PENDING if (camera, n) == ("cell", 0) else (DONE if n % 2 else FAILED)
            jobs.update(replace(job, state=state, segments=n + 1, retrieved_seconds=1.5 * (n + 1),
                                overlap_dropped=n))
            made[camera, n] = job.id
    onvif = Onvif(url="http://127.0.0.1:9/onvif/device_service")
    backfill = Backfill(root, Storage(path=root, segment_seconds=2), BackfillSettings(), 2.0, index,
                        [BackfillCamera(c, onvif, OnvifLink(c, onvif, Backoff())) for c in ("cell", "hall")])
    collector = BackfillCollector(backfill)

    def counters() -> dict[tuple[str, str], float]:
        return {(metric.name, sample.labels["camera"]): sample.value for metric in collector.collect()
                if metric.type == "counter" for sample in metric.samples if sample.name.endswith("_total")}

    asyncio.run(backfill._refresh())
    before = counters()
    assert before[("nvr_backfill_retrieved_seconds", "cell")] == pytest.approx(1.5 * 6)
    # Retention deletes the two oldest segments of "cell" and nothing of "hall".
    for row in rows[:2]:
        index.record_deletion(row, "retention: age")
    forgotten = jobs.prune()
    # Only finished jobs wholly before the oldest segment left: cell's hole 1 (done); its hole 0 is still
    # pending (a queue never loses work), its hole 2 lies after the oldest segment kept; hall keeps all.
    assert forgotten == [made["cell", 1]]
    assert jobs.prune() == []  # idempotent
    asyncio.run(backfill._refresh())
    assert sorted(j.id for j in backfill.list_jobs()) == sorted(set(made.values()) - {made["cell", 1]})
    assert counters() == before  # what forgotten jobs retrieved still counts
    kinds = {c.cause for c in backfill.causes("cell", base, base + 40)}
    assert kinds == {"edge_pending", "edge_unavailable"}
    # The queue's in-memory copy follows every change without reading the table back.
    job = backfill.list_jobs("cell")[0]
    asyncio.run(backfill._save(replace(job, state=DONE, segments=9)))
    assert backfill.list_jobs("cell")[0].segments == 9
    assert [j.segments for j in jobs.all() if j.id == job.id] == [9]


def test_backfilled_footage_cut_off_by_a_crash_is_recovered_still_saying_it_came_from_the_card(
        store: tuple[Path, SegmentIndex]) -> None:
    from recorder.reconcile import reconcile

    root, index = store
    units = encode_h264(120, fps=15, gop=15)  # 8 s
    base = 1_800_000_000.0
    for start, end, name in ((base - 2, base, "a"), (base + 8, base + 10, "b")):
        index.add_segment(NewSegment(camera="cell", start=start, end=end, frames=1, bytes=1, sha256="0" * 64,
                                     codec="h264", width=320, height=180, params="{}",
                                     path=f"recordings/cell/x/{name}.mp4"))
    writer = BackfillWriter("cell", root, Storage(path=root, segment_seconds=60), index, (base, base + 8),
                            {"origin": "backfill", "source": {"recording": "SD_1", "camera": "cell"}})
    writer.feed([(base + n / 15, AccessUnit(base + n / 15, data, key)) for n, (data, key) in enumerate(units[:75])])
    # The daemon dies here: the segment is a .part file with a few complete fragments and no index row.
    parts = list((root / "recordings" / "cell").rglob("*.mp4.part"))
    assert len(parts) == 1 and parts[0].name.endswith("-backfill.mp4.part"), parts
    report = reconcile(root, index)
    assert len(report.recovered) == 1
    row = next(r for r in index.all_segments("cell") if r.path == report.recovered[0])
    assert decode_meta(row.meta) == {"origin": "backfill", "indexed_from": "recovered"}
    assert row.status == "recovered" and row.start == pytest.approx(base) and row.end > base + 1
    assert probe(root / row.path)["streams"][0]["codec_name"] == "h264"
    # A live segment's file carries no origin, and a finished backfill segment keeps its writer's meta.
    again = BackfillWriter("cell", root, Storage(path=root, segment_seconds=60), index, (row.end, base + 8),
                           {"origin": "backfill", "source": {"recording": "SD_1", "camera": "cell"}})
    again.feed([(base + n / 15, AccessUnit(base + n / 15, data, key)) for n, (data, key) in enumerate(units)])
    again.finish()
    done = [r for r in index.all_segments("cell") if r.start > row.start and "/x/" not in r.path]
    assert done and all(r.path.endswith("-backfill.mp4") for r in done)
    assert all(decode_meta(r.meta)["source"] == {"recording": "SD_1", "camera": "cell"} for r in done)


# -- config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "expected"), [
    ("backfill: {max_age_seconds: 10}", "backfill.max_age_seconds: Input should be greater than or equal to 60"),
    ("backfill: {max_bitrate_kbps: 0}", "backfill.max_bitrate_kbps: Input should be greater than or equal to 64"),
    ("backfill: {attempts: 0}", "backfill.attempts: Input should be greater than or equal to 1"),
    ("backfill: {speed: 3}", "backfill.speed: unknown key"),
])
def test_the_backfill_settings_are_checked_and_each_problem_names_its_key(section: str, expected: str) -> None:
    from nvr.base import config as configmod

    document = ("station: {id: s, name: S}\n" + section + "\ncameras:\n- {id: c, name: C, url: rtsp://10.0.0.5/x,"
                " onvif: {url: http://10.0.0.5/onvif/device_service, backfill: false}}\n")
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(document, source="c.yaml", environ={})
    assert any(expected in p for p in err.value.problems), err.value.problems
    good = configmod.parse(document.replace(section, "backfill: {max_age_seconds: 3600}"), environ={})
    assert good.backfill.max_age_seconds == 3600 and good.cameras[0].onvif is not None
    assert good.cameras[0].onvif.backfill is False


def test_the_simulated_card_is_bounded_oldest_out_by_whole_groups_of_pictures_and_has_holes() -> None:
    from sim.sd_card import SdCard

    card = SdCard("rtsp://127.0.0.1:9/unused", time.time, max_seconds=10.0, max_bytes=1 << 20)  # never started
    for n in range(300):  # 20 s at 15 fps, a keyframe a second
        card._keep(1000.0 + n / 15, bytes(100), n % 15 == 0)
    first, last = card.span()  # type: ignore[misc]
    assert last == pytest.approx(1000.0 + 299 / 15) and 9.0 <= last - first <= 10.0
    assert card.frames(0.0)[0].keyframe  # the card always begins at a keyframe
    card.fail()
    for n in range(300, 330):
        card._keep(1000.0 + n / 15, bytes(100), n % 15 == 0)  # the card is out: nothing kept
    card.restore()
    for n in range(330, 360):
        card._keep(1000.0 + n / 15, bytes(100), n % 15 == 0)
    runs = card.runs()
    assert len(runs) == 2 and runs[1][0] == pytest.approx(1000.0 + 330 / 15)  # a hole of two seconds
    assert card.frames(1000.0 + 331 / 15)[0].at == pytest.approx(1000.0 + 330 / 15)  # from the keyframe before
    small = SdCard("rtsp://127.0.0.1:9/unused", time.time, max_seconds=3600.0, max_bytes=50_000)
    for n in range(300):
        small._keep(1000.0 + n / 15, bytes(1000), n % 15 == 0)
    assert sum(len(f.data) for f in small.frames(0.0)) <= 50_000 and small.frames(0.0)[0].keyframe
