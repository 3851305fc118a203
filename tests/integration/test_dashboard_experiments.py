"""The dashboard's Experiments panel in headless Chromium, on a fixed ``/api/state``: one row per
variant with its shopper rate, the difference from the control, the split check, interleaving."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from driftrec.experiments import parse_experiment
from driftrec.oncall.experiment_stats import summarise
from driftrec.oncall.web import _dashboard_html
from tests.integration.test_dashboard_browser import browser, chromium  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

TYPES = ["add_to_cart", "purchase", "view"]


def _state() -> dict[str, Any]:
    ab = parse_experiment({"variants": [{"name": "control", "share": 0.5}, {"name": "treat", "share": 0.5}]}, "e1")
    il = parse_experiment({"method": "interleave", "variants": [{"name": "A"}, {"name": "B"}]}, "il")
    broken = parse_experiment({"variants": [{"name": "c", "share": 0.5}, {"name": "t", "share": 0.5}]}, "skew")
    return {
        "now": 1e9, "settings": {"consumer_group": "g", "clicks_topic": "t", "dead_letter_topic": "d", "interval_s": 2},
        "snapshot_at": None, "health": {}, "groups": [], "partitions": [],
        "throughput": {k: {"last": None, "series": []} for k in ("produced", "consumed", "dead")},
        "dead_letters_total": None,
        "freshness": {"p50": None, "p99": None, "count": 0, "timeouts": 0, "path": None, "series": []},
        "model_version": None, "last_event_time": None, "applied_events": None, "attribution": [], "unattributed": {},
        "experiments": [
            summarise(ab, {"shoppers|control": 1000, "shoppers|treat": 1010, "shoppers_clicked|control|view": 100,
                           "shoppers_clicked|treat|view": 150, "answers|control": 5000}, TYPES, 0),
            summarise(il, {"wins|A": 10, "wins|B": 30, "first|A": 50, "first|B": 52}, TYPES, 0),
            summarise(broken, {"shoppers|c": 1000, "shoppers|t": 1300}, TYPES, 0),
        ],
    }


@pytest.fixture()
def fake_exporter() -> Iterator[str]:
    html, state = _dashboard_html().encode(), orjson.dumps(_state())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            api = self.path.startswith("/api/state")
            self.send_response(200)
            self.send_header("Content-Type", "application/json" if api else "text/html")
            self.end_headers()
            self.wfile.write(state if api else html)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def test_experiments_panel(fake_exporter: str, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{fake_exporter}/dashboard")
    page.wait_for_selector("#experiments tbody tr[data-variant]")
    rows = {(r.get_attribute("data-experiment"), r.get_attribute("data-variant")): r.inner_text()
            for r in page.query_selector_all("#experiments tbody tr")}
    assert set(rows) == {("e1", "control"), ("e1", "treat"), ("il", "A"), ("il", "B"), ("skew", "c"), ("skew", "t")}
    assert "10.00% [8.29%, 12.02%]" in rows[("e1", "control")] and "ok p=" in rows[("e1", "control")]
    assert "4.85 pp [1.98, 7.73]" in rows[("e1", "treat")] and "*" in rows[("e1", "treat")]
    assert "A 10 vs B 30" in rows[("il", "A")] and "preferred B" in rows[("il", "A")]
    assert "MISMATCH" in rows[("skew", "c")]
    assert errors == []
