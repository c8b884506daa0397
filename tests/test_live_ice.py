"""STUN/TURN servers for viewers on other networks (``live.ice_servers``): handed to who may watch, never leaked.

The daemon and the viewers use the same servers; a viewer learns them from RFC 9725 ``Link`` headers on
``OPTIONS`` and on the answer.  A TURN server's credential, or the secret it shares with the station, never
appears in the log, the API, the metrics or an error.  An unreachable TURN server costs one bounded
answer, is logged, and is then left out of the daemon's gathering for a while.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from central.live_relay import ice_server_links
from nvr.base import config
from tests.conftest import StationProcess
from tests.test_live import _frames, _whep_client, recvonly_peer

SECRET = "shared-turn-secret-9f3a"
PASSWORD = "static-turn-password-77c1"


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ice_server_config_is_checked_and_its_secrets_are_never_shown(tmp_path: Path) -> None:
    def load(servers: Any) -> config.Config:
        path = tmp_path / "c.yaml"
        path.write_text(
            "station: {id: s1, name: S}\nstorage: {path: " + str(tmp_path) + "}\ncameras: []\n"
            "live:\n  ice_servers: " + servers + "\n")
        return config.load(path, environ={"TURN_PASSWORD": PASSWORD, "TURN_SECRET": SECRET})

    with pytest.raises(config.ConfigError) as refused:
        load('[{urls: ["turn:10.0.0.1:3478"]}]')
    assert "live.ice_servers" in str(refused.value) and "needs username and credential" in str(refused.value)
    with pytest.raises(config.ConfigError) as refused:
        load('[{urls: ["http://10.0.0.1"]}]')
    assert "is not a stun:, turn: or turns: URL" in str(refused.value)
    with pytest.raises(config.ConfigError):
        load('[{urls: ["turns:10.0.0.1:5349?transport=udp"]}]')  # TURN over TLS is TCP
    loaded = load('[{urls: ["turn:10.0.0.1:3478?transport=udp"], username: nvr, credential: "${TURN_PASSWORD}"},'
                  ' {urls: ["turn:10.0.0.2:3478"], auth_secret: "${TURN_SECRET}"}]')
    assert loaded.live.ice_servers[0].credential == PASSWORD
    assert PASSWORD not in repr(loaded) and SECRET not in repr(loaded)
    from nvr.base import secrets
    assert secrets.redact(f"x {PASSWORD} {SECRET}") == "x *** ***"


def test_the_console_relay_passes_on_only_ice_server_links() -> None:
    assert ice_server_links({"Content-Type": "application/sdp"}) == {}
    value = ('<turn:10.0.0.1:3478?transport=udp>; rel="ice-server"; username="1:u"; credential="c"; '
             'credential-type="password", </elsewhere>; rel="next"')
    assert ice_server_links({"link": value}) == {
        "Link": '<turn:10.0.0.1:3478?transport=udp>; rel="ice-server"; username="1:u"; credential="c"; '
                'credential-type="password"'}


def links(headers: Any) -> list[dict[str, str]]:
    out = []
    for link in re.split(r",\s*(?=<)", headers.get("Link", "")):
        url = re.match(r"<([^>]*)>", link)
        if url:
            out.append({"url": url.group(1), **dict(re.findall(r'([a-z-]+)="([^"]*)"', link))})
    return out


async def test_viewers_get_their_turn_servers_and_an_unreachable_one_costs_one_bounded_answer(
        cameras: Callable[..., Any], daemon_factory: Callable[..., StationProcess]) -> None:
    cam = cameras("lobby", width=640, height=360, fps=15)
    dead = closed_udp_port()
    daemon = daemon_factory(
        [{"id": "lobby", "name": "Lobby", "url": cam.url}],
        live={"ice_servers": [
            {"urls": ["stun:127.0.0.1:3478"]},
            {"urls": [f"turn:127.0.0.1:{dead}?transport=udp"], "auth_secret": "${TURN_SECRET}",
             "credential_ttl_seconds": 600},
        ]},
        env={"TURN_SECRET": SECRET},
    )
    daemon.wait_state("lobby", "online", timeout=30)
    daemon.add_user("duty.officer", "monitor", "correct horse battery")
    status, _ = daemon.request("OPTIONS", "/api/cameras/lobby/whep", auth=False)
    assert status == 401  # no servers, no credentials for who may not watch

    import urllib.request
    req = urllib.request.Request(daemon.base_url + "/api/cameras/lobby/whep", method="OPTIONS",
                                 headers={"Authorization": f"Bearer {daemon.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        named = links(resp.headers)
    assert [n["url"] for n in named] == ["stun:127.0.0.1:3478", f"turn:127.0.0.1:{dead}?transport=udp"]
    turn = named[1]
    assert turn["rel"] == "ice-server" and turn["credential-type"] == "password"
    expiry, _, user = turn["username"].partition(":")
    assert 590 <= int(expiry) - time.time() <= 610 and user  # coturn's REST API scheme: <expiry>:<user>
    expected = base64.b64encode(hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest())
    assert turn["credential"] == expected.decode()

    # The daemon's own gathering waits for the dead TURN server once (aioice gives up after 5 s) ...
    started = time.monotonic()
    first, _ = await _whep_client(daemon.base_url, "lobby", daemon.token)
    slow = time.monotonic() - started
    try:
        frames = await _frames(first, 3, timeout=20)  # ... and the viewer still plays over the direct path
        assert frames[-1].width == 640
        assert 4 <= slow < 9, slow
        # ... and then leaves it out: the next answer is prompt again.
        started = time.monotonic()
        second, _ = await _whep_client(daemon.base_url, "lobby", daemon.token)
        assert time.monotonic() - started < 2.5
        await second.close()
    finally:
        await first.close()
    log = daemon.log()
    assert log.count("the TURN server gave no relay candidate") == 1
    assert log.count("the STUN server gave no server-reflexive candidate") == 1
    # The secret and every credential made from it stay out of the log, the API and the metrics.
    pc = await recvonly_peer()
    await pc.close()
    texts = [log, str(daemon.get("/api/live/sessions")[1]), str(daemon.get("/metrics")[1]),
             str(daemon.get("/api/cameras")[1])]
    for text in texts:
        assert SECRET not in text and turn["credential"] not in text
