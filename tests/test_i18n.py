"""Languages, as a Persian-speaking desk officer and an English-speaking auditor meet them.

The choice (stored preference, else Accept-Language, else ``?lang=``, else
English), pages that are ``<html lang="fa" dir="rtl">`` from the first byte,
one catalogue per language with the same keys and placeholders, and the
preference endpoint (its bad input, its audit entry).  In process: the real
station object and app on loopback.  What the pages look like in Chromium is
tests/test_workbench_browser.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvr.base.config import Config
from nvr.identity.authdb import AuthDatabase
from nvr.identity.roles import Role
from nvr.station import Station
from web import i18n
from web.app import create_app
from web.console import CATALOGUES, STATIC_DIR

PASSWORD = "correct horse battery"
PAGES = ("index.html", "playback.html", "login.html", "fleet.html", "case.html")


# -- the choice, without a server -----------------------------------------------------------


@pytest.mark.parametrize(("preference", "accept", "query", "expected"), [
    (None, None, None, "en"),
    (None, "fa-IR,fa;q=0.9,en;q=0.5", None, "fa"),
    (None, "en-US,en;q=0.9,fa;q=0.8", None, "en"),
    (None, "de-DE, fa;q=0.3", None, "fa"),  # German is not offered: the next one the browser accepts
    (None, "de-DE", "fa", "fa"),  # no supported language in the header: ?lang= decides
    (None, "de-DE", "xx", "en"),  # unknown ?lang=: English
    (None, None, "klingon", "en"),
    (None, "fa;q=0, en", None, "en"),  # q=0 means "not this one"
    ("fa", "en-US", "en", "fa"),  # the user's stored choice wins
    ("zz", "fa", None, "fa"),  # a stored value no longer offered is passed over
    (None, "*;q=0.1, fa;q=0.2", None, "fa"),
    (None, "fa;q=abc, en", None, "en"),  # a malformed weight is skipped, not an error
    (None, "," * 5000 + "fa", None, "en"),  # only the first 1000 characters are read
])
def test_the_language_is_the_users_choice_then_the_browsers_then_the_link(
        preference: str | None, accept: str | None, query: str | None, expected: str) -> None:
    assert i18n.choose(preference, accept, query) == expected


def test_both_catalogues_hold_every_string_the_pages_use_with_the_same_placeholders() -> None:
    strings = CATALOGUES.strings
    assert set(strings["en"]) == set(strings["fa"])
    for key, text in strings["en"].items():
        assert set(re.findall(r"\{(\w+)\}", text)) == set(re.findall(r"\{(\w+)\}", strings["fa"][key])), key
    used: set[str] = set()
    for page in STATIC_DIR.glob("*.html"):
        used |= set(re.findall(r"\{\{t:([a-z0-9_.]+)\}\}", page.read_text()))
    for script in STATIC_DIR.glob("*.js"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_.]+)["']""", script.read_text()))
    missing = sorted(used - set(strings["en"]))
    assert not missing, f"strings used by the pages but missing from the catalogues: {missing}"
    # Persian really is Persian: no English left untranslated in words (codes like HTTP or UTC may stay).
    untranslated = [k for k, v in strings["fa"].items()
                    if re.search(r"[A-Za-z]{4,}", re.sub(r"\{\w+\}|HTTP|UTC|TLS|TURN|English|shift|nvr|HLS", "", v))]
    assert not untranslated, untranslated


def test_a_page_template_has_no_string_outside_the_catalogue() -> None:
    """Every piece of visible English text in the HTML templates is a {{t:key}} placeholder."""
    for name in PAGES:
        text = (STATIC_DIR / name).read_text()
        body = re.sub(r"<script.*?</script>|<style.*?</style>|<!--.*?-->", "", text, flags=re.S)
        body = re.sub(r"\{\{[^}]+\}\}", "", body)
        visible = re.sub(r"<[^>]+>|&[a-z]+;|&#[0-9]+;", " ", body)
        words = re.findall(r"[A-Za-z]{3,}", visible)
        assert not words, f"{name}: text outside the catalogue: {words[:10]}"
        for attribute in re.findall(r'(?:title|aria-label|alt|placeholder)="([^"]*)"', text):
            assert attribute.startswith("{{t:") or not re.search(r"[A-Za-z]{3,}", attribute), (name, attribute)


