"""Unit tests of the built-in shop simulator: schema, determinism, funnel, co-views and drift."""

from __future__ import annotations

import collections
import itertools
from typing import Any

import pytest

from driftrec.errors import DriftrecError
from driftrec.events import validate_event
from driftrec.simulator import ShopSimulator, SimulatorConfigError

DAY = 86400.0
START = 1_700_000_000.0


def _small(**kw: Any) -> ShopSimulator:
    base: dict[str, Any] = dict(n_users=200, n_items=2000, n_categories=10, seed=3)
    base.update(kw)
    return ShopSimulator(**base)


@pytest.fixture(scope="module")
def stream() -> list[dict[str, Any]]:
    return list(_small(seed=11).events(60_000))


def test_events_validate_and_carry_every_field(stream: list[dict[str, Any]]) -> None:
    for ev in stream[:3000]:
        clean = validate_event(ev)
        assert clean.session_id and clean.category and clean.item_id
    assert {ev["type"] for ev in stream} == {"view", "add_to_cart", "purchase"}


def test_event_ids_unique_and_timestamps_non_decreasing(stream: list[dict[str, Any]]) -> None:
    assert len({ev["event_id"] for ev in stream}) == len(stream)
    ts = [ev["timestamp"] for ev in stream]
    assert all(a <= b for a, b in itertools.pairwise(ts))
    assert ts[0] >= START


def test_deterministic_for_a_seed_and_continuing_across_calls() -> None:
    a = list(_small(seed=5).events(3000))
    b = _small(seed=5)
    assert list(b.events(1000)) + list(b.events(2000)) == a
    c = list(_small(seed=6).events(3000))
    assert [e["item_id"] for e in c] != [e["item_id"] for e in a]
    assert not {e["event_id"] for e in a} & {e["event_id"] for e in c}


def test_funnel_is_about_100_10_3(stream: list[dict[str, Any]]) -> None:
    n = collections.Counter(ev["type"] for ev in stream)
    assert n["add_to_cart"] / n["view"] == pytest.approx(0.10, abs=0.015)
    assert n["purchase"] / n["view"] == pytest.approx(0.03, abs=0.008)


def test_funnel_steps_follow_a_view_of_the_same_item_in_the_session(
    stream: list[dict[str, Any]],
) -> None:
    viewed: dict[str, set[str]] = collections.defaultdict(set)
    carted: dict[str, set[str]] = collections.defaultdict(set)
    for ev in stream:
        sid, item = ev["session_id"], ev["item_id"]
        if ev["type"] == "view":
            viewed[sid].add(item)
        elif ev["type"] == "add_to_cart":
            assert item in viewed[sid]
            carted[sid].add(item)
        else:
            assert item in carted[sid]


def test_sessions_are_coherent_so_co_views_carry_signal(stream: list[dict[str, Any]]) -> None:
    views: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for ev in stream:
        if ev["type"] == "view":
            views[ev["session_id"]].append(ev)
    pairs = [(a, b) for v in views.values() for a, b in itertools.pairwise(v)]
    same_cat = sum(a["category"] == b["category"] for a, b in pairs) / len(pairs)
    assert same_cat > 0.8  # a random pair would share a category 1 time in 10
    assert len({ev["user_id"] for v in views.values() for ev in v[:1]}) > 150
    assert all(len({e["user_id"] for e in v}) == 1 for v in views.values())


