"""Incident cases: an auditor gathers the holding cell, the corridor and the officer's body camera for one
incident, and the station holds, exports and accounts for all of it as one case.

One daemon for the module: two simulated cameras and one body camera whose file a dock uploads.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nvr.base.timeutil import iso, parse_iso
from nvr.identity.accounts_cli import create_token
from nvr.identity.roles import Role
from tests.conftest import REPO, StationProcess, wait_until
from tests.test_bodycam import make_video
from tests.test_live import browser  # noqa: F401 - the Chromium fixture

pytestmark = pytest.mark.timeout(300)


class Station:
    def __init__(self, daemon: StationProcess) -> None:
        self.daemon = daemon
        self.auditor = create_token(daemon.auth_db, "auditor", Role.AUDITOR)
        self.cell_auditor = create_token(daemon.auth_db, "cell-auditor", Role.AUDITOR, frozenset({"cell"}))
        self.dock = create_token(daemon.auth_db, "dock", Role.DOCK)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        return self.daemon.request(method, path, body, headers={"Authorization": f"Bearer {token or self.auditor}"})

    def holds(self) -> list[dict[str, Any]]:
        status, body = self.call("GET", "/api/holds")
        assert status == 200
        return body  # type: ignore[no-any-return]

    def wait_export(self, export_id: str) -> bytes:
        def done() -> bool:
            _, job = self.call("GET", f"/api/exports/{export_id}")
            assert job["state"] != "failed", job
            return job["state"] == "done"

        wait_until(done, 60, "the case's export never finished")
        status, data = self.call("GET", f"/api/exports/{export_id}/download")
        assert status == 200
        return data  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    from sim.client import SimCamera

    workdir = tmp_path_factory.mktemp("cases")
    cams = [SimCamera(name, width=320, height=180, fps=15, gop=15) for name in ("cell", "corridor")]
    for cam in cams:
        cam.start()
    daemon = StationProcess(workdir, [
        {"id": "cell", "name": "Holding cell", "zone": "holding_cell", "url": cams[0].url},
        {"id": "corridor", "name": "Corridor", "zone": "corridor", "url": cams[1].url},
    ], storage={"segment_seconds": 3})
    daemon.config["bodycams"] = [{"id": "bwc-0142", "name": "Body camera 0142"}]
    daemon.config_path.write_text(yaml.safe_dump(daemon.config, sort_keys=False))
    daemon.start()
    try:
        daemon.wait_state("cell", "online", timeout=30)
        daemon.wait_state("corridor", "online", timeout=30)
        yield Station(daemon)
    finally:
        daemon.stop()
        for cam in cams:
            cam.stop()


def indexed_until(station: Station, camera: str, since: float) -> float:
    """The end of the camera's last indexed segment after ``since`` (``since`` if it has none)."""
    query = urllib.parse.urlencode({"camera": camera, "start": iso(since - 60), "end": iso(time.time() + 60)})
    status, body = station.call("GET", "/api/recordings?" + query)
    assert status == 200, body
    return max([since] + [parse_iso(s["end"]) for s in body["segments"]])


