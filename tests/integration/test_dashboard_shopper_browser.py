"""The dashboard's shopper page in headless Chromium on the real stack (issue 27): a shopper's clicks
and recommendations with catalogue titles, and a new click on the page within seconds, no reload."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from driftrec.publisher import publish_events
from driftrec.settings import Settings
from tests.integration.conftest import ARTIFACTS
from tests.integration.debian import debian_tool
from tests.integration.services import free_port, wait_http
from tests.integration.test_catalogue import SHOPPER, A, B, C, X, _clicks, _wait_applied
from tests.integration.test_dashboard_browser import _ARGS, _CHROMIUM

pytestmark = pytest.mark.integration

TITLES = {A: "Trail Runner Alpha", X: "Trail Runner X", B: "Road Shoe Beta", C: "Court Shoe Gamma"}


@pytest.fixture()
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = debian_tool(_CHROMIUM, "chromium", recommends=True)  # Debian's, never a skip
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=_ARGS)
        yield b
        b.close()


def _publish(settings: Settings, events: list[dict[str, Any]]) -> None:
    # Playwright's sync API keeps an event loop on this thread; publish from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(publish_events, settings, events).result()


def test_shopper_page_shows_titled_clicks_and_recommendations_and_updates_live(  # type: ignore[no-untyped-def]
        settings: Settings, spawn, browser) -> None:
    s = settings.model_copy(update={"exporter_port": free_port(), "lag_interval_s": 1.0})
    reader_url = f"http://127.0.0.1:{s.reader_port}"
    base = f"http://127.0.0.1:{s.exporter_port}"
    worker = spawn(["worker"], s)
    reader = spawn(["serve"], s)
    exporter = spawn(["lag", "--serve", "--port", str(s.exporter_port), "--no-attribution", "--no-canary",
                      "--reader-url", reader_url, "--worker-metrics-url", "none"], s)
    wait_http(f"{reader_url}/readyz", 60, reader)
    wait_http(f"{base}/healthz", 30, exporter)

    # The catalogue knows the four items by title (X also by price); then the clicks.
    with httpx.Client(base_url=reader_url, timeout=5) as http:
        for item, title in TITLES.items():
            body: dict[str, Any] = {"title": title, **({"price": 79.5} if item == X else {})}
            assert http.put(f"/v1/items/{item}", json=body).status_code == 202
        clicks = _clicks(12)
        _publish(s, clicks)
        _wait_applied(s, len(clicks), worker)
        deadline = time.monotonic() + 30  # the reader's view follows the worker's change feed
        while not all(http.get(f"/v1/items/{i}").status_code == 200 for i in TITLES):
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.1)

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "400" not in msg.text else None)
    page.goto(f"{base}/dashboard/shopper")

    # A malformed id: a clear message and an empty page, never a crash.
    page.fill("#user", "not a valid id")
    page.click("button[type=submit]")
    page.wait_for_function("document.getElementById('error').dataset.error.includes('user')", timeout=10_000)
    assert page.locator("#clicks tbody tr[data-item]").count() == 0

    # A well-formed id the stack has never seen: the empty state.
    page.fill("#user", "nobody-at-all")
    page.click("button[type=submit]")
    page.wait_for_function("document.getElementById('stale').textContent.startsWith('live')", timeout=10_000)
    assert "no clicks" in page.locator("#clicks tbody").inner_text()
    assert page.locator("#error").inner_text() == ""

    # The shopper: their click on A, by title; recommendations with titles, price and reasons.
    page.fill("#user", SHOPPER)
    page.click("button[type=submit]")
    page.wait_for_selector(f"#clicks tbody tr[data-item='{A}'] .title", timeout=15_000)
    assert page.locator(f"#clicks tbody tr[data-item='{A}'] .title").inner_text() == TITLES[A]
    page.wait_for_selector(f"#recs tbody tr[data-item='{X}'] .title", timeout=15_000)
    rows = page.locator("#recs tbody tr[data-item]")
    recs = {rows.nth(i).get_attribute("data-item"): rows.nth(i) for i in range(rows.count())}
    assert X in recs and B in recs, list(recs)
    assert recs[X].locator(".title").inner_text() == TITLES[X]
    assert "79.50" in recs[X].inner_text()
    reasons = [r.locator("td.reason").inner_text() for r in recs.values()]
    assert any(TITLES[A] in reason for reason in reasons), reasons  # "because you viewed Trail Runner Alpha"
    assert all(r.get_attribute("data-source") for r in recs.values())
    assert f"user={SHOPPER}" in page.url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-shopper.png"), full_page=True)

    # A new click for the shopper appears on the open page within seconds, without a reload.
    page.evaluate("window.__not_reloaded = true")
    published = time.monotonic()
    _publish(s, [{"event_id": "shopper-new-click", "user_id": SHOPPER, "item_id": C, "type": "add_to_cart",
                  "timestamp": time.time(), "category": "shoes"}])
    page.wait_for_function(
        f"document.querySelector('#clicks tbody tr[data-item]')?.dataset.item === '{C}'", timeout=10_000)
    seen_after = time.monotonic() - published
    assert page.locator("#clicks tbody tr[data-item]").first.locator(".title").inner_text() == TITLES[C]
    assert page.evaluate("window.__not_reloaded") is True
    print(f"new click on the page {seen_after:.2f} s after it was published")
    assert seen_after < 5.0, seen_after
    # The recommendations follow too: the newest click now explains them, by its title.
    page.wait_for_function(
        f"[...document.querySelectorAll('#recs td.reason')].some(td => td.textContent.includes('{TITLES[C]}'))",
        timeout=5_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-shopper-new-click.png"), full_page=True)
    assert not errors, errors
