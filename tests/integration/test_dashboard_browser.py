"""The built-in dashboard in headless Chromium: lag rises while the worker is stopped, falls when it resumes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from driftrec.publisher import publish_events
from driftrec.settings import Settings
from tests.integration.conftest import ARTIFACTS
from tests.integration.debian import debian_tool
from tests.integration.services import free_port, wait_http

pytestmark = pytest.mark.integration

_CHROMIUM = "/usr/bin/chromium"
_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (never a skip)."""
    return debian_tool(_CHROMIUM, "chromium", recommends=True)  # fonts come as recommends


@pytest.fixture()
def browser(chromium: str) -> Iterator:  # type: ignore[type-arg]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=_ARGS)
        yield b
        b.close()


def _events(n: int, tag: str) -> list[dict]:
    now = time.time()
    return [{"event_id": f"{tag}-{i}", "user_id": f"u{i % 31}", "item_id": f"sku-{i % 53}", "type": "view",
             "timestamp": now + i * 1e-3} for i in range(n)]


def _publish(settings: Settings, events: list[dict]) -> None:
    # Playwright's sync API keeps an event loop on this thread; publish from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(publish_events, settings, events).result()


def test_dashboard_shows_lag_rise_and_fall(settings: Settings, spawn, browser) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={"exporter_port": free_port(), "lag_interval_s": 0.5, "canary_interval_s": 1.0})
    base = f"http://127.0.0.1:{s.exporter_port}"
    worker = spawn(["worker"], s)
    exporter = spawn(["lag", "--serve", "--port", str(s.exporter_port), "--no-attribution",
                          "--reader-url", "none"], s)
    wait_http(f"{base}/healthz", 30, exporter)
    _publish(s, _events(200, "warm"))

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    page.goto(f"{base}/dashboard?refresh_ms=500")

    lag = "Number(document.getElementById('total-lag').dataset.value)"
    has_lag = "document.getElementById('total-lag').dataset.value !== ''"
    worker_is = "document.querySelector('[data-component=worker]')?.dataset.status === '{}'"

    # 1. The worker keeps up: lag at (or, with a canary click in flight, next to) zero.
    page.wait_for_function(f"{has_lag} && {lag} <= 1 && {worker_is.format('ok')}", timeout=45_000)
    assert page.locator("[data-component=kafka]").get_attribute("data-status") == "ok"
    assert page.locator("[data-component=redis]").get_attribute("data-status") == "ok"
    assert page.locator("[data-component=reader]").count() == 0  # none deployed, none shown

    # 2. Worker stopped: the broker still answers, so lag keeps being measured and rises.
    worker.stop()
    _publish(s, _events(400, "burst"))
    page.wait_for_function(f"{lag} >= 400 && {worker_is.format('down')}", timeout=30_000)
    page.wait_for_timeout(2500)  # let the time lag and the sparklines grow a little
    peak = int(page.locator("#total-lag").get_attribute("data-value") or 0)
    age = float(page.locator("#max-lag-seconds").get_attribute("data-value") or 0)
    assert peak >= 400 and age >= 2.0, (peak, age)
    rows = page.locator("#partitions tbody tr[data-group]")
    main_rows = [rows.nth(i) for i in range(rows.count())
                 if rows.nth(i).get_attribute("data-topic") == s.clicks_topic]
    assert len(main_rows) == s.topic_partitions
    assert sum(int(r.get_attribute("data-lag") or 0) for r in main_rows) == peak
    # Each sparkline is an SVG polyline with one point per collection.
    points = page.locator("#total-lag-spark polyline").get_attribute("points") or ""
    assert len(points.split()) >= 5
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-lag-rising.png"), full_page=True)

    # 3. Worker resumes: it drains the backlog and the lag falls back to (about) zero.
    spawn(["worker"], s)
    page.wait_for_function(f"{lag} <= 1 && {worker_is.format('ok')}", timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "dashboard-recovered.png"), full_page=True)
    assert page.locator("#stale").inner_text().startswith("live")
    assert not errors, errors
