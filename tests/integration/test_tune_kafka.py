"""``driftrec tune kafka:<topic>``: the shop's own click log read from Kafka, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from driftrec.publisher import publish_events
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.tune import load_events
from tests.integration.services import ROOT


def _log(n: int) -> list[dict[str, object]]:
    # A past log (fixed start), hours long, so the prequential replay has hours to score.
    sim = ShopSimulator(n_users=60, n_items=120, n_categories=4, seed=3, start_time=1_700_000_000.0)
    return list(sim.events(n))


def test_tune_reads_every_event_of_the_topic_in_time_order(settings: Settings) -> None:
    events = _log(1500)
    report = publish_events(settings, events)
    assert report.sent == len(events)
    name, got = load_events(f"kafka:{settings.clicks_topic}", settings)
    assert name == f"topic {settings.clicks_topic}"
    sent = sorted((str(e["user_id"]), str(e["item_id"]), str(e["type"]), float(e["timestamp"]))  # type: ignore[arg-type]
                  for e in events)
    read = sorted((e.user, e.item, e.type, e.t) for e in got)
    assert len(read) == len(sent)
    assert [(u, i, k) for u, i, k, _ in read] == [(u, i, k) for u, i, k, _ in sent]
    assert all(abs(a[3] - b[3]) < 1e-3 for a, b in zip(read, sent, strict=True))
    assert [e.t for e in got] == sorted(e.t for e in got)
    # --max-events keeps the earliest events, as for a file
    _, first = load_events(f"kafka:{settings.clicks_topic}", settings, max_events=100)
    assert [e.t for e in first] == [e.t for e in got[:100]]


def test_driftrec_tune_on_a_topic_checks_on_the_later_part_and_writes_or_refuses(settings: Settings,
                                                                                 tmp_path: Path) -> None:
    publish_events(settings, _log(1500))
    out, report = tmp_path / "tuned.json", tmp_path / "report.json"
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    got = subprocess.run([sys.executable, "-m", "driftrec.cli", "tune", f"kafka:{settings.clicks_topic}",
                          "--budget", "1m", "--seed", "3", "--no-model", "--max-windows", "0",
                          "--out", str(out), "--report", str(report)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    text = got.stdout + got.stderr
    assert f"topic {settings.clicks_topic}: 1500 events" in text, text
    assert "on the later part" in text and "vsknn" in text, text
    r = json.loads(report.read_text())
    assert r["events"] == 1500 and r["source"] == f"topic {settings.clicks_topic}"
    assert r["scored"]["check"] > 0 and r["scored"]["tuning"] > 0
    if r["recommended"]:
        assert got.returncode == 0, text
        assert r["ci95"]["tuned_vs_defaults"][0] > 1.0
        written = json.loads(out.read_text())
        assert isinstance(written, dict) and written, "a recommendation changes at least one setting"
    else:  # refused: exit 3 and no settings file, with the reason printed
        assert got.returncode == 3, text
        assert "not recommended" in text and not out.exists()


def test_tune_on_a_missing_topic_is_a_clear_error(settings: Settings) -> None:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    got = subprocess.run([sys.executable, "-m", "driftrec.cli", "tune", "kafka:no-such-topic-here", "--budget", "10s"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 1, got.stdout + got.stderr
    assert "no-such-topic-here" in got.stderr and "Traceback" not in got.stderr