def test_a_string_missing_from_one_catalogue_is_shown_in_english_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "en.json").write_text('{"a": "Play", "b": "Pause"}')
    (tmp_path / "fa.json").write_text('{"a": "پخش"}', encoding="utf-8")
    catalogues = i18n.Catalogues(tmp_path)
    assert catalogues.strings["fa"] == {"a": "پخش", "b": "Pause"}
    assert "fa catalogue lacks 1 strings (b" in caplog.text
    assert i18n.render("{{t:b}} {{t:a}} {{t:nope}}", catalogues, "fa", "UTC") == "Pause پخش nope"


def test_rendering_escapes_strings_and_cannot_be_broken_out_of() -> None:
    class Hostile(i18n.Catalogues):
        @property
        def strings(self) -> dict[str, dict[str, str]]:  # type: ignore[override]
            evil = {"x.y": '<img src=x onerror=alert(1)>"', "z": "</script><script>alert(2)</script>"}
            return {"en": evil, "fa": evil}

    out = i18n.render('<p title="{{t:x.y}}">{{t:x.y}}</p>{{i18n}}', Hostile(Path(".")), "fa", "Asia/Tehran")
    assert "<img" not in out and "&lt;img" in out and "&quot;" in out
    block = out[out.index('<script type="application/json"'):]
    assert block.count("</script>") == 1  # the catalogue cannot end the data block early
    data = json.loads(block[block.index(">") + 1:block.rindex("</script>")])
    assert data["strings"]["z"] == "</script><script>alert(2)</script>"
    assert (data["lang"], data["dir"], data["timeZone"]) == ("fa", "rtl", "Asia/Tehran")


# -- the station's pages and API ------------------------------------------------------------


