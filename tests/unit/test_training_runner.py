"""driftrec train without services: parameters, schedule, and an offline run from a data file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from driftrec.errors import InvalidRequestError, ModelError
from driftrec.models.batch import MODELS, load_path
from driftrec.settings import Settings
from driftrec.training.runner import DEFAULT_PARAMS, TrainConfig, parse_params, train_once
from driftrec.training.schedule import parse_interval, run_every

S = Settings()


def test_parse_params_reads_json_values_and_rejects_bad_keys() -> None:
    got = parse_params(["als.factors=64", "tf.hidden=[32, 16]", "als.weighting=none", "ease.lam=2.5"])
    assert got == {"als": {"factors": 64, "weighting": "none"}, "tf": {"hidden": [32, 16]}, "ease": {"lam": 2.5}}
    for bad in ("factors=64", "als.factors", "nope.factors=1"):
        with pytest.raises(ModelError):
            parse_params([bad])


def test_default_params_build_every_model() -> None:
    from driftrec.models.batch import create_model

    assert set(DEFAULT_PARAMS) == set(MODELS)
    for name, params in DEFAULT_PARAMS.items():
        create_model(name, **params)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600),
                                           ("1d", 86400), ("1h30m", 5400), ("0.5s", 0.5)])
def test_parse_interval(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "0", "-5", "1h 30m", "m1"])
def test_parse_interval_rejects(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_interval(text)


def test_run_every_survives_failing_runs_and_stops_on_request() -> None:
    calls: list[float] = []
    stop = threading.Event()

    def job() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise ModelError("empty log")
        if len(calls) == 2:
            raise RuntimeError("bug")
        if len(calls) == 4:
            stop.set()

    runs = run_every(0.05, job, stop)
    assert runs == 4 and len(calls) == 4
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(g >= 0.045 for g in gaps), gaps
    assert run_every(10.0, lambda: None, threading.Event(), max_runs=1) == 1


def _csv(path: Path, rows: int) -> Path:
    lines = ["user,item,type,timestamp"]
    for n in range(rows):
        kind = ("view", "view", "add_to_cart", "purchase")[n % 4]
        lines.append(f"u{n % 23},i{(n * 7) % 41 + (n % 23) % 3 * 41},{kind},{1_700_000_000 + 60 * n}")
    lines.append("bad user,i1,view,1700000000")  # dropped by the loader, counted by the trainer
    path.write_text("\n".join(lines) + "\n")
    return path


def test_offline_run_from_a_file_prints_sizes_and_times_and_saves(tmp_path: Path) -> None:
    out: list[str] = []
    config = TrainConfig(models=("als", "pop", "itemknn"), params={"als": {"factors": 4, "iterations": 3}},
                         from_file=_csv(tmp_path / "clicks.csv", 600), out_dir=tmp_path / "models", seed=1)
    report = train_once(S, config, echo=out.append)
    text = "\n".join(out)
    assert report.version is None and report.gate is None  # from a file: published only if asked
    assert report.log.accepted == 600 and report.shape[0] == 23
    assert report.log.messages == 601 and dict(report.log.bad) == {"loader:bad_id": 1}
    assert "600 events -> 23 users x" in text
    for name in ("als", "pop", "itemknn"):
        assert f"{name}: trained in" in text and report.fit_seconds[name] >= 0
        assert load_path(tmp_path / "models" / f"{name}.npz").n_items == report.shape[1]
    index = json.loads((tmp_path / "models" / "index.json").read_text())
    assert len(index["item_ids"]) == report.shape[1] and len(index["user_ids"]) == 23


def test_bad_requests_fail_before_reading_anything(tmp_path: Path) -> None:
    missing = tmp_path / "never-read.csv"
    with pytest.raises(ModelError, match="unknown model"):
        train_once(S, TrainConfig(models=("als", "bpr"), from_file=missing), echo=lambda _: None)
    with pytest.raises(ModelError, match="bad parameters"):
        train_once(S, TrainConfig(models=("als",), params={"als": {"layers": 3}}, from_file=missing),
                   echo=lambda _: None)
    with pytest.raises(ModelError, match="needs the als model"):
        train_once(S, TrainConfig(models=("tf",), publish=True, from_file=missing), echo=lambda _: None)


def test_a_file_without_valid_events_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("user,item,type,timestamp\n")
    with pytest.raises(ModelError, match="no accepted events"):
        train_once(S, TrainConfig(models=("als",), from_file=path, publish=True), echo=lambda _: None)
