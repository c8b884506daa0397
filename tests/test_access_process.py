"""Access control stories that need the real ``nvr run`` process: its log, TLS, the CLI.

No camera streams here: the one camera is unreachable on purpose.
"""

from __future__ import annotations

import datetime
import http.client
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nvr.base import config
from tests.conftest import REPO, StationProcess, wait_until

PASSWORD = "Pa55@w:rd%21!"
FORMS = [PASSWORD, urllib.parse.quote(PASSWORD, safe=""), urllib.parse.quote(PASSWORD),
         urllib.parse.quote_plus(PASSWORD), "Pa55@w"]


def test_a_literal_camera_password_is_a_config_error_naming_the_key() -> None:
    text = ("station: {id: st-1, name: S}\ncameras:\n  - id: cell-1\n    name: Cell\n"
            "    url: rtsp://viewer:Pa55word@10.0.0.21/stream1\n"
            "    live_url: rtsp://viewer:${CELL_PASS}@10.0.0.21/stream2\n")
    with pytest.raises(config.ConfigError) as err:
        config.parse(text, source="c.yaml", environ={"CELL_PASS": "x"})
    assert len(err.value.problems) == 1
    problem = err.value.problems[0]
    assert problem.startswith("c.yaml:5: cameras[0].url: a literal password is not allowed") and "Pa55word" not in problem
    ok = text.replace("viewer:Pa55word@", "viewer:${CELL_PASS}@")
    assert config.parse(ok, environ={"CELL_PASS": PASSWORD}).cameras[0].url.startswith("rtsp://viewer:Pa55%40")


def test_camera_password_never_leaks_while_the_camera_is_unreachable(
        daemon_factory: Callable[..., StationProcess]) -> None:
    daemon = daemon_factory([{"id": "gone", "name": "Gone", "zone": "holding_cell",
                              "url": "rtsp://viewer:${GONE_PASS}@127.0.0.1:1/stream"}],
                            env={"GONE_PASS": PASSWORD}, ingest={"open_timeout_seconds": 2})
    daemon.wait_state("gone", "offline", reason="unreachable", timeout=15)
    texts: dict[str, str] = {}
    for path in ("/metrics", "/api/cameras", "/api/cameras/gone", "/api/cameras/nope", "/api/events",
                 "/api/live/sessions", "/api/audit", "/healthz",
                 "/api/recordings?camera=gone&start=yesterday&end=now", "/api/coverage?start=x&end=y"):
        status, body = daemon.get(path)
        texts[path] = f"{status} {body!r}"
    status, body = daemon.request("POST", "/api/cameras/gone/whep", body=b"v=0 broken",
                                  headers={"Content-Type": "application/sdp"})
    texts["whep"] = f"{status} {body!r}"
    status, body = daemon.request("GET", "/api/cameras", auth=False)
    assert status == 401
    texts["anonymous"] = repr(body)
    assert "nvr_camera_up" in texts["/metrics"]
    daemon.stop()
    texts["log"] = daemon.log()
    assert "[gone] offline" in texts["log"]
    for where, text in texts.items():
        for form in FORMS:
            assert form not in text, f"password form {form!r} leaked into {where}"


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def nvr_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], cwd=REPO, capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_https_with_hsts_secure_cookies_and_cli_accounts(tmp_path: Path,
                                                        daemon_factory: Callable[..., StationProcess]) -> None:
    cert, key = self_signed(tmp_path)
    daemon = daemon_factory([], start=False, web={"tls": {"cert": str(cert), "key": str(key)}})
    context = ssl.create_default_context(cafile=str(cert))
    daemon.ssl_context = context
    cfg = str(daemon.config_path)
    # Accounts from the command line, as an administrator sets up a station.
    added = nvr_cli("user", "add", "sgt.jones", "--role", "auditor", "--cameras", "", "--password-stdin", "-c", cfg,
                    stdin="correct horse battery\n")
    assert added.returncode == 0, added.stderr
    assert nvr_cli("user", "add", "x", "--role", "monitor", "--password-stdin", "-c", cfg,
                   stdin="short\n").returncode == 1
    created = nvr_cli("token", "create", "--name", "prometheus", "--role", "technician", "-c", cfg)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("nvr_") and token not in (daemon.auth_db.read_bytes().decode("latin-1"))
    daemon.start()
    assert daemon.base_url.startswith("https://")
    assert "web server listening on https://" in daemon.log()

    conn = http.client.HTTPSConnection("127.0.0.1", daemon.port, context=context, timeout=10)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    assert resp.getheader("Strict-Transport-Security", "").startswith("max-age=")
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    origin = daemon.base_url
    conn.request("POST", "/api/login", body='{"username": "sgt.jones", "password": "correct horse battery"}',
                 headers={"Content-Type": "application/json", "Origin": origin})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    cookie = resp.getheader("Set-Cookie", "")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    conn.close()

    # Plain HTTP on the TLS port gets nowhere.
    plain = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        plain.request("GET", "/healthz")
        if plain.getresponse().status == 200:
            raise AssertionError("served over plain HTTP")
    plain.close()

    listed = nvr_cli("token", "list", "-c", cfg)
    assert "prometheus" in listed.stdout and token not in listed.stdout
    assert nvr_cli("token", "revoke", "prometheus", "-c", cfg).returncode == 0

    def refused() -> bool:
        return daemon.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})[0] == 401

    wait_until(refused, 15, "a revoked token still works")
    assert nvr_cli("user", "remove", "sgt.jones", "-c", cfg).returncode == 0
    daemon.stop()
    verify = nvr_cli("audit", "verify", "-c", cfg)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    from nvr.identity.audit import AuditLog, AuditQuery
    from nvr.identity.authdb import AuthDatabase

    db = AuthDatabase(daemon.auth_db)
    try:
        entries = AuditLog(db).query(AuditQuery())
    finally:
        db.close()
    actions = [(e.actor.split(":")[0], e.action) for e in entries]
    for expected in [("cli", "user.add"), ("cli", "token.create"), ("sgt.jones", "login.ok"),
                     ("cli", "token.revoke"), ("cli", "user.remove"), ("system", "daemon.stop")]:
        assert expected in actions, expected