@pytest.fixture(scope="module")
def incident(station: Station, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Case 1404-77: six seconds of both cameras and the body camera's file, and a bookmark.

    The range starts a second after both cameras came online (not after the daemon started: under load a camera
    may take longer than the range's lead to connect), and the case is made once both cameras have an indexed
    segment past its end, so every camera of the case has recordings in it.
    """
    start = time.time() + 1
    wait_until(lambda: all(indexed_until(station, camera, start) >= start + 6 for camera in ("cell", "corridor")),
               60, "the cameras' segments never reached the end of the case's range")
    video = make_video(tmp_path_factory.mktemp("bwc") / "bwc.mp4", start, 5)
    status, item = station.daemon.request("POST", "/api/bodycams/bwc-0142/recordings", video.read_bytes(), headers={
        "Content-Type": "video/mp4", "Authorization": f"Bearer {station.dock}"})
    assert status == 201, item
    status, case = station.call("POST", "/api/cases", {"number": "1404-77", "title": "Complaint against arrest",
                                                       "description": "Detainee says he was pushed."})
    assert status == 201, case
    items = []
    for camera in ("cell", "corridor", "bwc-0142"):
        status, added = station.call("POST", f"/api/cases/{case['id']}/items", {
            "camera": camera, "start": iso(start), "end": iso(start + 6), "note": f"{camera} during the arrest"})
        assert status == 201, added
        items.append(added)
    status, mark = station.call("POST", f"/api/cases/{case['id']}/bookmarks",
                                {"camera": "cell", "at": iso(start + 2), "note": "detainee falls"})
    assert status == 201, mark
    return {"case": case, "items": items, "start": start, "bookmark": mark}


def test_a_case_holds_its_ranges_and_lists_them(station: Station, incident: dict[str, Any]) -> None:
    case_id, start = incident["case"]["id"], incident["start"]
    holds = {h["id"]: h for h in station.holds()}
    for item in incident["items"]:
        assert item["hold_active"] and item["hold_id"] in holds
        assert holds[item["hold_id"]]["camera"] == item["camera"] and "1404-77" in holds[item["hold_id"]]["reason"]
    status, case = station.call("GET", f"/api/cases/{case_id}")
    assert status == 200 and case["state"] == "open"
    assert [i["camera"] for i in case["items"]] == ["cell", "corridor", "bwc-0142"]
    playback = urllib.parse.urlsplit(case["items"][2]["playback"])
    assert playback.path == "/playback"
    assert urllib.parse.parse_qs(playback.query)["sources"] == ["bwc-0142"]
    assert set(urllib.parse.parse_qs(urllib.parse.urlsplit(case["playback"]).query)["sources"][0].split(",")) == {
        "cell", "corridor", "bwc-0142"}
    status, listing = station.call("GET", "/api/cases")
    assert status == 200 and listing["cases"][0]["number"] == "1404-77" and listing["cases"][0]["items"] == 3
    query = urllib.parse.urlencode({"camera": "cell", "start": iso(start), "end": iso(start + 10)})
    status, marks = station.call("GET", "/api/bookmarks?" + query)
    assert status == 200
    assert marks["bookmarks"] == [{"id": incident["bookmark"]["id"], "case_id": case_id, "camera": "cell",
                                   "at": iso(start + 2), "note": "detainee falls"}]


def test_bad_case_input_is_refused_with_its_cause(station: Station, incident: dict[str, Any]) -> None:
    case_id = incident["case"]["id"]
    for body, code in [({"title": "x"}, "invalid_number"), ({"number": "1", "title": ""}, "invalid_title"),
                       ({"number": "1404-77", "title": "again"}, "case_exists"),
                       ({"number": ["x"], "title": "t"}, "invalid_number")]:
        status, answer = station.call("POST", "/api/cases", body)
        assert answer["error"] == code and status in (400, 409), (body, answer)
    start = incident["start"]
    for body, code in [({"camera": "nope", "start": iso(start), "end": iso(start + 1)}, "unknown_camera"),
                       ({"camera": "cell", "start": iso(start + 5), "end": iso(start)}, "invalid_end"),
                       ({"camera": "cell", "start": "yesterday", "end": iso(start)}, "invalid_start")]:
        status, answer = station.call("POST", f"/api/cases/{case_id}/items", body)
        assert answer["error"] == code, (body, answer)
    status, answer = station.call("GET", "/api/cases/999999")
    assert status == 404 and answer["error"] == "unknown_case"
    status, answer = station.call("GET", "/api/cases/1e3")
    assert status == 400 and answer["error"] == "invalid_case_id"
    assert len(station.holds()) == 3, "a refused range placed no hold"


def test_a_restricted_auditor_sees_only_their_cameras_of_a_case(station: Station, incident: dict[str, Any]) -> None:
    case_id = incident["case"]["id"]
    status, case = station.call("GET", f"/api/cases/{case_id}", token=station.cell_auditor)
    assert status == 200 and [i["camera"] for i in case["items"]] == ["cell"] and case["hidden_items"] == 2
    status, answer = station.call("POST", f"/api/cases/{case_id}/export", {"reason": "court"},
                                  token=station.cell_auditor)
    assert status == 403 and answer["error"] == "camera_forbidden"
    status, answer = station.call("POST", f"/api/cases/{case_id}/items", {
        "camera": "bwc-0142", "start": iso(incident["start"]), "end": iso(incident["start"] + 1)},
        token=station.cell_auditor)
    assert status == 403
    status, history = station.call("GET", f"/api/cases/{case_id}/history", token=station.cell_auditor)
    assert status == 200 and {e["camera"] for e in history["entries"]} <= {"cell", None}
    # A case of only other cameras does not exist for them.
    status, other = station.call("POST", "/api/cases", {"number": "1404-90", "title": "Corridor only"})
    assert status == 201
    status, _ = station.call("POST", f"/api/cases/{other['id']}/items", {
        "camera": "corridor", "start": iso(incident["start"]), "end": iso(incident["start"] + 1)})
    assert status == 201
    status, answer = station.call("GET", f"/api/cases/{other['id']}", token=station.cell_auditor)
    assert status == 404 and answer["error"] == "unknown_case"
    status, listing = station.call("GET", "/api/cases", token=station.cell_auditor)
    assert [c["number"] for c in listing["cases"]] == ["1404-77"]


def test_one_package_of_the_whole_case_verifies_and_the_custody_history_is_complete(
        station: Station, incident: dict[str, Any], tmp_path: Path) -> None:
    case_id = incident["case"]["id"]
    status, job = station.call("POST", f"/api/cases/{case_id}/export", {"reason": "court order 55/1404"})
    assert status == 202, job
    package = tmp_path / "case.zip"
    package.write_bytes(station.wait_export(job["id"]))
    with zipfile.ZipFile(package) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["case"]["number"] == "1404-77" and len(manifest["case"]["items"]) == 3
    assert manifest["case"]["bookmarks"][0]["note"] == "detainee falls"
    assert {c["id"] for c in manifest["cameras"]} == {"cell", "corridor", "bwc-0142"}
    assert all(c["segments"] and c["requested"] for c in manifest["cameras"])
    _, key = station.call("GET", "/api/key")
    pem = tmp_path / "station.pem"
    pem.write_text(key["public_key_pem"])
    checked = subprocess.run([sys.executable, "-m", "nvr", "verify", str(package), "--pubkey", str(pem)], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    expected = ["case.create", "case.item.add", "case.item.add", "case.item.add", "case.bookmark.add",
                "case.export", "export.download"]

    def history() -> list[dict[str, Any]] | None:
        status, body = station.call("GET", f"/api/cases/{case_id}/history")
        assert status == 200
        actions = [e["action"] for e in body["entries"] if e["action"] in expected]
        return body["entries"] if all(a in actions for a in expected) else None

    entries = wait_until(history, 10, "the custody history misses actions")
    actions = [e["action"] for e in entries]
    for earlier, later in zip(expected, expected[1:], strict=False):
        assert actions.index(earlier) <= actions.index(later)
    assert all(e["hash_ok"] for e in entries)
    # Everyone who touched the case, the restricted auditor's look at it too.
    assert {e["actor"] for e in entries if e["action"] in expected} == {"token:auditor"}
    assert {e["actor"] for e in entries} <= {"token:auditor", "token:cell-auditor"}
    assert {e["camera"] for e in entries if e["action"] == "case.item.add"} == {"cell", "corridor", "bwc-0142"}
    assert any(e["action"] == "case.view" for e in entries)


def test_the_case_page_shows_the_timeline_and_exports_from_a_click(station: Station, incident: dict[str, Any],
                                                                   browser: Any) -> None:  # noqa: F811
    context = browser.new_context()
    try:
        context.set_extra_http_headers({"Authorization": f"Bearer {station.auditor}"})
        page = context.new_page()
        page.goto(f"{station.daemon.base_url}/cases/{incident['case']['id']}")
        page.wait_for_selector("#timeline .row .item", timeout=20_000)
        assert page.locator("#timeline .row").count() == 3
        assert page.locator("#timeline .item.bodycam").count() == 1
        assert page.locator("#timeline .mark").count() == 1
        assert page.locator("#items tbody tr").count() == 3
        href = page.locator("#items tbody tr").nth(2).locator("a").get_attribute("href") or ""
        assert href.startswith("/playback?") and "sources=bwc-0142" in href
        before = page.locator("#exports li").count()
        page.fill("#export-reason", "prosecutor's request")
        page.click("#export")
        # (the page's CSP allows no eval, so no wait_for_function: the condition is polled from here)
        wait_until(lambda: page.locator("#exports li a").count() > before, 60, "no package link after the export")
        assert page.locator("#history tbody tr").count() >= 5
        assert "EDITED" not in page.inner_text("#history")
    finally:
        context.close()
    # The same page for a Persian reader: right to left, its words and dates from the Persian catalogue.
    context = browser.new_context(locale="fa-IR")
    try:
        context.set_extra_http_headers({"Authorization": f"Bearer {station.auditor}"})
        page = context.new_page()
        page.goto(f"{station.daemon.base_url}/cases/{incident['case']['id']}")
        page.wait_for_selector("#timeline .row .item", timeout=20_000)
        assert page.evaluate("[document.documentElement.lang, document.documentElement.dir]") == ["fa", "rtl"]
        assert page.inner_text("#title").startswith("پروندهٔ ")
        first_from = page.locator("#items tbody tr").first.locator("td").nth(1).inner_text()
        assert re.search("۱۴[۰-۹]{2}/[۰-۹]{2}/[۰-۹]{2}", first_from), first_from  # Solar Hijri (14xx), Persian digits
    finally:
        context.close()


def test_closing_releases_holds_only_when_asked(station: Station, incident: dict[str, Any]) -> None:
    start = incident["start"]
    status, other = station.call("POST", "/api/cases", {"number": "1404-78", "title": "Lost property"})
    assert status == 201
    status, kept = station.call("POST", f"/api/cases/{other['id']}/items",
                                {"camera": "corridor", "start": iso(start), "end": iso(start + 2)})
    assert status == 201
    status, closed = station.call("POST", f"/api/cases/{other['id']}/close", {"reason": "resolved"})
    assert status == 200 and closed["state"] == "closed" and closed["released_holds"] == []
    assert kept["hold_id"] in {h["id"] for h in station.holds()}, "closing without release_holds kept the hold"
    status, answer = station.call("POST", f"/api/cases/{other['id']}/items",
                                  {"camera": "cell", "start": iso(start), "end": iso(start + 2)})
    assert status == 409 and answer["error"] == "case_closed"

    case_id = incident["case"]["id"]
    status, closed = station.call("POST", f"/api/cases/{case_id}/close",
                                  {"reason": "court ruled", "release_holds": True})
    assert status == 200 and sorted(closed["released_holds"]) == sorted(i["hold_id"] for i in incident["items"])
    active = {h["id"] for h in station.holds()}
    assert not active & {i["hold_id"] for i in incident["items"]}
    assert all(not i["hold_active"] for i in closed["items"])
    status, answer = station.call("POST", f"/api/cases/{case_id}/close", {"reason": "again"})
    assert status == 409 and answer["error"] == "case_closed"
    status, answer = station.call("POST", f"/api/cases/{case_id}/close", {"reason": "x", "release_holds": "yes"})
    assert status == 400 and answer["error"] == "invalid_release_holds"
