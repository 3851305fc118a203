"""The exporter's side of experiments: crediting clicks to variants, counters, the figures."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from driftrec.experiments import counts_key, parse_experiment
from driftrec.keys import Keys
from driftrec.models.abstats import two_proportions, wilson_interval
from driftrec.oncall.attribution import Click, Credit, attribute
from driftrec.oncall.experiment_counts import ExperimentCounter
from driftrec.oncall.experiment_stats import ExperimentCollector, summarise

KEYS = Keys("t")
TYPES = ["add_to_cart", "purchase", "view"]


def apply(cmds: list[list[Any]], db: dict[str, dict[str, int]]) -> None:
    for op, key, field, by in cmds:
        assert op == "HINCRBY"
        h = db.setdefault(key, {})
        h[field] = h.get(field, 0) + by


def row_of(db: dict[str, dict[str, int]], base: dict[str, str], rid: str) -> dict[str, str]:
    return {**base, **{f: str(v) for f, v in db.get(KEYS.served(rid), {}).items()}}


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


def test_ab_counts_answers_clicked_once_and_every_click() -> None:
    served = {"#strategy": "tf", "#experiment": "e1", "#variant": "treat", "i1": "tf", "i2": "tf"}
    db: dict[str, dict[str, int]] = {}
    counter = ExperimentCounter(KEYS)
    clicks = [Click("r1", "i1", "view"), Click("r1", "i2", "view"), Click("r1", "i2", "purchase")]
    credits = [attribute(c, served) for c in clicks]
    apply(counter.commands(credits, [served] * 3), db)
    # A later batch reads the answer's per-click state back from its record.
    again = attribute(Click("r1", "i1", "view"), served)
    apply(counter.commands([again], [row_of(db, served, "r1")]), db)
    counts = db[counts_key("t", "e1")]
    assert counts == {"clicks|treat|view": 3, "clicked|treat|view": 1, "clicks|treat|purchase": 1,
                      "clicked|treat|purchase": 1}
    # Clicks that are not on an experiment's items, and fallback answers, are not counted.
    fallback = {**served, "#fallback": "1"}
    other = [attribute(Click("r9", "zz", "view"), served), attribute(Click("r8", "i1", "view"), fallback)]
    assert counter.commands(other, [served, fallback]) == []


def test_interleaving_wins_follow_each_answer() -> None:
    teams = orjson.dumps({"a1": "A", "b1": "B", "a2": "A", "b2": "B"}).decode()
    served = {"#strategy": "interleave", "#experiment": "il", "#variant": "interleaved", "#teams": teams,
              "a1": "item_item", "a2": "item_item", "b1": "tf", "b2": "tf"}
    db: dict[str, dict[str, int]] = {}
    counter = ExperimentCounter(KEYS)
    key = counts_key("t", "il")

    def click(item: str, kind: str = "view", rid: str = "r1") -> None:
        credit = attribute(Click(rid, item, kind), served)
        apply(counter.commands([credit], [row_of(db, served, rid)]), db)

    click("a1")
    assert db[key]["wins|A"] == 1
    click("b1")  # one each: a tie
    assert (db[key]["wins|A"], db[key]["ties"]) == (0, 1)
    click("b2")
    assert (db[key]["wins|A"], db[key]["ties"], db[key]["wins|B"]) == (0, 0, 1)
    click("a1", "purchase")  # purchases do not decide the answer
    assert db[key]["wins|B"] == 1 and db[key]["clicks|A|purchase"] == 1
    click("b1", rid="r2")
    assert db[key]["wins|B"] == 2
    assert db[key]["clicked|B|view"] == 2 and db[key]["clicks|B|view"] == 3


def test_summary_matches_the_statistics() -> None:
    exp = parse_experiment({"variants": [{"name": "control", "share": 0.5},
                                         {"name": "treat", "share": 0.5, "strategy": "tf"}]}, "e1")
    counts = {"answers|control": 10_000, "answers|treat": 10_100, "clicked|control|view": 800,
              "clicked|treat|view": 910, "clicks|treat|view": 1_200}
    s = summarise(exp, counts, TYPES, now=0)
    control, treat = s["variants"]
    assert treat["types"]["view"]["clicks"] == 1_200
    w = wilson_interval(910, 10_100)
    assert treat["types"]["view"]["rate"] == {"estimate": round(w.estimate, 6), "low": round(w.low, 6),
                                             "high": round(w.high, 6)}
    (view,) = [c for c in s["comparisons"] if c["type"] == "view"]
    ref = two_proportions(800, 10_000, 910, 10_100)
    assert view["p_value"] == pytest.approx(ref.p_value) and view["diff"]["estimate"] == round(ref.diff.estimate, 6)
    assert view["significant"] and view["diff"]["low"] > 0
    assert not s["srm"]["mismatch"]
    broken = summarise(exp, {**counts, "answers|treat": 11_000}, TYPES, now=0)
    assert broken["srm"]["mismatch"] and not any(c["significant"] for c in broken["comparisons"])
    text = _exposition([s])
    assert 'driftrec_experiment_answers{experiment="e1",variant="treat"} 10100.0' in text
    assert 'driftrec_experiment_p_value{experiment="e1",type="view",variant="treat"}' in text
    assert 'driftrec_experiment_sample_ratio_mismatch{experiment="e1"} 0.0' in text


def test_interleaving_summary() -> None:
    exp = parse_experiment({"method": "interleave", "variants": [{"name": "A"}, {"name": "B"}]}, "il")
    s = summarise(exp, {"wins|A": 40, "wins|B": 70, "ties": 9, "first|A": 500, "first|B": 510,
                        "answers|A": 1010, "answers|B": 1010}, TYPES, now=0)
    il = s["interleaving"]
    assert il["wins"] == {"A": 40, "B": 70} and il["ties"] == 9
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
