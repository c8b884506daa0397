"""Fuzzing the station's API from its own description, while a real camera records.

The daemon serves ``GET /api/openapi.json`` (generated from the route table);
these tests read it and throw hypothesis-generated input at every operation
it describes: bodies of every JSON route (well-typed, wrongly typed, arbitrary
JSON, raw bytes), query and path parameters of every route, and mutated SDP
offers at WHEP.  Whatever arrives: never a 500, every error a JSON
``{"error", "message"}``, no traceback in the daemon's log, and the camera
keeps recording.
"""

from __future__ import annotations

import asyncio
import json
import string
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import StationProcess, wait_until

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow], database=None)
OK_STATUSES = {200, 201, 202, 204, 302, 400, 401, 403, 404, 405, 409, 413, 415, 429, 503}


class Target:
    """The fuzzed daemon and what the tests need of it (a plain class: hypothesis prints it short)."""

    def __init__(self, daemon: StationProcess, doc: dict[str, Any], offer: str, segments_before: int) -> None:
        self.daemon = daemon
        self.doc = doc
        self.offer = offer
        self.segments_before = segments_before

    def __repr__(self) -> str:
        return f"Target({self.daemon.base_url})"


def recorded_segments(daemon: StationProcess) -> int:
    from recorder.index import SegmentIndex

    index = SegmentIndex(daemon.storage / "index.sqlite3")
    try:
        return len(index.all_segments("hall"))
    finally:
        index.close()


def aiortc_offer() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    from sim.client import SimCamera

    cam = SimCamera("fuzz", width=320, height=240, fps=10, gop=10)
    cam.start()
    workdir = tmp_path_factory.mktemp("fuzz")
    daemon = StationProcess(workdir, [{"id": "hall", "name": "Hall", "url": cam.url},
                              {"id": "cell", "name": "Cell", "zone": "holding_cell", "url": "rtsp://127.0.0.1:9/x"}],
                    storage={"segment_seconds": 2},
                    auth={"login_max_failures": 3, "login_max_failures_per_address": 5},
                    live={"connect_timeout_seconds": 2})
    try:
        daemon.start()
        daemon.wait_state("hall", "online", timeout=30)
        wait_until(lambda: recorded_segments(daemon) >= 1, 20, "the camera records before the fuzzing")
        status, doc = daemon.get("/api/openapi.json")
        assert status == 200, doc
        yield Target(daemon, doc, aiortc_offer(), recorded_segments(daemon))
    finally:
        daemon.stop()
        cam.stop()


def check(status: int, body: Any, what: str) -> None:
    assert status in OK_STATUSES, f"{what}: HTTP {status}: {body!r:.300}"
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(
            body.get("message"), str), f"{what}: {status} without a JSON error: {body!r:.300}"


# -- strategies -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=12,
)
weird_text = st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from([
    "", " ", "\x00", "../../etc/passwd", "%2e%2e%2f", "hall", "cell", "no-such-camera", "hall\x00", "*", "a" * 5000,
    "2026-01-01T00:00:00Z", "2026-13-45T99:99:99Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
    "1970-01-01T00:00:00+25:00", "2026-03-29T01:30:00+01:00", "NaN", "inf", "-1", "1e309", "99999999999999999999",
    "9" * 5000, "\u00b2", "\u0663", "0x10", "+5", " 5",
])
times = st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2030-01-01T00:00:00Z",
                         "1970-01-01T00:00:00Z"]) | weird_text


numbers = st.integers(min_value=-(2**70), max_value=2**70).map(str) | st.sampled_from([
    "0", "1", "1000", "1001", "\u00b2", "\u0663", "\uff11", "9" * 5000, "1e3", "0x10", "-0", "1_000", "１",
])


def query_value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """A query parameter's text: numbers for integers (Unicode digits, 5,000 digits), times for times."""
    if schema.get("type") == "integer":
        return numbers | weird_text
    if schema.get("format") == "date-time":
        return times
    return weird_text


