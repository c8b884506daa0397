"""A technician's config mistakes are caught before anything starts, each named by line and key."""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from pydantic import ValidationError

from nvr.base import config, secrets
from tests.conftest import REPO

GOOD = """\
station: {id: st-12, name: "Station 12"}
storage: {path: /var/lib/nvr, segment_seconds: 60, retention_days: 30, min_free_percent: 5}
web: {listen: "127.0.0.1:8080"}
health: {stall_seconds: 5}
cameras:
  - id: cell-1
    name: "Holding cell 1"
    zone: holding_cell
    url: rtsp://user:${CELL1_PASS}@10.0.0.21:554/stream1
    live_url: rtsp://user:${CELL1_PASS}@10.0.0.21:554/stream2
    record: true
  - id: hall_2
    name: Hall
    url: rtsp://10.0.0.22/h264
"""

PASSWORD = "Pa55@w:rd%21!"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvr", *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env
    )


def test_example_config_in_repo_is_valid() -> None:
    cfg = config.load(REPO / "config.yaml", environ={"CELL1_PASS": "x"})
    assert cfg.station.id == "st-12"
    assert {c.id for c in cfg.cameras} == {"cell-1", "hall-1"}


def test_good_config_parses_and_is_frozen() -> None:
    cfg = config.parse(GOOD, environ={"CELL1_PASS": PASSWORD})
    cell = cfg.cameras[0]
    assert cell.zone is config.Zone.HOLDING_CELL
    assert cfg.cameras[1].zone is config.Zone.OTHER and cfg.cameras[1].record
    with pytest.raises(ValidationError):
        cell.url = "rtsp://other"  # type: ignore[misc]


def test_password_is_percent_encoded_into_url_userinfo() -> None:
    cfg = config.parse(GOOD, environ={"CELL1_PASS": PASSWORD})
    parts = urllib.parse.urlsplit(cfg.cameras[0].url)
    assert parts.hostname == "10.0.0.21" and parts.port == 554 and parts.path == "/stream1"
    assert urllib.parse.unquote(parts.password or "") == PASSWORD
    assert PASSWORD not in cfg.cameras[0].display_url
    assert "***" in cfg.cameras[0].display_url


def test_password_from_systemd_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "CELL1_PASS").write_text(PASSWORD + "\n")
    cfg = config.parse(GOOD, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert urllib.parse.unquote(urllib.parse.urlsplit(cfg.cameras[0].url).password or "") == PASSWORD


def test_resolved_password_is_redacted_in_every_form() -> None:
    config.parse(GOOD, environ={"CELL1_PASS": PASSWORD})
    encoded = urllib.parse.quote(PASSWORD, safe="")
    text = f"failed rtsp://user:{encoded}@10.0.0.21/x raw={PASSWORD} enc={encoded}"
    cleaned = secrets.redact(text)
    assert PASSWORD not in cleaned and encoded not in cleaned and "%21" not in cleaned


def test_missing_reference_names_variable_and_path() -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse(GOOD, source="c.yaml", environ={})
    assert any("c.yaml:9: cameras[0].url: ${CELL1_PASS} is not set" in p for p in err.value.problems)


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (GOOD.replace("    record: true\n", "    record: true\n    colour: red\n"), "c.yaml:12: cameras[0].colour: unknown key"),
        (GOOD.replace("id: hall_2", "id: cell-1"), "c.yaml:12: cameras[1].id: duplicate camera id 'cell-1'"),
        (GOOD.replace("url: rtsp://10.0.0.22/h264", "url: http://10.0.0.22/h264"), "c.yaml:14: cameras[1].url: must start with rtsp://"),
        (GOOD.replace("url: rtsp://10.0.0.22/h264", "url: rtsp://10.0.0.22:99999/x"), "cameras[1].url: not a valid URL"),
        (GOOD.replace("zone: holding_cell", "zone: cellar"), "c.yaml:8: cameras[0].zone: Input should be"),
        (GOOD.replace("id: st-12", "id: St_12"), "c.yaml:1: station.id: String should match pattern"),
        (GOOD.replace("segment_seconds: 60", "segment_seconds: 0"), "storage.segment_seconds: Input should be greater"),
        (GOOD.replace("path: /var/lib/nvr", "path: var/lib"), "storage.path: must be an absolute path"),
        (GOOD.replace('listen: "127.0.0.1:8080"', 'listen: "localhost"'), "web.listen: must be host:port"),
        (GOOD.replace("health: {stall_seconds: 5}", "health: {stall_seconds: 5}\nhealth: {}"), "health: duplicate key"),
        (GOOD.replace("station: {id: st-12, name: \"Station 12\"}\n", ""), "station: required key is missing"),
        ("cameras: [\n", "invalid YAML"),
    ],
)
def test_each_problem_is_named(broken: str, expected: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.parse(broken, source="c.yaml", environ={"CELL1_PASS": "x"})
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_all_problems_reported_at_once() -> None:
    broken = GOOD.replace("id: hall_2", "id: cell-1").replace("zone: holding_cell", "zone: cellar")
    broken = broken.replace("    record: true\n", "    record: true\n    colour: red\n")
    with pytest.raises(config.ConfigError) as err:
        config.parse(broken, source="c.yaml", environ={"CELL1_PASS": "x"})
    assert len(err.value.problems) == 3


def test_error_never_echoes_the_password() -> None:
    broken = GOOD.replace("@10.0.0.21:554/stream1", "@10.0.0.21:99999/stream1")
    with pytest.raises(config.ConfigError) as err:
        config.parse(broken, source="c.yaml", environ={"CELL1_PASS": PASSWORD})
    text = "\n".join(err.value.problems)
    assert "cameras[0].url" in text
    assert PASSWORD not in text and urllib.parse.quote(PASSWORD, safe="") not in text


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    ok = run_cli("check-config", "-c", str(good), env={"CELL1_PASS": "x", "PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") == 1 and "st-12" in ok.stdout and "2 camera(s)" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("id: hall_2", "id: cell-1").replace("    record: true\n", "    record: true\n    colour: red\n"))
    result = run_cli("check-config", "-c", str(bad), env={"CELL1_PASS": "x", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "cameras[0].colour: unknown key" in result.stderr
    assert "cameras[1].id: duplicate camera id" in result.stderr


def test_run_refuses_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("url: rtsp://10.0.0.22/h264", "url: ftp://10.0.0.22/h264"))
    result = run_cli("run", "-c", str(bad), env={"CELL1_PASS": "x", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "cameras[1].url: must start with rtsp://" in result.stderr
    assert "listening" not in result.stderr


def test_station_timezone_is_an_iana_zone_or_a_config_error_naming_the_key() -> None:
    assert config.parse(GOOD, environ={"CELL1_PASS": "x"}).station.timezone == "UTC"
    tehran = GOOD.replace('name: "Station 12"}', 'name: "Station 12", timezone: Asia/Tehran}')
    assert config.parse(tehran, environ={"CELL1_PASS": "x"}).station.timezone == "Asia/Tehran"
    for bad in ("Mars/Olympus", "../../etc/passwd", ""):
        text = GOOD.replace('name: "Station 12"}', f'name: "Station 12", timezone: "{bad}"}}')
        with pytest.raises(config.ConfigError) as caught:
            config.parse(text, environ={"CELL1_PASS": "x"})
        assert "station.timezone" in str(caught.value)
