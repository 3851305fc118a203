"""driftrec tune: budget parsing, the bootstrap interval, the settings file it writes and reads back, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from driftrec.models.prequential import PrequentialResult, event_views
from driftrec.settings import Settings
from driftrec.tune import (
    TuneOptions,
    TuneResult,
    _defaults,
    parse_budget,
    ratio_interval,
    settings_file_content,
    tune,
)


def test_parse_budget() -> None:
    assert parse_budget("10m") == 600.0
    assert parse_budget("90s") == 90.0
    assert parse_budget("1h") == 3600.0
    assert parse_budget("45") == 45.0


def test_ratio_interval_resamples_hours_paired() -> None:
    times = np.repeat(np.arange(10) * 3600.0, 4)  # ten hours, four scored events each
    a = np.ones(40, dtype=np.int64)  # a hits every event
    b = np.where(np.arange(40) % 2 == 0, 1, 0).astype(np.int64)  # b hits half of them, in every hour
    res = PrequentialResult(methods=["a", "b"], k=10, index=np.arange(40), times=times, ranks={"a": a, "b": b})
    assert ratio_interval(res, "a", "b") == [2.0, 2.0]  # the same ratio in every hour: no spread
    assert ratio_interval(res, "a", "missing") is None


def test_settings_file_holds_only_what_changed_and_settings_read_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    base = Settings()
    default = _defaults(base)
    tuned = {**default, "half_life_s": 86400.0, "reader_recent_position_decay": 2.0, "w.trending": 0.0}
    result = TuneResult(defaults=default, tuned=tuned, check={}, intervals={}, recommended=True, reason="")
    content = settings_file_content(result, base)
    assert content["half_life_s"] == 86400.0 and content["reader_recent_position_decay"] == 2.0
    assert content["reader_blend_weights"]["trending"] == 0.0
    assert "cooc_window" not in content
    f = tmp_path / "tuned.json"
    f.write_text(json.dumps(content))
    monkeypatch.setenv("DRIFTREC_SETTINGS_FILE", str(f))
    monkeypatch.setenv("DRIFTREC_COOC_WINDOW", "7")  # the environment stands above the file
    s = Settings()
    assert (s.half_life_s, s.reader_recent_position_decay, s.cooc_window) == (86400.0, 2.0, 7)
    assert s.reader_blend_weights["trending"] == 0.0
    f.write_text('{"no_such_setting": 1}')
    with pytest.raises(ValueError, match="no_such_setting"):
        Settings()
    monkeypatch.setenv("DRIFTREC_SETTINGS_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError):
        Settings()


def _clicks(n: int) -> list:
    from driftrec.simulator import ShopSimulator

    sim = ShopSimulator(n_users=60, n_items=120, n_categories=4, seed=3, start_time=1_700_000_000.0)
    return event_views(sim.events(n))


def test_tiny_tune_is_deterministic_and_checks_on_the_later_part() -> None:
    events = _clicks(1500)
    opts = TuneOptions(budget_s=60.0, seed=1, max_windows=None, read_samples=2, model=False, progress=False)
    one = tune(events, Settings(), opts, log=lambda _: None)
    two = tune(events, Settings(), opts, log=lambda _: None)
    assert one.tuned == two.tuned and one.check == two.check
    assert {"defaults", "tuned", "raw_cooccurrence", "vsknn"} <= set(one.check)
    assert one.scored["check"] > 0 and one.scored["tuning"] > 0
    assert "tuned_vs_defaults" in one.intervals or one.tuned == one.defaults
    # recommended only with the interval above 1
    if one.recommended:
        assert one.intervals["tuned_vs_defaults"][0] > 1.0


def test_cli_writes_the_settings_file_only_when_recommended(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from driftrec.cli import app

    log = tmp_path / "clicks.csv"
    rows = ["user,item,type,timestamp"] + [f"{e.user},{e.item},view,{e.t:.3f}" for e in _clicks(1200)]
    log.write_text("\n".join(rows) + "\n")
    out = tmp_path / "tuned.json"
    got = CliRunner().invoke(app, ["tune", str(log), "--budget", "1m", "--seed", "3", "--no-model",
                                   "--max-windows", "0", "--out", str(out), "--report", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert "on the later part" in got.output and "vsknn" in got.output
    if report["recommended"]:
        assert got.exit_code == 0 and json.loads(out.read_text()) is not None
    else:  # refused: exit 3, no file
        assert got.exit_code == 3 and not out.exists()
