"""The live page in a real browser (Debian's headless Chromium) while a simulated series runs.

The page's figures are read from the rendered DOM and compared with what the service
published on its PUB socket; a series ``meta`` holding markup must show as text and never
run.  The screenshot is saved beside the test's files (and to ``docs/live-view.png`` with
``LIVEDIFF_UPDATE_SCREENSHOT=1``).  Without Chromium the test skips, unless
``LIVEDIFF_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs it) makes that a failure.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path

import pytest

import harness
from browser import Chromium, find_chromium
from livediff.sources.sender import stream_series
from simulators import DiffractionSimulator

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = find_chromium()
REQUIRED = os.environ.get("LIVEDIFF_REQUIRE_BROWSER") == "1"

pytestmark = pytest.mark.skipif(CHROMIUM is None and not REQUIRED,
                                reason="no chromium on this machine (apt-get install chromium; .ci/run does)")

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

#: what the page shows, read in one go (one message's state): counts, the latest row, the series table
READ = """(() => {
  const count = (k) => document.querySelector(`#counts [data-key="${k}"] .value`)?.textContent;
  const latest = (c) => document.querySelector(`#latest [data-column="${c}"] .value`)?.textContent;
  return {state: count("state"), processed: count("processed"), received: count("received"),
          dropped: count("dropped"), lost: count("lost"), bad: count("bad"),
          frame: latest("frame"), n_spots: latest("n_spots"), spots_rows: latest("rows:spots"),
          series: document.getElementById("series").textContent,
          banners: [...document.querySelectorAll("#banners .banner")]
            .map((b) => `${b.dataset.level}: ${b.textContent}`),
          figures: [...document.querySelectorAll(".figure")].map((f) => f.dataset.part),
          drawn: [...document.querySelectorAll(".figure")].filter((f) => f.querySelector(".main-svg")).length,
          scripts: document.scripts.length, pwned: window.__pwned ?? null};
})()"""


@dataclasses.dataclass
class WithMeta:
    """A simulator whose series header carries ``meta`` of our choosing."""

    sim: DiffractionSimulator
    meta: dict

    def __getattr__(self, name):
        return getattr(self.sim, name)

    def series_start(self):
        return dataclasses.replace(self.sim.series_start(), meta=self.meta)


def _int(text: str | None) -> int | None:
    return None if text in (None, "–") else int(text)


@pytest.mark.timeout(180)
async def test_the_page_in_chromium_shows_what_the_service_published(tmp_path):
    if CHROMIUM is None:
        pytest.fail("LIVEDIFF_REQUIRE_BROWSER=1 but no chromium found")
    cfg = harness.config(tmp_path, http={"port": 0, "update_period": 0.25},
                         pipeline={"snapshot_period": 0.5},
                         operators={"summary": {}, "spots": {}, "align": {}, "stats": {}, "azimuthal": {}})
    sim = WithMeta(DiffractionSimulator(shape=(256, 320), n_frames=160, n_spots=25, seed=3, drift=0.3),
                   {"sample": "lysozyme", "note": EVIL})
    async with harness.running(cfg) as (service, collector), Chromium(CHROMIUM) as browser:
        await browser.goto(service.web.server.url)
        await browser.wait_for("!!document.querySelector('#banners .banner.info')")  # waiting for a series
        sending = asyncio.create_task(asyncio.to_thread(stream_series, sim, cfg.source.endpoint, rate=25.0))
        checked = 0
        while checked < 3:  # mid-series: the page agrees with the PUB socket frame by frame
            await asyncio.sleep(0.7)
            seen = await browser.evaluate(READ)
            if seen["state"] != "running" or _int(seen["frame"]) is None:
                continue
            frame = _int(seen["frame"])
            await collector.wait_for(lambda t, m: t == "stats" and m["frame"] == frame)
            stats = collector.of("stats")
            position = next(i for i, m in enumerate(stats) if m["frame"] == frame)
            assert _int(seen["processed"]) == position + 1
            assert _int(seen["n_spots"]) == stats[position]["n_spots"]
            assert _int(seen["spots_rows"]) == stats[position]["n_spots"]
            checked += 1
            if checked == 2:
                await browser.wait_for("!!document.querySelector('[data-part=\"profile:azimuthal\"] .main-svg')")
                await browser.wait_for("!!document.querySelector('[data-part=\"image:stats.mean\"] .main-svg')")
                await browser.screenshot(tmp_path / "live-view-running.png")
        assert await sending == 160
        end = await collector.wait_for(lambda t, m: t == "series" and m["type"] == "end")
        await browser.wait_for("document.querySelector('#counts [data-key=\"state\"] .value')"
                               "?.textContent.startsWith('ended')")
        seen = await browser.evaluate(READ)
        last = collector.of("stats")[-1]
        await browser.screenshot(tmp_path / "live-view-ended.png")
    assert {k: _int(seen[k]) for k in ("processed", "received", "dropped", "lost", "bad")} == \
        {k: end[k] for k in ("processed", "received", "dropped", "lost", "bad")} == \
        {"processed": 160, "received": 160, "dropped": 0, "lost": 0, "bad": 0}
    assert (_int(seen["frame"]), _int(seen["n_spots"])) == (last["frame"], last["n_spots"])
    assert any(b.startswith("ok: series 1 ended (end): 160 of 160") for b in seen["banners"]), seen["banners"]
    # built from the declared outputs: a plot per column, the images of the reductions, the profile
    for part in ("image:frame", "image:stats.mean", "image:stats.sem", "profile:azimuthal", "column:n_spots",
                 "column:hit_rate", "column:sum", "column:latency_s", "column:shift_y", "column:shift_x"):
        assert part in seen["figures"], (part, seen["figures"])
    assert seen["drawn"] == len(seen["figures"])
    # escaping: the markup in meta shows as text and never ran
    assert EVIL in seen["series"] and "lysozyme" in seen["series"]
    assert seen["pwned"] is None and seen["scripts"] == 2
    assert not browser.errors, browser.errors
    if os.environ.get("LIVEDIFF_UPDATE_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "live-view-running.png", REPO / "docs" / "live-view.png")
