"""``nvr discover``: a technician finds the station's ONVIF cameras and pastes what it prints into config.yaml.

WS-Discovery is multicast: the test needs the network namespace tests/isolated.sh makes
(its veth carries multicast, looped back to listeners in the namespace; nothing leaves it).
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nvr.base import config as configmod
from sim.onvif_camera import OnvifCamera
from tests.conftest import REPO

NAMESPACE_ADDRESS = "10.213.0.1"  # tests/isolated.sh's veth
PASSWORD = "d1sc@ver:y%2F!"

pytestmark = pytest.mark.skipif(not Path("/sys/class/net/nvr0").exists(),
                                reason="needs the network namespace of tests/isolated.sh (multicast)")


class JunkResponder:
    """A device on the network that answers every probe with junk, and with a 'match' that is no camera."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("", 3702))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack(
            "4s4s", socket.inet_aton("239.255.255.250"), socket.inet_aton(NAMESPACE_ADDRESS)))
        self.sock.settimeout(0.2)
        self.answered = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if b"Probe<" not in data and b":Probe>" not in data:
                continue
            found = re.search(rb"MessageID>([^<]+)<", data)
            relates = found.group(1).decode() if found else "urn:uuid:x"
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out.sendto(b"\x00\xff<<<not xml at all", peer)
            out.sendto(_match(relates, "ftp://not-a-camera/onvif/device_service"), peer)
            out.sendto(_match(relates, "http://[bad:port/onvif/device_service"), peer)
            out.close()
            self.answered += 1

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def _match(relates: str, xaddr: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
 xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"
 xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"
 xmlns:dn="http://www.onvif.org/ver10/network/wsdl">
<s:Header><a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</a:Action>
<a:MessageID>urn:uuid:{uuid.uuid4()}</a:MessageID><a:RelatesTo>{relates}</a:RelatesTo>
<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To></s:Header>
<s:Body><d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address>urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, xaddr)}</a:Address>
</a:EndpointReference><d:Types>dn:NetworkVideoTransmitter</d:Types><d:XAddrs>{xaddr}</d:XAddrs>
<d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>""".encode()


@pytest.fixture
def network() -> Iterator[list[OnvifCamera]]:
    cams = [
        OnvifCamera(rtsp_url="rtsp://127.0.0.1:8554/main", substream_url="rtsp://127.0.0.1:8554/sub",
                    user="admin", password=PASSWORD, model="SimCam 2000", serial="CELL0001").start().announce(),
        OnvifCamera(rtsp_url="rtsp://127.0.0.1:8556/ch1", user="admin", password=PASSWORD, manufacturer="Other",
                    model="Dome X", serial="HALL0002").start().announce(),
        # A camera whose account differs: listed, with why it could not be read, and no entry.
        OnvifCamera(rtsp_url="rtsp://127.0.0.1:8558/x", user="root", password="another",
                    model="Bullet", serial="YARD0003").start().announce(),
    ]
    junk = JunkResponder()
    yield cams
    junk.stop()
    for cam in cams:
        cam.stop()


def discover(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", "discover", "--timeout", "2", *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_discover_finds_the_simulated_cameras_and_prints_entries_that_are_valid_config(network) -> None:  # type: ignore[no-untyped-def]
    out = discover("--user", "admin", "--password-env", "CAM_PASS", env={"CAM_PASS": PASSWORD})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert PASSWORD not in text + out.stderr and "Traceback" not in out.stderr
    assert "# 3 ONVIF device(s) answered (2 other answer(s) ignored: not ONVIF devices)" in text
    assert "SimCam 2000, firmware 1.4.2, serial CELL0001" in text and "Other Dome X" in text
    assert "not read: auth_failed: the camera rejected the credentials" in text
    printed = yaml.safe_load(text)
    cameras = printed["cameras"]
    assert [c["id"] for c in cameras] == sorted({c["id"] for c in cameras}, key=[c["id"] for c in cameras].index)
    assert len(cameras) == 2
    cell = next(c for c in cameras if "CELL0001" in c["name"])
    assert cell["url"] == "rtsp://admin:${CAM_PASS}@127.0.0.1:8554/main"
    assert cell["live_url"] == "rtsp://admin:${CAM_PASS}@127.0.0.1:8554/sub"
    assert cell["onvif"]["url"] == network[0].url_with("admin", "${CAM_PASS}")
    # Pasted into a config, it is valid, and the password is substituted (percent-encoded) from the environment.
    document = yaml.safe_dump({"station": {"id": "st-1", "name": "Station"}, **printed})
    config = configmod.parse(document, environ={"CAM_PASS": PASSWORD})
    assert [c.id for c in config.cameras] == [c["id"] for c in cameras]
    parsed = config.camera(cell["id"])
    assert parsed is not None and parsed.onvif is not None and "%40" in parsed.url


def test_discover_without_credentials_lists_devices_and_bad_arguments_are_refused(network) -> None:  # type: ignore[no-untyped-def]
    out = discover()
    assert out.returncode == 0 and "# 3 ONVIF device(s) answered" in out.stdout
    assert "cameras:" not in out.stdout and "give --user and --password-env" in out.stdout
    assert "SimCam 2000" in out.stdout  # from the scopes the camera announces
    refused = discover("--user", "admin")
    assert refused.returncode == 2 and "--password-env" in refused.stderr
    unset = discover("--user", "admin", "--password-env", "NOT_SET_ANYWHERE")
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE is not set" in unset.stderr
    # Unicast to one device's address finds only what answers there (nothing on this port).
    alone = discover("--address", "127.0.0.1", "--port", "9")
    assert alone.returncode == 0 and "# 0 ONVIF device(s) answered" in alone.stdout