@dataclass
class Desk:
    client: TestClient
    token: str
    origin: str

    async def login(self, user: str) -> dict[str, Any]:
        resp = await self.client.post("/api/login", json={"username": user, "password": PASSWORD},
                                      headers={"Origin": self.origin, "Sec-Fetch-Site": "same-origin"})
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    async def put_lang(self, body: Any, **headers: str) -> Any:
        return await self.client.put("/api/me/preferences", data=json.dumps(body), headers={
            "Content-Type": "application/json", "Origin": self.origin, "Sec-Fetch-Site": "same-origin", **headers})


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    from recorder.storage import init_storage

    data = {
        "station": {"id": "st-fa", "name": "Test", "timezone": "Asia/Tehran"},
        "storage": {"path": str(tmp_path / "storage")},
        "auth": {"identity_cache_seconds": 0},
        "cameras": [{"id": "hall", "name": "Hall", "url": "rtsp://127.0.0.1:9/none"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(data))
    config = Config.model_validate(data)
    init_storage(config.storage.path, config.station.id)
    db = AuthDatabase(config.auth_database)
    token = db.create_token("robot", Role.AUDITOR, None, "test")
    db.add_user("sara", Role.AUDITOR, PASSWORD, None)
    db.add_user("john", Role.MONITOR, PASSWORD, None)
    db.close()
    station = Station(config, path)
    await station.start()
    client = TestClient(TestServer(create_app(station), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Desk(client, token, str(client.make_url("")).rstrip("/"))
    finally:
        await client.close()
        await station.stop()


def first_tag(html: str) -> str:
    match = re.search(r"<html[^>]*>", html)
    assert match is not None
    return match.group(0)


async def test_a_persian_browser_gets_right_to_left_persian_pages_from_the_first_byte(desk: Desk) -> None:
    resp = await desk.client.get("/login", headers={"Accept-Language": "fa-IR,fa;q=0.9,en;q=0.5"})
    html = await resp.text()
    assert first_tag(html) == '<html lang="fa" dir="rtl">'
    assert resp.headers["Content-Language"] == "fa"
    assert "ورود" in html and "Sign in" not in html
    assert "Accept-Language" in resp.headers["Vary"]
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    resp = await desk.client.get("/login", headers={"Accept-Language": "en-GB"})
    assert first_tag(await resp.text()) == '<html lang="en" dir="ltr">'


async def test_an_unknown_language_in_the_link_falls_back_to_english(desk: Desk) -> None:
    for query in ("?lang=xx", "?lang=%3Cscript%3E", "?lang=", "?lang=fa-IR" + "a" * 5000):
        resp = await desk.client.get("/login" + query, headers={"Accept-Language": "de"})
        assert resp.status == 200
        html = await resp.text()
        assert first_tag(html) == ('<html lang="fa" dir="rtl">' if query.startswith("?lang=fa") else
                                   '<html lang="en" dir="ltr">'), query
        assert "<script>" not in html
    resp = await desk.client.get("/login?lang=fa", headers={"Accept-Language": "de"})
    assert first_tag(await resp.text()) == '<html lang="fa" dir="rtl">'


async def test_a_user_chooses_persian_and_every_page_follows_whatever_the_browser_says(desk: Desk) -> None:
    me = await desk.login("sara")
    assert me["name"] == "sara"
    resp = await desk.client.get("/api/me", headers={"Accept-Language": "en-US"})
    body = await resp.json()
    assert (body["timezone"], body["lang"], body["preferences"]) == ("Asia/Tehran", "en", {"lang": None})

    resp = await desk.put_lang({"lang": "fa"}, **{"Accept-Language": "en-US"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["lang"] == "fa"
    for page in ("/", "/playback"):
        resp = await desk.client.get(page, headers={"Accept-Language": "en-US"})
        assert resp.status == 200
        assert first_tag(await resp.text()) == '<html lang="fa" dir="rtl">', page
    body = await (await desk.client.get("/api/me", headers={"Accept-Language": "en-US"})).json()
    assert (body["lang"], body["preferences"]["lang"]) == ("fa", "fa")

    # Back to "the browser's": the header decides again.
    resp = await desk.put_lang({"lang": None})
    assert resp.status == 200
    resp = await desk.client.get("/", headers={"Accept-Language": "en-US"})
    assert first_tag(await resp.text()) == '<html lang="en" dir="ltr">'

    entries = await (await desk.client.get("/api/audit", params={"action": "user.preferences"},
                                           headers={"Authorization": f"Bearer {desk.token}"})).json()
    changes = [(e["actor"], e["details"].get("lang"), e["details"].get("previous_lang")) for e in entries["entries"]]
    assert ("sara", "fa", None) in changes and ("sara", None, "fa") in changes


async def test_the_preference_endpoint_refuses_bad_input_and_other_sites(desk: Desk) -> None:
    await desk.login("john")
    for body, code in [({"lang": "xx"}, "invalid_lang"), ({"lang": 7}, "invalid_lang"), ({}, "invalid_lang"),
                       ({"lang": "fa", "theme": "dark"}, "invalid_preferences"), ({"lang": ["fa"]}, "invalid_lang")]:
        resp = await desk.put_lang(body)
        assert resp.status == 400, body
        answer = await resp.json()
        assert answer["error"] == code and answer["message"], body
    resp = await desk.put_lang([1, 2])
    assert resp.status == 400
    resp = await desk.client.put("/api/me/preferences", data='{"lang": "fa"}',
                                 headers={"Content-Type": "application/json", "Origin": "https://evil.example",
                                          "Sec-Fetch-Site": "cross-site"})
    assert resp.status == 403 and (await resp.json())["error"] == "csrf"
    body = await (await desk.client.get("/api/me")).json()
    assert body["preferences"]["lang"] is None  # nothing of the above was stored
    # A token is a machine, not a user: it has no language to store.
    resp = await desk.client.put("/api/me/preferences", json={"lang": "fa"},
                                 headers={"Authorization": f"Bearer {desk.token}"})
    assert resp.status == 409 and (await resp.json())["error"] == "not_a_user"
    resp = await desk.client.get("/api/me", headers={"Authorization": f"Bearer {desk.token}",
                                                     "Accept-Language": "fa"})
    body = await resp.json()
    assert (body["lang"], body["timezone"]) == ("fa", "Asia/Tehran")


async def test_one_users_choice_is_not_anothers(desk: Desk) -> None:
    await desk.login("sara")
    assert (await desk.put_lang({"lang": "fa"})).status == 200
    await desk.login("john")  # the same browser, another user
    resp = await desk.client.get("/", headers={"Accept-Language": "en"})
    assert first_tag(await resp.text()) == '<html lang="en" dir="ltr">'


def test_every_alarm_type_has_a_name_in_both_languages() -> None:
    from nvr.health.alarms import AlarmType

    for lang in ("en", "fa"):
        missing = [t.value for t in AlarmType if f"alarm.{t.value}" not in CATALOGUES.strings[lang]]
        assert not missing, f"{lang}: alarm types the console would show as raw codes: {missing}"
