"""The monitoring console: HTML, CSS and JavaScript shipped with the package, and how pages are served.

Station networks are closed, so everything the page needs is served from
here; nothing is fetched from a CDN.  Every HTML page goes through
:func:`serve_page`: the language is chosen for the request (the signed-in
user's stored preference, ``Accept-Language``, ``?lang=``; :mod:`web.i18n`)
and the template is filled in before the first byte, so ``lang``/``dir`` and
every string are right from the start.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from nvr.identity.authdb import AuthDatabase
from nvr.identity.roles import Identity
from web import i18n
from web.http import STATION

STATIC_DIR = Path(__file__).resolve().parent / "static"
CATALOGUES = i18n.Catalogues(STATIC_DIR / "i18n")
# The zone human-readable times are shown in (the station's; the central console's pages use UTC).
TIMEZONE = web.AppKey("timezone", str)
# Where users' language preferences are read (set by web.access.setup).
PREFERENCES = web.AppKey("preferences", AuthDatabase)


def add_routes(app: web.Application) -> None:
    if STATION in app:
        app[TIMEZONE] = app[STATION].config.station.timezone
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False, append_version=False)


async def index(request: web.Request) -> web.Response:
    return await serve_page(request, "index.html")


async def language(request: web.Request) -> str:
    """The language this request's pages are in (see :func:`web.i18n.choose`)."""
    who = request.get("user")
    preference = None
    db = request.app.get(PREFERENCES)
    if isinstance(who, Identity) and who.kind == "session" and db is not None:
        preference = await db.call(db.language, who.name)
    return i18n.choose(preference, request.headers.get("Accept-Language"), request.query.get("lang"))


async def serve_page(request: web.Request, name: str) -> web.Response:
    """One of the console's HTML pages, in the request's language and the station's time zone."""
    lang = await language(request)
    body = i18n.render(_template(name), CATALOGUES, lang, request.app.get(TIMEZONE, "UTC"))
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": _CSP, "Content-Language": lang,
        "Vary": "Accept-Language, Cookie",
    })


def _template(name: str) -> str:
    text = _TEMPLATES.get(name)
    if text is None:
        text = _TEMPLATES[name] = (STATIC_DIR / name).read_text(encoding="utf-8")
    return text


_TEMPLATES: dict[str, str] = {}

# Same-origin only: the console must work (and only work) from this daemon.  hls.js runs without its
# worker (fMP4 needs no transmuxing), so no worker-src is needed.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
