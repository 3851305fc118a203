"""Alert rules and the Grafana dashboard refer only to metrics driftrec really exports.

promtool itself (syntax, and the rule unit tests in deploy/prometheus/alerts_test.yml) runs in
tests/integration/test_alert_rules.py; this structural check needs nothing but the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from driftrec.oncall.lag import GroupInfo, LagSnapshot
from driftrec.oncall.lagmath import PartitionLag
from driftrec.oncall.metrics import ExporterMetrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/driftrec-oncall.json"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
             "summary": ("_sum", "_count", "")}


def _names(registry: CollectorRegistry) -> set[str]:
    return {fam.name + sfx for fam in registry.collect() for sfx in _SUFFIXES.get(fam.type, ("",))}


def _exported() -> set[str]:
    snap = LagSnapshot(0.0, {"g": GroupInfo("g", "Stable", 1)},
                       [PartitionLag("g", "t", 0, 10, 0, 5, 5, 1.0)], {("t", 0): (0, 10)})
    names = _names(ExporterMetrics(lambda: snap).registry)
    from driftrec.online.metrics import ReaderMetrics
    from driftrec.streams import metrics as worker_metrics

    names |= _names(ReaderMetrics().registry)
    # The experiments' series exist once an experiment does: collect them for a made-up one.
    from driftrec.experiments import parse_experiment
    from driftrec.oncall.experiment_stats import ExperimentCollector, summarise

    exp = parse_experiment({"method": "interleave", "variants": [{"name": "a"}, {"name": "b"}]}, "e")
    ab = parse_experiment({"variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]}, "f")
    reg = CollectorRegistry()
    reg.register(ExperimentCollector(lambda: [summarise(exp, {}, ["view"], 0), summarise(ab, {}, ["view"], 0)]))
    names |= _names(reg)
    for obj in vars(worker_metrics).values():
        if isinstance(obj, MetricWrapperBase):
            names |= {obj._name + sfx for sfx in _SUFFIXES[obj._type]}
    return names


def _metric_refs(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:kafka|driftrec)_[a-zA-Z0-9_]+)", expr))


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_the_required_alerts_exist_with_severity_and_runbook() -> None:
    rules = {r["alert"]: r for r in _rules()}
    assert {"DriftrecTimeLagHigh", "DriftrecFreshnessP99High", "DriftrecDeadLetters", "DriftrecWorkerDown",
            "DriftrecConsumerStalled"} <= set(rules)
    assert rules["DriftrecTimeLagHigh"]["for"] == "5m"
    assert re.search(r"\)\s*>\s*1\s*$", rules["DriftrecFreshnessP99High"]["expr"].strip())
    runbook = (ROOT / "docs/runbook.md").read_text()
    anchors = {"#" + re.sub(r"[^a-z0-9]+", "-", h.lower()).strip("-")
               for h in re.findall(r"^#+\s+(.+)$", runbook, flags=re.M)}
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert rule["annotations"]["summary"], name
        link = rule["annotations"]["runbook"]
        assert link.startswith("docs/runbook.md#") and link.split("docs/runbook.md", 1)[1] in anchors, name


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    exported = _exported()
    exprs = [r["expr"] for r in _rules()]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    missing = {m for e in exprs for m in _metric_refs(e)} - exported
    assert not missing, f"not exported by any driftrec process: {sorted(missing)}"
    # ``up{job=...}`` must name a scrape job that exists.
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prom["scrape_configs"]}
    assert {j for e in exprs for j in re.findall(r'\bup\{job="([^"]+)"\}', e)} <= jobs


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dash["panels"]}
    assert {"Lag per partition (messages)", "Time lag per partition", "Throughput (events/s)",
            "Errors", "Reader latency"} <= titles
    assert any(t.startswith("Freshness") for t in titles)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == uid, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
