"""An insider with the daemon's own account deletes the newest audit entries and segments; the console saw them.

The station signs checkpoints of its chain heads; the central console collects them where the
station cannot write. Without them, truncating a chain's tail goes unnoticed (shown here first);
with the console's export, `nvr audit verify` and `nvr verify-storage` name what is gone.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, StationProcess, wait_until
from tests.test_central import Console

CAMERA = {"width": 320, "height": 240, "fps": 10, "gop": 10}


def nvr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def truncate_audit_tail(db_path: Path, keep_through: int) -> int:
    """What an attacker with write access to auth.sqlite3 does: drop the guard, delete the tail, hide the counter."""
    db = sqlite3.connect(db_path)
    try:
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f'DROP TRIGGER "{name}"')
        deleted = db.execute("DELETE FROM audit WHERE id > ?", (keep_through,)).rowcount
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit'", (keep_through,))
        db.commit()
        return deleted
    finally:
        db.close()


def truncate_segment_tail(storage: Path, camera: str, from_id: int) -> list[str]:
    db = sqlite3.connect(storage / "index.sqlite3")
    try:
        rows = db.execute("SELECT id, path FROM segments WHERE camera = ? AND id >= ?", (camera, from_id)).fetchall()
        for row_id, path in rows:
            db.execute("DELETE FROM segments WHERE id = ?", (row_id,))
            (storage / path).unlink()
        db.commit()
        return [path for _, path in rows]
    finally:
        db.close()


def test_tail_truncation_is_caught_with_the_consoles_checkpoints(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess], tmp_path: Path) -> None:
    from nvr.identity.accounts_cli import create_token
    from nvr.identity.roles import Role

    cam = cameras("wit", **CAMERA)
    daemon = daemon_factory([{"id": "cell-1", "name": "Cell 1", "zone": "holding_cell", "url": cam.url}],
                            station={"id": "st-w", "name": "Station W"}, storage={"segment_seconds": 2},
                            recordings={"checkpoint_seconds": 1})
    token = create_token(daemon.auth_db, "central", Role.CENTRAL)
    daemon.wait_state("cell-1", "online")
    console = Console(tmp_path / "console", [{"id": "st-w", "url": daemon.base_url, "token": "${TOKEN_W}"}],
                      {"TOKEN_W": token})
    config = yaml.safe_load(console.config_path.read_text())
    config["follow"]["checkpoint_seconds"] = 1
    console.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    console.start()
    try:
        _attack_and_catch(daemon, console, tmp_path)
    finally:
        console.stop()


def _attack_and_catch(daemon: StationProcess, console: Console, tmp_path: Path) -> None:
    # Make audit entries and segments the console will witness.
    for _ in range(3):
        assert daemon.get("/api/cameras")[0] == 200
        daemon.get("/api/audit")

    def witnessed() -> dict[str, Any] | None:
        status, doc = console.get("/api/stations/st-w/checkpoints")
        assert status == 200, doc
        bodies = [json.loads(c["body"]) for c in doc["checkpoints"]]
        latest = bodies[-1] if bodies else None
        if latest and latest["audit"]["id"] >= 5 and latest["cameras"].get("cell-1", {}).get("segment_id", 0) >= 3:
            return {"doc": doc, "latest": latest}
        return None

    seen = wait_until(witnessed, 30, "the console never collected a checkpoint with segments")
    witnessed_audit = seen["latest"]["audit"]["id"]
    witnessed_segment = seen["latest"]["cameras"]["cell-1"]["segment_id"]
    # The station key the console saw, and the keyring for package verification.
    status, ring = console.get("/api/keyring")
    assert status == 200 and ring["keys"][0]["station"] == "st-w"
    assert ring["keys"][0]["fingerprint"] == daemon.get("/api/key")[1]["fingerprint"]
    # The journal (here: the daemon's log) holds them too.
    assert f"checkpoint {seen['latest']['seq']} (" in daemon.log() and '"signature"' in daemon.log()

    daemon.stop()
    console.stop()
    checkpoints = tmp_path / "checkpoints.json"
    checkpoints.write_text(json.dumps(seen["doc"]))

    # The insider: delete the newest audit entries (down to before the witnessed head) and the newest segments.
    deleted = truncate_audit_tail(daemon.auth_db, witnessed_audit - 2)
    assert deleted >= 2
    gone = truncate_segment_tail(daemon.storage, "cell-1", witnessed_segment)
    db = sqlite3.connect(daemon.storage / "index.sqlite3")
    newest = db.execute("SELECT MAX(id) FROM segments WHERE camera = 'cell-1'").fetchone()[0]
    db.close()
    assert newest < witnessed_segment, (newest, witnessed_segment)  # the witnessed head is among the deleted

    # Without checkpoints, both chains still verify: this is the hole.
    alone = nvr("audit", "verify", "-c", str(daemon.config_path))
    assert alone.returncode == 0, alone.stdout
    storage_alone = nvr("verify-storage", "-c", str(daemon.config_path))
    assert storage_alone.returncode == 0, storage_alone.stdout

    # With the console's checkpoints, both name what is gone.
    audit = nvr("audit", "verify", "-c", str(daemon.config_path), "--checkpoints", str(checkpoints))
    assert audit.returncode == 1, audit.stdout + audit.stderr
    assert f"entry {witnessed_audit}: witnessed by checkpoint" in audit.stdout and "tail was deleted" in audit.stdout
    storage = nvr("verify-storage", "-c", str(daemon.config_path), "--checkpoints", str(checkpoints))
    assert storage.returncode == 1, storage.stdout + storage.stderr
    assert f"camera cell-1 segment {witnessed_segment}" in storage.stdout
    assert "tail was removed or rewritten" in storage.stdout
    assert gone  # deleted files are the reason, not a crash
    assert "Traceback" not in audit.stderr + storage.stderr

    # A checkpoints file edited to hide a checkpoint's content fails its signature, not silently.
    forged = json.loads(checkpoints.read_text())
    body = json.loads(forged["checkpoints"][-1]["body"])
    body["audit"]["id"] = 1
    forged["checkpoints"][-1]["body"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    checkpoints.write_text(json.dumps(forged))
    edited = nvr("audit", "verify", "-c", str(daemon.config_path), "--checkpoints", str(checkpoints))
    assert edited.returncode == 1 and "signature does not verify" in edited.stdout, edited.stdout


def test_checkpoints_route_is_for_unrestricted_auditors_and_the_console(
        daemon_factory: Callable[..., StationProcess]) -> None:
    from nvr.identity.accounts_cli import create_token
    from nvr.identity.roles import Role

    daemon = daemon_factory([{"id": "cell-1", "name": "Cell 1", "url": "rtsp://127.0.0.1:1/none"}],
                            recordings={"checkpoint_seconds": 1})
    wait_until(lambda: daemon.get("/api/checkpoints")[1].get("checkpoints"), 20, "no checkpoint")
    status, body = daemon.get("/api/checkpoints?after=0&limit=5")
    assert status == 200 and body["station"] == "st-test" and body["checkpoints"][0]["seq"] == 1
    first = json.loads(body["checkpoints"][0]["body"])
    assert first["reason"] == "start" and first["station"] == "st-test"
    restricted = create_token(daemon.auth_db, "aud-1", Role.AUDITOR, frozenset({"cell-1"}))
    monitor = create_token(daemon.auth_db, "mon-1", Role.MONITOR)
    assert daemon.request("GET", "/api/checkpoints", headers={"Authorization": f"Bearer {restricted}"})[0] == 403
    assert daemon.request("GET", "/api/checkpoints", headers={"Authorization": f"Bearer {monitor}"})[0] == 403
    for bad in ("after=-1", "after=x", "limit=0", "limit=100000"):
        status, body = daemon.get(f"/api/checkpoints?{bad}")
        assert status == 400 and body["error"].startswith("invalid_"), (bad, body)
    # stop signs a last checkpoint
    before = len(daemon.get("/api/checkpoints?limit=1000")[1]["checkpoints"])
    daemon.stop()
    db = sqlite3.connect(daemon.storage / "index.sqlite3")
    rows = db.execute("SELECT body FROM checkpoints ORDER BY seq").fetchall()
    db.close()
    assert len(rows) >= before and json.loads(rows[-1][0])["reason"] == "stop"
