"""The exporter's side of experiments: crediting clicks to variants, counters, the figures."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from driftrec.experiments import clicked_key, counts_key, parse_experiment, preferences_key
from driftrec.keys import Keys
from driftrec.models.abstats import two_proportions, wilson_interval
from driftrec.oncall.attribution import Click, Credit, attribute
from driftrec.oncall.experiment_counts import ExperimentCounter
from driftrec.oncall.experiment_stats import ExperimentCollector, summarise

KEYS = Keys("t")
TYPES = ["add_to_cart", "purchase", "view"]


class Db:
    """The Redis commands the counter sends, on dicts and sets."""

    def __init__(self) -> None:
        self.h: dict[str, dict[str, int]] = {}
        self.sets: dict[str, set[str]] = {}

    async def execute(self, cmds: Any) -> list[Any]:
        out: list[Any] = []
        for op, key, *args in cmds:
            if op == "HINCRBY":
                h = self.h.setdefault(key, {})
                h[args[0]] = h.get(args[0], 0) + args[1]
                out.append(h[args[0]])
            elif op == "HGET":
                v = self.h.get(key, {}).get(args[0])
                out.append(None if v is None else str(v).encode())
            elif op == "SADD":
                self.sets.setdefault(key, set()).add(args[0])
                out.append(1)
            else:
                raise AssertionError(op)
        return out


def count(db: Db, clicks: list[Click], served: dict[str, str]) -> None:
    asyncio.run(ExperimentCounter(KEYS).count([attribute(c, served) for c in clicks], [served] * len(clicks),
                                              db.execute))


def test_attribute_names_experiment_and_variant() -> None:
    served = {"#strategy": "tf", "#experiment": "e1", "#variant": "treat", "i1": "tf"}
    c = attribute(Click("r1", "i1", "view"), served)
    assert (c.experiment, c.variant, c.source) == ("e1", "treat", "tf")
    miss = attribute(Click("r1", "zz", "view"), served)
    assert miss.source is None and miss.reason == "item_not_served" and miss.variant is None
    teams = {"#strategy": "interleave", "#experiment": "il", "#variant": "interleaved",
             "#teams": orjson.dumps({"i1": "a", "i2": "b"}).decode(), "i1": "item_item", "i2": "tf"}
    assert attribute(Click("r2", "i2", "view"), teams).variant == "b"
    assert attribute(Click("r2", "i1", "purchase"), teams).variant == "a"
    plain = attribute(Click("r3", "i1", "view"), {"#strategy": "blend", "i1": "trending"})
    assert plain.experiment is None and plain.variant is None


def test_ab_counts_every_click_and_each_clicking_shopper_once() -> None:
    served = {"#strategy": "tf", "#experiment": "e1", "#variant": "treat", "#user": "u1", "i1": "tf", "i2": "tf"}
    db = Db()
    count(db, [Click("r1", "i1", "view", "u1"), Click("r1", "i2", "view", "u1"),
               Click("r1", "i2", "purchase", "u1")], served)
    count(db, [Click("r1", "i1", "view", "u1")], served)
    assert db.h[counts_key("t", "e1")] == {"clicks|treat|view": 3, "clicks|treat|purchase": 1}
    assert db.sets == {clicked_key("t", "e1", "treat", "view"): {"u1"},
                       clicked_key("t", "e1", "treat", "purchase"): {"u1"}}
    # Clicks not on an experiment's items, and on answers served with the default, are not counted.
    other = Db()
    count(other, [Click("r9", "zz", "view", "u1")], served)
    count(other, [Click("r8", "i1", "view", "u1")], {**served, "#fallback": "1"})
    assert other.h == {} and other.sets == {}


def test_interleaving_preferences_follow_each_shopper() -> None:
    teams = orjson.dumps({"a1": "A", "b1": "B", "a2": "A", "b2": "B"}).decode()
    served = {"#strategy": "interleave", "#experiment": "il", "#variant": "interleaved", "#teams": teams,
              "#user": "u1", "a1": "item_item", "a2": "item_item", "b1": "tf", "b2": "tf"}
    db = Db()
    key = counts_key("t", "il")

    def click(item: str, kind: str = "view", user: str = "u1", batch: int = 1) -> None:
        count(db, [Click(f"r-{user}", item, kind, user)] * batch, {**served, "#user": user})

    click("a1")
    assert db.h[key]["wins|A"] == 1
    click("b1")  # one each: a tie
    assert (db.h[key]["wins|A"], db.h[key]["ties"]) == (0, 1)
    click("b2")
    assert (db.h[key]["wins|A"], db.h[key]["ties"], db.h[key]["wins|B"]) == (0, 0, 1)
    click("a1", "purchase")  # purchases do not decide a preference
    assert db.h[key]["wins|B"] == 1 and db.h[key]["clicks|A|purchase"] == 1
    click("b1", user="u2")
    assert db.h[key]["wins|B"] == 2
    # Three views in one batch on A by u3: one shopper, one win, whatever the batching.
    click("a2", user="u3", batch=3)
    assert db.h[key]["wins|A"] == 1 and db.h[key]["clicks|A|view"] == 4
    assert db.h[preferences_key("t", "il")] == {"u1|A": 1, "u1|B": 2, "u2|B": 1, "u3|A": 3}
    assert db.sets[clicked_key("t", "il", "B", "view")] == {"u1", "u2"}


def test_summary_matches_the_statistics() -> None:
    exp = parse_experiment({"variants": [{"name": "control", "share": 0.5},
                                         {"name": "treat", "share": 0.5, "strategy": "tf"}]}, "e1")
    counts = {"shoppers|control": 10_000, "shoppers|treat": 10_100, "shoppers_clicked|control|view": 800,
              "shoppers_clicked|treat|view": 910, "clicks|treat|view": 1_200, "answers|treat": 40_000}
    s = summarise(exp, counts, TYPES, now=0)
    control, treat = s["variants"]
    assert treat["types"]["view"]["clicks"] == 1_200 and treat["answers"] == 40_000
    w = wilson_interval(910, 10_100)
    assert treat["types"]["view"]["rate"] == {"estimate": round(w.estimate, 6), "low": round(w.low, 6),
                                             "high": round(w.high, 6)}
    (view,) = [c for c in s["comparisons"] if c["type"] == "view"]
    ref = two_proportions(800, 10_000, 910, 10_100)
    assert view["p_value"] == pytest.approx(ref.p_value) and view["diff"]["estimate"] == round(ref.diff.estimate, 6)
    assert view["significant"] and view["diff"]["low"] > 0
    assert not s["srm"]["mismatch"] and s["srm"]["unit"] == "shoppers"
    broken = summarise(exp, {**counts, "shoppers|treat": 11_000}, TYPES, now=0)
    assert broken["srm"]["mismatch"] and not any(c["significant"] for c in broken["comparisons"])
    text = _exposition([s])
    assert 'driftrec_experiment_shoppers{experiment="e1",variant="treat"} 10100.0' in text
    assert 'driftrec_experiment_p_value{experiment="e1",type="view",variant="treat"}' in text
    assert 'driftrec_experiment_sample_ratio_mismatch{experiment="e1"} 0.0' in text


def test_interleaving_summary() -> None:
    exp = parse_experiment({"method": "interleave", "variants": [{"name": "A"}, {"name": "B"}]}, "il")
    s = summarise(exp, {"wins|A": 40, "wins|B": 70, "ties": 9, "first|A": 500, "first|B": 510,
                        "answers|interleaved": 1010}, TYPES, now=0)
    il = s["interleaving"]
    assert il["wins"] == {"A": 40, "B": 70} and il["ties"] == 9 and il["answers"] == 1010
    assert il["p_value"] < 0.01 and il["preferred"] == "B"
    assert not s["srm"]["mismatch"]
    assert 'driftrec_experiment_interleaving_wins{experiment="il",variant="B"} 70.0' in _exposition([s])


def _exposition(summaries: list[dict[str, Any]]) -> str:
    reg = CollectorRegistry()
    reg.register(ExperimentCollector(lambda: summaries))
    return generate_latest(reg).decode()


def test_credit_defaults_keep_old_callers_working() -> None:
    c = Credit(Click("r", "i", "view"), "blend", "tf", None)
    assert c.experiment is None and c.variant is None


def test_a_bad_experiments_file_does_not_stop_the_exporters_cycle(tmp_path: Any) -> None:
    from driftrec.oncall.exporter import Exporter, ExporterConfig
    from driftrec.settings import Settings

    bad = tmp_path / "exp.json"
    bad.write_text('{"experiments": [{"name": "e", "variants": [{"name": "a", "share": 0.9}, {"name": "b", "share": 0.9}]}]}')
    s = Settings(redis_url="redis://127.0.0.1:9/0", kafka_bootstrap_servers="127.0.0.1:9", experiments_file=bad)

    class NoStored:
        async def hgetall(self, key: str) -> dict[bytes, bytes]:
            return {}

    async def go() -> list[dict[str, Any]]:
        exporter = Exporter(s, ExporterConfig(groups=("g",)))
        real = exporter.redis
        exporter.redis = NoStored()  # type: ignore[assignment]
        try:
            await exporter._experiments_once()  # logs, does not raise
            return exporter.experiments
        finally:
            await real.aclose()
            await exporter.http.aclose()

    assert asyncio.run(go()) == []