def value_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type (so the input gets past the first checks), sometimes anything."""
    kind = schema.get("type")
    if schema.get("format") == "date-time":
        typed: st.SearchStrategy[Any] = times
    elif kind == "string":
        typed = weird_text
    elif kind == "array":
        typed = st.lists(value_for(schema.get("items", {})), max_size=4)
    elif kind == "integer":
        typed = st.integers(min_value=-(2**40), max_value=2**40)
    else:
        typed = json_values
    return typed | json_values


def bodies(schema: dict[str, Any]) -> st.SearchStrategy[bytes]:
    properties: dict[str, Any] = schema.get("properties", {})
    shaped = st.fixed_dictionaries({}, optional={name: value_for(s) for name, s in properties.items()})
    extra = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
    objects = st.builds(lambda a, b: {**b, **a}, shaped, extra)
    as_json = (objects | json_values).map(lambda v: json.dumps(v, allow_nan=True).encode())
    return as_json | st.binary(max_size=200) | st.sampled_from([b"", b"{", b'{"a":' * 2000, b"\xff\xfe{}"])


def json_operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                ops.append((method.upper(), path, content["application/json"]["schema"]))
    return ops


def parameterised_operations(doc: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    ops = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            if method in ("get", "delete", "options") and op.get("parameters") and not path.endswith("/stream"):
                ops.append((method.upper(), path, op["parameters"]))
    return ops


# -- the fuzzing ------------------------------------------------------------------------------


def test_the_description_covers_the_json_routes(target: Target) -> None:
    described = {(m, p) for m, p, _ in json_operations(target.doc)}
    assert {("POST", "/api/login"), ("POST", "/api/exports"), ("POST", "/api/holds")} <= described


@FUZZ
@given(data=st.data())
def test_fuzzed_bodies_on_every_json_route(target: Target, data: st.DataObject) -> None:
    for method, path, schema in json_operations(target.doc):
        body = data.draw(bodies(schema), label=f"{method} {path}")
        ctype = data.draw(st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]))
        status, answer = target.daemon.request(method, path, body=body, headers={
            "Content-Type": ctype, "Origin": target.daemon.base_url, "Sec-Fetch-Site": "same-origin"})
        check(status, answer, f"{method} {path} {body[:200]!r}")


@FUZZ
@given(data=st.data())
def test_fuzzed_query_and_path_parameters_on_every_route(target: Target, data: st.DataObject) -> None:
    for method, path, parameters in parameterised_operations(target.doc):
        concrete = path
        query = {}
        for parameter in parameters:
            value = data.draw(query_value(parameter.get("schema", {})), label=parameter["name"])
            if parameter["in"] == "path":
                concrete = concrete.replace("{" + parameter["name"] + "}", urllib.parse.quote(value, safe="") or "x")
            elif data.draw(st.booleans()):
                query[parameter["name"]] = value
        url = concrete + ("?" + urllib.parse.urlencode(query) if query else "")
        if len(url) > 8000:
            continue  # over aiohttp's request-line limit: its parser answers 400 in plain text
        status, answer = target.daemon.request(method, url)
        check(status, answer, f"{method} {url[:300]}")


def _mutations(offer: str) -> st.SearchStrategy[str]:
    lines = offer.strip().split("\r\n")
    junk_lines = st.sampled_from([
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "m=video -1 RTP/AVP", "m=audio 9 UDP/TLS/RTP/SAVPF", "a=rtpmap:96 H264/90000",
        "a=rtpmap:96 H264/0", "a=rtpmap:999999999999 H264/90000", "a=fmtp:96 packetization-mode=1;profile-level-id=zz",
        "a=fmtp:96", "a=rtcp-fb:96", "a=setup:bogus", "a=fingerprint:sha-256 00", "a=ice-ufrag:", "a=ice-pwd:",
        "a=mid:", "a=group:BUNDLE 7 8 9", "a=ssrc:abc cname:x", "a=candidate:1 1 udp 1 999.1.1.1 99999 typ host",
        "c=IN IP4 ::::", "b=AS:-5", "t=x y", "o=- x x IN IP4", "a=sendrecv", "a=inactive", "a=extmap:0 x",
    ]) | st.text(string.printable, max_size=80)

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(["drop", "dup", "insert", "edit", "swap"]))
            i = draw(st.integers(0, max(0, len(out) - 1)))
            if op == "drop" and len(out) > 1:
                del out[i]
            elif op == "dup":
                out.insert(i, out[i])
            elif op == "insert":
                out.insert(i, draw(junk_lines))
            elif op == "edit":
                line = out[i]
                cut = draw(st.integers(0, len(line)))
                out[i] = line[:cut] + draw(st.text(string.printable, max_size=20))
            else:
                j = draw(st.integers(0, max(0, len(out) - 1)))
                out[i], out[j] = out[j], out[i]
        separator = draw(st.sampled_from(["\r\n", "\n", "\r"]))
        return separator.join(out) + separator

    return mutate()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow], database=None)
@given(data=st.data())
def test_fuzzed_sdp_offers(target: Target, data: st.DataObject) -> None:
    offer = data.draw(_mutations(target.offer) | st.binary(max_size=300).map(lambda b: "v=0\r\n" + b.decode(
        "latin-1")), label="offer")
    status, answer = target.daemon.request("POST", "/api/cameras/hall/whep", body=offer.encode("utf-8", "replace"),
                                           headers={"Content-Type": "application/sdp"})
    if status == 201:
        sessions = target.daemon.get("/api/live/sessions")[1]["sessions"]
        for session in sessions:
            target.daemon.request("DELETE", f"/api/whep/sessions/{session['id']}")
        return
    check(status, answer, f"offer {offer[:300]!r}")


def test_after_the_fuzzing_the_daemon_is_healthy_and_still_recording(target: Target) -> None:
    daemon = target.daemon
    assert daemon.get("/healthz")[0] == 200
    assert daemon.camera("hall")["state"] == "online"
    wait_until(lambda: recorded_segments(daemon) >= target.segments_before + 2, 15, "recording stopped")
    log = daemon.log()
    assert "Traceback" not in log, log[log.find("Traceback") - 2000:log.find("Traceback") + 3000]
    assert "unhandled error" not in log
