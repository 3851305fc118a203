"""The publish gate: holdout cut, metrics, scoring through the reader's model, decision rules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from driftrec.models.batch import create_model
from driftrec.models.decay import DecayPolicy
from driftrec.models.offline import ranking_metrics
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.training.clicklog import events_to_log
from driftrec.training.gate import SourceScore, decide, evaluate, make_holdout, ndcg_at_k
from driftrec.training.matrix import build_interactions
from driftrec.training.publish import check_parts, pack_version

S = Settings()
POLICY = DecayPolicy(S.half_life_s)


def ev(n: int, user: str, item: str, t: float) -> dict:
    return {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": "view", "timestamp": t}


def test_ndcg_equals_the_offline_protocols_definition() -> None:
    rng = np.random.default_rng(0)
    n_items, k = 30, 10
    recs = [list(rng.permutation(n_items)[:k]) for _ in range(50)]
    truth = [set(rng.choice(n_items, size=rng.integers(1, 15), replace=False).tolist()) for _ in range(50)]
    hr, ndcg = ndcg_at_k([[f"i{j}" for j in r] for r in recs], [{f"i{j}" for j in t} for t in truth], k)
    rows = [j for t in truth for j in t]
    users = [u for u, t in enumerate(truth) for _ in t]
    truth_m = sp.csr_matrix((np.ones(len(rows)), (users, rows)), shape=(50, n_items))
    ref = ranking_metrics(np.asarray(recs), truth_m, k)
    assert ndcg == pytest.approx(ref["ndcg"], rel=1e-12)
    assert hr == pytest.approx(np.mean([bool(set(r) & t) for r, t in zip(recs, truth, strict=True)]))


def test_holdout_takes_the_newest_events_and_respects_the_live_models_cut() -> None:
    # u1 clicks a..e at t=0..4, u2 clicks a,b at t=5,6 and c at t=9, u3 (new) clicks z at t=8
    events = [ev(n, "u1", x, float(n)) for n, x in enumerate("abcde")]
    events += [ev(5, "u2", "a", 5.0), ev(6, "u2", "b", 6.0), ev(7, "u1", "a", 7.0),
               ev(8, "u3", "z", 8.0), ev(9, "u2", "c", 9.0)]
    log = events_to_log(events, S)
    h = make_holdout(log, POLICY, fraction=0.3, history_len=3)
    assert h.cut == 6.0 and h.events == 3 and len(h.train) == 7
    # u1 re-clicked a seen item only; u3 has no history: only u2 is scored
    assert h.users == ["u2"] and h.truth == [{"c"}] and h.seen == [{"a", "b"}]
    assert [i for i, _ in h.history[0]] == ["b", "a"]  # largest decayed weight first
    capped = make_holdout(log, POLICY, fraction=0.3, history_len=1)
    assert capped.history == [[h.history[0][0]]]
    later = make_holdout(log, POLICY, fraction=0.3, history_len=3, not_before=8.5)
    assert later.cut == 8.5 and later.events == 1 and later.users == ["u2"]
    nothing_new = make_holdout(log, POLICY, fraction=0.3, history_len=3, not_before=9.0)
    assert nothing_new.events == 0 and nothing_new.users == []


def _published(parts: dict[str, bytes]):  # type: ignore[no-untyped-def]
    return check_parts("v", parts, default_reg=S.fold_in_regularization, pool_size=100)


def test_a_trained_model_beats_random_factors_on_the_holdout() -> None:
    sim = ShopSimulator(n_users=150, n_items=300, n_categories=5, seed=2, start_time=1.7e9)
    log = events_to_log(list(itertools.islice(sim.events(12000), 12000)), S)
    h = make_holdout(log, POLICY, fraction=0.15, history_len=S.history_len)
    assert len(h.users) > 40
    data = build_interactions(h.train, POLICY)
    als = create_model("als", factors=16, regularization=1.0, alpha=2.0, iterations=10, num_threads=1)
    als.fit(data.matrix, seed=0)
    good = _published(pack_version(data.item_ids, als.export()))
    arrays = als.export()
    arrays["item_factors"] = np.random.default_rng(0).normal(size=arrays["item_factors"].shape).astype(np.float32)
    bad = _published(pack_version(data.item_ids, arrays))
    g, b = evaluate(good, h, 10), evaluate(bad, h, 10)
    assert set(g) == {"vector"} and g["vector"].users == len(h.users)
    assert g["vector"].ndcg > 2 * b["vector"].ndcg and g["vector"].hr > b["vector"].hr
    # recommending from a catalogue that misses every truth item scores zero
    none = _published(pack_version(["only-item"], {"item_factors": np.ones((1, 2), np.float32),
                                                   "alpha": np.ones(1), "regularization": np.ones(1)}))
    assert evaluate(none, h, 10)["vector"].hr == 0.0


def test_decision_rules() -> None:
    kw = {"metric": "ndcg", "k": 10, "margin": 0.01, "min_users": 20}
    cand = {"vector": SourceScore(0.5, 0.20, 30), "tf": SourceScore(0.4, 0.10, 30)}
    assert decide(cand, None, users=0, **kw).passed
    assert "unreadable" in decide({}, None, users=0, live_note="live unreadable", **kw).reason
    few = decide(cand, {"vector": SourceScore(0.1, 0.01, 5)}, users=5, **kw)
    assert not few.passed and "5 users" in few.reason
    assert decide(cand, {"vector": SourceScore(0.5, 0.205, 30)}, users=30, **kw).passed  # within margin
    worse = decide(cand, {"vector": SourceScore(0.5, 0.19, 30), "tf": SourceScore(0.5, 0.2, 30)}, users=30, **kw)
    assert not worse.passed and "tf ndcg@10 0.1000 vs live 0.2000" in worse.reason
    by_hr = decide(cand, {"vector": SourceScore(0.6, 0.0, 30)}, users=30, **{**kw, "metric": "hr"})
    assert not by_hr.passed
    rec = worse.record()
    assert rec["candidate"]["tf"] == {"hr": 0.4, "ndcg": 0.1, "users": 30} and rec["passed"] is False