def test_popularity_is_long_tailed_within_a_category(stream: list[dict[str, Any]]) -> None:
    sim = _small(seed=11)
    cat = sim.categories[0]
    counts = collections.Counter(
        ev["item_id"] for ev in stream if ev["type"] == "view" and ev["category"] == cat
    )
    ranked = sorted((counts[i] for i in sim.items_in_category(cat)), reverse=True)
    head = sum(ranked[: len(ranked) // 10])
    assert head / sum(ranked) > 0.4  # top 10 % of items take a large share
    assert all(sim.item_category(i) == cat for i in counts)


def test_tastes_differ_between_users(stream: list[dict[str, Any]]) -> None:
    sim = _small(seed=11)
    favs = collections.Counter(sim.user_favourite(u, START) for u in sim.user_ids)
    assert set(favs) == set(sim.categories)  # 200 users over 10 categories
    assert max(favs.values()) < 0.25 * sim.n_users
    per_user: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for ev in stream:
        per_user[ev["user_id"]][ev["category"]] += 1
    active = {u: c for u, c in per_user.items() if sum(c.values()) >= 100}
    assert len(active) > 50
    top = collections.Counter(c.most_common(1)[0][0] for c in active.values())
    assert len(top) == len(sim.categories)


def test_global_drift_point_moves_every_users_favourite() -> None:
    drift_at = START + 5 * DAY
    sim = _small(drift_every_s=None, drift_at=drift_at, p_favourite=0.7, p_secondary=0.2)
    evs = list(sim.events(int(10 * DAY * sim.expected_event_rate)))
    assert evs[0]["timestamp"] < drift_at < evs[-1]["timestamp"]
    before = collections.Counter()
    after = collections.Counter()
    for ev in evs:
        old = sim.user_favourite(ev["user_id"], drift_at - 1.0)
        side = before if ev["timestamp"] < drift_at else after
        side["total"] += 1
        side["old"] += ev["category"] == old
        side["new"] += ev["category"] == sim.user_favourite(ev["user_id"], drift_at)
    for u in sim.user_ids:
        assert sim.user_favourite(u, drift_at - 1.0) != sim.user_favourite(u, drift_at)
        assert sim.user_favourite(u, START) == sim.user_favourite(u, drift_at - 1.0)
    # share of events in a category follows the taste: p_favourite (+ exploration and the odd
    # secondary that coincides) for the current favourite, about the exploration share otherwise
    assert before["old"] / before["total"] == pytest.approx(0.72, abs=0.05)
    assert after["new"] / after["total"] == pytest.approx(0.72, abs=0.05)
    assert after["old"] / after["total"] < 0.05
    assert before["new"] / before["total"] < 0.05


def test_partial_global_drift_only_moves_that_share_of_users() -> None:
    sim = _small(n_users=2000, drift_every_s=None, drift_at=START + DAY, drift_fraction=0.3)
    moved = sum(sim.user_favourite(u, START) != sim.user_favourite(u, START + DAY)
                for u in sim.user_ids)
    assert moved / sim.n_users == pytest.approx(0.3, abs=0.04)


def test_gradual_drift_blends_old_and_new_favourite() -> None:
    drift_at, ramp = START + 2 * DAY, 2 * DAY
    sim = _small(drift_every_s=None, drift_at=drift_at, transition_s=ramp)
    taste = sim.user_taste("u7", drift_at + ramp / 2)
    old, new = sim.user_favourite("u7", drift_at - 1), sim.user_favourite("u7", drift_at)
    assert taste[old] == pytest.approx(0.35 + 0.01, abs=0.101)  # + exploration (+ secondary)
    assert taste[new] == pytest.approx(0.35 + 0.01, abs=0.101)
    assert sum(taste.values()) == pytest.approx(1.0)
    assert sim.user_taste("u7", drift_at + ramp)[new] >= 0.7
    evs = list(sim.events(int(6 * DAY * sim.expected_event_rate)))
    share = []
    for lo, hi in [(START, drift_at), (drift_at + 0.4 * ramp, drift_at + 0.6 * ramp),
                   (drift_at + ramp, drift_at + 2 * ramp)]:
        window = [e for e in evs if lo <= e["timestamp"] < hi]
        share.append(sum(e["category"] == sim.user_favourite(e["user_id"], START)
                         for e in window) / len(window))
    assert share[0] > 0.65 and 0.25 < share[1] < 0.5 and share[2] < 0.05


def test_periodic_drift_shifts_each_user_on_their_own_schedule() -> None:
    sim = _small(drift_every_s=DAY)
    evs = list(sim.events(int(6 * DAY * sim.expected_event_rate)))
    favs = {u: {sim.user_favourite(u, START + d * DAY) for d in range(7)} for u in sim.user_ids}
    assert all(len(f) >= 3 for f in favs.values())
    current = sum(e["category"] == sim.user_favourite(e["user_id"], e["timestamp"]) for e in evs)
    stale = sum(e["category"] == sim.user_favourite(e["user_id"], START) for e in evs)
    assert current / len(evs) > 0.65
    assert stale / len(evs) < 0.35  # the first-day favourite is long gone for most events
    first_shift = [min(d for d in range(1, 100) if sim.user_favourite(u, START + d * 3600)
                       != sim.user_favourite(u, START)) for u in sim.user_ids[:50]]
    assert len(set(first_shift)) > 10  # staggered, not one global switch


def test_scripted_user_drift() -> None:
    sim = _small()
    a, b = sim.categories[1], sim.categories[4]
    evs = sim.scripted_user_drift("shopper-1", a, b, n_before=5, n_after=7, start=START,
                                  spacing_s=30.0)
    assert len(evs) == 12
    assert [e["category"] for e in evs] == [a] * 5 + [b] * 7
    assert all(sim.item_category(e["item_id"]) == e["category"] for e in evs)
    assert [e["timestamp"] for e in evs] == [START + 30.0 * k for k in range(12)]
    assert len({e["event_id"] for e in evs}) == 12
    for ev in evs:
        validate_event(ev)
    assert sim.scripted_user_drift("shopper-1", a, b, 5, 7, START, 30.0) == evs
    other = sim.scripted_user_drift("shopper-1", a, b, 5, 7, START + 1.0, 30.0)
    assert not {e["event_id"] for e in other} & {e["event_id"] for e in evs}
    with pytest.raises(SimulatorConfigError):
        sim.scripted_user_drift("shopper-1", "no-such-category", b, 1, 1, START, 1.0)


@pytest.mark.parametrize("bad", [
    dict(n_categories=1), dict(p_favourite=0.9, p_secondary=0.2), dict(p_cart=1.5),
    dict(drift_every_s=0.0), dict(drift_at=START - 1), dict(seed=-1), dict(n_items=5),
])
def test_bad_configuration_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(DriftrecError):
        _small(**bad)


def test_unknown_user_is_rejected() -> None:
    with pytest.raises(SimulatorConfigError):
        _small().user_favourite("u999999", START)


# --- live streams -----------------------------------------------------------------------------
def _distinct_per_window(events: list[dict[str, Any]], window: int) -> list[int]:
    return [len({ev["user_id"] for ev in events[i: i + window]})
            for i in range(0, len(events) - window + 1, window)]


def test_live_stream_interleaves_shoppers_like_a_shop() -> None:
    """The default: any 2,000 consecutive clicks hold >= 1,000 distinct shoppers (issue 21)."""
    sim = ShopSimulator.live(rate=2000.0, n_items=10_000, n_categories=20, seed=5)
    events = list(sim.events(30_000))
    counts = _distinct_per_window(events, 2000)
    assert min(counts) >= 1000, counts
    # The offline stream of a shop that size puts its few long sessions in a window.
    offline = list(ShopSimulator(n_users=50_000, n_items=10_000, n_categories=20, seed=5).events(30_000))
    assert max(_distinct_per_window(offline, 2000)) < min(counts)


@pytest.mark.parametrize("rate", [200.0, 2000.0, 10_000.0])
def test_live_event_time_runs_at_the_wall_clocks_pace(rate: float) -> None:
    sim = ShopSimulator.live(rate=rate, shoppers=2000, n_users=10_000, n_items=2000, seed=1)
    events = list(sim.events(40_000))
    # After the first sessions fill up, event time advances ~1 s per `rate` clicks.
    span = events[-1]["timestamp"] - events[10_000]["timestamp"]
    assert span == pytest.approx(30_000 / rate, rel=0.15)


def test_live_shoppers_sets_the_interleaving() -> None:
    few = list(ShopSimulator.live(rate=1000.0, shoppers=200, n_users=5000, seed=2).events(20_000))
    many = list(ShopSimulator.live(rate=1000.0, shoppers=4000, n_users=5000, seed=2).events(20_000))
    # A window holds the sessions open at its start plus those started during it.
    assert max(_distinct_per_window(few, 2000)) < 600 < 1000 < min(_distinct_per_window(many, 2000))


def test_wall_clock_stamps_each_click_when_taken() -> None:
    import time

    from driftrec.simulator import wall_clock

    sim = ShopSimulator.live(rate=500.0, shoppers=100, n_users=1000, seed=4)
    before = time.time()
    stamped = []
    for ev in wall_clock(sim.events(50)):
        stamped.append(ev["timestamp"])
        time.sleep(0.002)
    after = time.time()
    assert before - 0.001 <= stamped[0] and stamped[-1] <= after + 0.001
    assert all(a < b for a, b in itertools.pairwise(stamped))  # taken one by one, in order
    validate_event({**ev})  # still a valid click


@pytest.mark.parametrize("kw, message", [
    (dict(rate=0.0), "rate"),
    (dict(rate=100.0, shoppers=2000, n_users=1000), "shoppers"),
    (dict(rate=100.0, mean_gap_s=3.0), "sets"),
])
def test_live_rejects_what_it_cannot_honour(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(SimulatorConfigError, match=message):
        ShopSimulator.live(**kw)
