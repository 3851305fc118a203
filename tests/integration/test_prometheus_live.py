"""The compose Prometheus set-up run for real: Debian's Prometheus scrapes a live worker, reader and
lag exporter with deploy/prometheus's scrape jobs and alert rules, every Grafana panel query is
answered by it, and the dead-letter and worker-down alerts go off when they should.

Grafana itself is not packaged for Debian and there is no Docker engine here, so the provisioned
dashboard is checked by running each of its panel queries against this Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftrec.publisher import Publisher, publish_events
from driftrec.settings import Settings
from tests.integration.conftest import ARTIFACTS
from tests.integration.debian import debian_tool
from tests.integration.services import free_port, wait_http

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "driftrec-oncall.json"
# Panels whose query the traffic of this test feeds (the others may be empty here: click-through
# before any attributed click, the live model before a model is published; the error panels
# answer 0 through `or vector(0)` whatever happens, so they only have to be valid).
MUST_HAVE_DATA = ("Health", "Total lag (messages)", "Lag per partition (messages)", "Time lag per partition",
                  "Throughput (events/s)", "Reader latency", "Worker batches")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait(what: str, check: Callable[[], Any], timeout: float, *procs: Any) -> Any:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        for p in procs:
            assert p.alive(), p.tail()
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


def _config(s: Settings, tmp: Path) -> Path:
    """deploy/prometheus/prometheus.yml with the compose service names pointed at loopback ports."""
    conf = yaml.safe_load((PROM / "prometheus.yml").read_text())
    ports = {"worker": s.worker_metrics_port, "reader": s.reader_port, "exporter": s.exporter_port}
    conf["global"].update(scrape_interval="1s", evaluation_interval="1s")
    conf["rule_files"] = [str(PROM / f) for f in conf["rule_files"]]
    for job in conf["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{ports[t.split(':')[0]]}" for t in static["targets"]]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture()
def prometheus(settings: Settings, tmp_path: Path) -> Iterator[Callable[[Settings], str]]:
    binary = debian_tool("prometheus", "prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(s: Settings) -> str:
        port = free_port()
        log = open(ARTIFACTS / "prometheus-live.log", "wb")
        procs.append(subprocess.Popen(
            [binary, f"--config.file={_config(s, tmp_path)}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/-/ready", 60)
        return base

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield start
    for p in procs:
        p.terminate()
        p.wait(20)


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    body = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _alerts(base: str) -> dict[str, str]:
    return {a["labels"]["alertname"]: a["state"] for a in _get(f"{base}/api/v1/alerts")["data"]["alerts"]}


def _ev(i: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"p{i}-{time.time_ns()}", "user_id": f"u{i % 7}", "item_id": f"sku-{i % 11}",
            "type": "view", "timestamp": time.time(), "category": "shoes", **extra}


def test_prometheus_scrapes_alerts_and_answers_every_panel(settings: Settings, spawn, prometheus) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={"exporter_port": free_port(), "lag_interval_s": 0.5, "canary_interval_s": 0.5})
    worker = spawn(["worker"], s)
    reader = spawn(["serve"], s)
    exporter = spawn(["lag", "--serve", "--port", str(s.exporter_port)], s)
    wait_http(f"http://127.0.0.1:{s.exporter_port}/healthz", 30, exporter)
    wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 30, reader)
    base = prometheus(s)

    # Every scrape job of the compose file finds its target up; every alert rule evaluates cleanly.
    def targets_up() -> dict[str, str] | None:
        t = {x["labels"]["job"]: x["health"] for x in _get(f"{base}/api/v1/targets")["data"]["activeTargets"]}
        return t if len(t) == 3 and set(t.values()) == {"up"} else None
    _wait("all three targets up", targets_up, 60, worker, reader, exporter)

    def rules_ok() -> list[str] | None:
        rules = [r for g in _get(f"{base}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        assert all(r.get("health") != "err" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        return [r["name"] for r in rules] if rules and all(r.get("health") == "ok" for r in rules) else None
    names = _wait("rules evaluated", rules_ok, 30)
    assert {"DriftrecDeadLetters", "DriftrecWorkerDown", "DriftrecTimeLagHigh"} <= set(names)

    # Traffic: clicks through the worker, recommendations from the reader, one poison event.
    publish_events(s, [_ev(i) for i in range(200)])
    for u in range(7):
        urllib.request.urlopen(f"http://127.0.0.1:{s.reader_port}/v1/recommendations/u{u}?n=5", timeout=5).read()

    async def poison() -> None:
        async with Publisher(s) as pub:
            await pub.send_raw(b"{not json", key=b"u-bad")
    asyncio.run(poison())

    try:
        _wait("the dead-letter alert firing", lambda: _alerts(base).get("DriftrecDeadLetters") == "firing", 60,
              worker, exporter)
    except AssertionError as exc:
        seen = {e: _query(base, e) for e in ("driftrec_worker_dead_letters_total",
                                              'kafka_topic_partition_current_offset{topic=~".*\\\\.dlq"}')}
        raise AssertionError(f"{exc}; alerts={_alerts(base)}; series={seen}") from None

    # Every Grafana panel query is valid PromQL here; those this traffic feeds return series.
    dash = json.loads(DASHBOARD.read_text())
    subst = {"$group": s.consumer_group, "$topic": s.clicks_topic}

    def panel_queries() -> list[tuple[str, str]]:
        out = []
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                expr = t["expr"]
                for var, value in subst.items():
                    expr = expr.replace(var, value)
                out.append((panel["title"], expr))
        return out

    def all_fed() -> list[str] | None:
        empty = [f"{title}: {expr}" for title, expr in panel_queries()
                 if not _query(base, expr) and title in MUST_HAVE_DATA]
        return None if empty else ["ok"]
    try:
        _wait("every fed panel to show data", all_fed, 60, worker, reader, exporter)
    except AssertionError:
        empty = [f"{t}: {e}" for t, e in panel_queries() if not _query(base, e) and t in MUST_HAVE_DATA]
        raise AssertionError(f"panels without data: {empty}") from None

    # The worker dies: its scrape fails and the worker-down alert goes pending (it fires after 1 m).
    worker.kill9()
    _wait("worker-down alert pending", lambda: _alerts(base).get("DriftrecWorkerDown") in ("pending", "firing"),
          30, exporter)
