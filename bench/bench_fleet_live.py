"""A fleet tile's live picture through the central console, with and without the relayed WHEP pre-flight.

One station (a 640x360@15 camera, 2 s GOP) with ``live.ice_servers`` naming Debian's coturn on loopback,
one ``nvr console``, and headless Chromium with its default features on the fleet page.  Each run is a
fresh page (so the player has learnt no ICE servers yet), a click on the camera's live button, and the
time to the tile's first decoded frame; runs alternate between the two modes, so load on the machine
falls on both alike:

- ``preflight``: the console as it is, answering ``OPTIONS`` with the station's ``Link`` headers: one
  pre-flight, one offer, one session at the station.
- ``no_preflight`` (the baseline): the page's ``OPTIONS`` is answered 405 in the browser, as the console
  answered before it relayed the pre-flight; the player learns the servers from the first answer, throws
  that session away and makes a second one.

Reports per mode the median and max of click→first frame, and the offers (POSTs) per tile; and the ratio
of the medians.  Run in the tests' network namespace (``tests/isolated.sh``):

    tests/isolated.sh .venv/bin/python bench/bench_fleet_live.py [--runs 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report  # noqa: E402
from nvr.identity.accounts_cli import create_token  # noqa: E402
from nvr.identity.roles import Role  # noqa: E402
from sim.client import SimCamera  # noqa: E402
from tests.conftest import StationProcess, wait_until  # noqa: E402
from tests.test_central import TURN_SECRET, Console, loopback_coturn  # noqa: E402
from tests.test_live import CHROMIUM_ARGS  # noqa: E402

KEY = "st-a/cam"
BUTTON = '.station-card[data-station-id="st-a"] li[data-camera-id="cam"] .live-button'
# Click the live button and wait in the page for the tile's first decoded frame: milliseconds between.
FIRST_FRAME_JS = """async ([button, key]) => {
  const t0 = performance.now();
  document.querySelector(button).click();
  for (;;) {
    const player = window.nvrFleet.players[key];
    if (player && await player.framesDecoded() > 0) return performance.now() - t0;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}"""
# A console without the pre-flight: OPTIONS to the relay answered 405, as the aiohttp router did.
NO_PREFLIGHT_JS = """(() => {
  const fetch0 = window.fetch;
  window.fetch = (url, init) => (init && init.method === "OPTIONS")
    ? Promise.resolve(new Response(null, { status: 405 })) : fetch0(url, init);
})();"""


def one_tile(browser: Any, console: Console, preflight: bool) -> tuple[float, int]:
    """A fresh fleet page, one tile opened: (ms from click to first frame, offers the tile made)."""
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    try:
        if not preflight:
            context.add_init_script(NO_PREFLIGHT_JS)
        page = context.new_page()
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/whep") else None)
        login = page.request.post(console.base_url + "/api/login", headers={"Content-Type": "application/json"},
                                  data=json.dumps({"username": "alice", "password": "correct horse battery"}))
        assert login.status == 200, login.text()
        page.goto(console.base_url + "/")
        page.wait_for_selector(BUTTON, timeout=15000)
        elapsed = float(page.evaluate(FIRST_FRAME_JS, [BUTTON, KEY]))
        page.wait_for_timeout(1000)  # a second offer follows the first answer at once
        return elapsed, len(posts)
    finally:
        context.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=8, help="tiles opened per mode")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-fleet-live-") as tmp:
        root = Path(tmp)
        cam = SimCamera("fleet-live", width=640, height=360, fps=15, gop=30)
        cam.start()
        with loopback_coturn(root) as turn:
            (root / "station").mkdir()
            station = StationProcess(root / "station", [{"id": "cam", "name": "Cam", "url": cam.url}],
                                     env={"TURN_SECRET": TURN_SECRET}, log={"level": "info"},
                                     station={"id": "st-a", "name": "Station A"},
                                     live={"ice_servers": [{"urls": [turn], "auth_secret": "${TURN_SECRET}"}]})
            console = Console(root / "console", [{"id": "st-a", "url": station.base_url, "token": "${TOKEN}"}],
                              {"TOKEN": create_token(station.auth_db, "central", Role.CENTRAL)})
            try:
                station.start()
                station.wait_state("cam", "online", timeout=30)
                console.add_user("alice", "monitor", "correct horse battery")
                console.start()
                wait_until(lambda: console.fleet()["st-a"]["reachable"], 20, "console never reached the station")
                samples: dict[str, list[float]] = {"preflight": [], "no_preflight": []}
                offers: dict[str, list[int]] = {"preflight": [], "no_preflight": []}
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                    one_tile(browser, console, True)  # warm-up: Chromium's first peer loads its WebRTC stack
                    for _ in range(args.runs):
                        for mode in ("preflight", "no_preflight"):
                            elapsed, posts = one_tile(browser, console, mode == "preflight")
                            samples[mode].append(elapsed)
                            offers[mode].append(posts)
                            time.sleep(0.5)
                    browser.close()
            finally:
                console.stop()
                station.stop()
                cam.stop()
    medians = {mode: statistics.median(values) for mode, values in samples.items()}
    report("fleet_tile_first_frame", runs=args.runs, camera="640x360@15 gop 2 s", client="chromium (default)",
           station_ice_servers="coturn on loopback (use-auth-secret)",
           **{f"{mode}_ms": {"median": round(medians[mode], 1), "max": round(max(samples[mode]), 1)}
              for mode in samples},
           **{f"{mode}_offers_per_tile": sorted(set(offers[mode])) for mode in offers},
           ratio_preflight_to_baseline=round(medians["preflight"] / medians["no_preflight"], 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
