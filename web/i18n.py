"""The console's languages: the catalogues, choosing a language for a request, and the page template step.

One catalogue per language (``web/static/i18n/<lang>.json``) holds every
user-visible string of the console, playback, login and fleet pages.  The
pages' HTML names strings as ``{{t:key}}`` and the page's language and
direction as ``{{lang}}`` / ``{{dir}}``; :func:`render` fills them in before
the first byte leaves, so a Persian page is ``<html lang="fa" dir="rtl">``
from the start (nothing is patched after load).  ``{{i18n}}`` becomes a JSON
data block (``<script type="application/json">``, never executed, so the CSP
stays ``script-src 'self'``) from which ``/static/i18n.js`` reads the
language, the direction, the station's time zone and the catalogue.

Which language: the user's stored preference, else the first supported
language of ``Accept-Language`` (by q-value), else ``?lang=``, else English.
An unknown code at any step is passed over, never an error.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

LANGUAGES = ("en", "fa")
DEFAULT = "en"
RIGHT_TO_LEFT = frozenset({"fa"})
_PLACEHOLDER = re.compile(r"\{\{(t:[a-z0-9_.]+|lang|dir|i18n)\}\}")
_MAX_ACCEPT = 1000  # a longer Accept-Language header is read up to here


def supported(code: object) -> str | None:
    """``code`` if it is (or its primary subtag is) a supported language, else None."""
    if not isinstance(code, str):
        return None
    primary = code.strip().lower().split("-", 1)[0].split("_", 1)[0]
    return primary if primary in LANGUAGES else None


def from_accept_language(header: str | None) -> str | None:
    """The supported language the client prefers most (RFC 9110 q-values), or None."""
    best: tuple[float, int, str] | None = None
    for position, item in enumerate((header or "")[:_MAX_ACCEPT].split(",")):
        tag, _, rest = item.strip().partition(";")
        quality = 1.0
        if "=" in rest:
            match = re.fullmatch(r"\s*q\s*=\s*([01](?:\.[0-9]{0,3})?)\s*", rest)
            if match is None:
                continue  # a malformed weight: skip the entry rather than guess
            quality = float(match.group(1))
        code = supported(tag)
        if code is None or quality <= 0:
            continue
        candidate = (-quality, position, code)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best else None


def choose(preference: str | None, accept_language: str | None, query: str | None) -> str:
    """The language a page is served in (see the module docstring for the order)."""
    return supported(preference) or from_accept_language(accept_language) or supported(query) or DEFAULT


def direction(lang: str) -> str:
    return "rtl" if lang in RIGHT_TO_LEFT else "ltr"


class Catalogues:
    """The catalogues of a static directory, read once; a string missing from one is taken from English."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @functools.cached_property
    def strings(self) -> dict[str, dict[str, str]]:
        loaded: dict[str, dict[str, str]] = {}
        for lang in LANGUAGES:
            data = json.loads((self.directory / f"{lang}.json").read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise ValueError(f"{lang}.json must map keys to strings")
            loaded[lang] = data
        for lang, strings in loaded.items():
            missing = sorted(set(loaded[DEFAULT]) - set(strings))
            if missing:
                # A packaging mistake must not stop a page (or recording): English stands in, loudly.
                log.error("the %s catalogue lacks %d strings (%s...); English is shown for them",
                          lang, len(missing), ", ".join(missing[:5]))
                loaded[lang] = {**{k: loaded[DEFAULT][k] for k in missing}, **strings}
        return loaded

    def text(self, lang: str, key: str) -> str:
        """The string for ``key`` (English when the language lacks it, the key itself when no catalogue has it)."""
        return self.strings.get(lang, {}).get(key) or self.strings[DEFAULT].get(key) or key


def render(template: str, catalogues: Catalogues, lang: str, timezone: str) -> str:
    """Fill a page template's placeholders: strings are HTML-escaped, the data block is script-safe JSON."""
    data = json.dumps({"lang": lang, "dir": direction(lang), "timeZone": timezone,
                       "strings": catalogues.strings[lang]},  # same keys in every catalogue: no fallback
                      ensure_ascii=False)
    # Inside <script> only "</" could end the block early; "<" as \u003c is still the same JSON.
    block = '<script type="application/json" id="nvr-i18n">' + data.replace("<", "\\u003c") + "</script>"

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "lang":
            return lang
        if name == "dir":
            return direction(lang)
        if name == "i18n":
            return block
        return html.escape(catalogues.text(lang, name[2:]))

    return _PLACEHOLDER.sub(fill, template)
