"""The open redirect after sign-in, as a browser follows it: a crafted ``next`` never leaves the site.

On main, ``/login?next=/%09/evil.example`` passed the page's check; the
browser drops the tab and went to ``//evil.example``.  Real Chromium, the
real daemon, loopback only (``evil.example`` does not resolve here: leaving
the site shows as a URL that is not the daemon's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import StationProcess
from tests.test_live import browser  # noqa: F401 - the Chromium fixture

PASSWORD = "correct horse battery staple"
CRAFTED = [
    "/%09/evil.example", "/%0d%0a/evil.example", "/%0a/evil.example", "/%5Cevil.example", "/%5C/evil.example",
    "%2F%2Fevil.example", "//evil.example", "/%2F%2Fevil.example", "https://evil.example/", "/%09%09/evil.example",
    "%20//evil.example", "javascript:alert(document.domain)",
]


def test_a_crafted_next_never_takes_the_browser_off_the_site(
        daemon_factory: Callable[..., StationProcess], browser: Any) -> None:  # noqa: F811
    daemon = daemon_factory([], auth={"login_max_failures": 100})
    daemon.add_user("duty.officer", "monitor", PASSWORD)
    site = urlsplit(daemon.base_url).netloc
    left: list[str] = []
    for crafted in [*CRAFTED, "/api/me"]:
        page = browser.new_page()  # a page of its own: a failed navigation must not disturb the next one
        page.goto(f"{daemon.base_url}/login?next={crafted}")
        page.fill("#username", "duty.officer")
        page.fill("#password", PASSWORD)
        try:
            with page.expect_navigation(timeout=10_000):
                page.click("#submit")
            page.wait_for_load_state()
        except Exception as exc:  # noqa: BLE001 - e.g. net::ERR_NAME_NOT_RESOLVED: it went to evil.example
            left.append(f"{crafted} -> {str(exc).splitlines()[0]}")
            page.close()
            continue
        where = urlsplit(page.url)
        page.close()
        if where.netloc != site:
            left.append(f"{crafted} -> {where.geturl()}")
        else:
            assert where.path == ("/api/me" if crafted == "/api/me" else "/"), (crafted, where.geturl())
    assert not left, "sign-in redirected off the site:\n" + "\n".join(left)
