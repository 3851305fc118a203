"""The session_knn source: the worker's session index (InMemoryState, the Lua script's reference),
the reader's maths against the V-SKNN baseline (models/sknn.py), forgetting, and the write ops."""

from __future__ import annotations

import random
import struct

import pytest

from driftrec.keys import Keys
from driftrec.live_eval import LiveRecommender
from driftrec.models.blend import BlendWeights, Candidates, blend
from driftrec.models.candidates import (
    session_around,
    session_knn_scores,
    session_neighbours,
    session_query,
    session_span,
)
from driftrec.models.decay import DecayPolicy, EventWeights
from driftrec.models.forget import ForgettingState
from driftrec.models.online import BatchDelta, EventView, InMemoryState
from driftrec.models.sknn import SessionKNNRecommender, vsknn_scores
from driftrec.settings import Settings
from driftrec.streams.chunked import cut_ops, op_cost
from driftrec.streams.redis_state import BatchContext, user_item_ops
from driftrec.streams.session_index import click_log_ops, session_index_ops
from driftrec.userstate import pack_clicks, unpack_clicks

GAP = 1800.0


def ev(user: str, item: str, t: float, offset: int = 0, type: str = "view") -> EventView:
    return EventView(user=user, item=item, type=type, t=t, category=None, offset=offset, partition=0)


def _state(k: int, cls: type[InMemoryState] = InMemoryState) -> InMemoryState:
    return cls(DecayPolicy(30 * 86400.0), EventWeights({"view": 1.0}), window=10, window_s=86400.0,
               history_len=50, neighbours_k=50, trending_k=50, session_index_k=k)


def _session_log(n_users: int, seed: int) -> list[EventView]:
    """Each user one session of distinct items (3-6 clicks, a minute apart), users' sessions
    interleaved in time; items from a small catalogue so that sessions share items."""
    rng = random.Random(seed)
    out = []
    for u in range(n_users):
        start = rng.uniform(0, 50_000)
        items = rng.sample([f"i{j}" for j in range(25)], rng.randint(3, 6))
        out += [(start + 60.0 * p, f"u{u}", item) for p, item in enumerate(items)]
    out.sort()
    return [ev(user, item, t, offset=n) for n, (t, user, item) in enumerate(out)]


def test_the_index_keeps_each_users_latest_click_and_the_k_latest_users() -> None:
    st = _state(2)
    st.process([ev("a", "x", 10, 0), ev("b", "x", 20, 1), ev("a", "x", 30, 2)])
    assert st.sessions["x"] == {"a": 30.0, "b": 20.0}
    st.process([ev("c", "x", 25, 3), ev("b", "x", 5, 4)])  # b's older click leaves 20 (ZADD GT)
    assert st.sessions["x"] == {"a": 30.0, "c": 25.0}  # b (20) cut: the 2 latest stay
    assert st.session_users("x", 5) == [("a", 30.0), ("c", 25.0)]
    assert _state(0).process([ev("a", "x", 1, 0)]) and _state(0).sessions == {}  # 0: no index


def test_the_index_does_not_depend_on_how_the_stream_is_cut_into_batches() -> None:
    events = _session_log(40, seed=3)
    whole, cut = _state(6), _state(6)
    whole.process(events)
    for i in range(0, len(events), 7):
        cut.process(events[i:i + 7])
    assert whole.sessions == cut.sessions
    assert all(len(row) <= 6 for row in whole.sessions.values())


def test_a_forgotten_user_leaves_every_index_row_and_comes_back_with_new_clicks_only() -> None:
    st = _state(100, ForgettingState)
    st.process([ev("a", "x", 10, 0), ev("a", "y", 20, 1), ev("b", "x", 30, 2)])
    st.process([ev("a", "", 40, 3, type="forget_user"), ev("a", "z", 50, 4)])
    assert st.sessions == {"x": {"b": 30.0}, "z": {"a": 50.0}}
    assert unpack_clicks(st.click_logs["a"]) == ((50.0,), "z")  # the clicks after the forget only
    ops = session_index_ops(Keys("t"), _forget_delta(), 100)
    assert [(k, kind) for k, kind, _, _ in ops][:2] == [("t:{i:x}:us", "r"), ("t:{i:y}:us", "r")]


def _forget_delta() -> BatchDelta:
    st = _state(100, ForgettingState)
    st.process([ev("a", "x", 10, 0), ev("a", "y", 20, 1)])
    return st.plan([ev("a", "", 40, 2, type="forget_user"), ev("a", "z", 50, 3)])


def test_the_write_ops_are_zadd_gt_pairs_per_item_and_split_like_z_ops() -> None:
    st = _state(100)
    delta = st.plan([ev("a", "x", 10, 0), ev("b", "x", 20, 1), ev("a", "y", 30, 2)])
    ops = session_index_ops(Keys("t"), delta, 100)
    assert ops == [("t:{i:x}:us", "g", 100, [10.0, "a", 20.0, "b"]), ("t:{i:y}:us", "g", 100, [30.0, "a"])]
    assert session_index_ops(Keys("t"), delta, 0) == []
    # an op over the chunk budget is cut into parts; only the last one cuts the key to its cap
    flat = [x for n in range(400) for x in (float(n), f"u{n}")]
    assert op_cost("g", 100, flat) > 500
    chunks = cut_ops(["k"], [[1, "g", 100, flat]], 500.0)
    parts = [op for _, _, ops_ in chunks for op in ops_]
    assert len(parts) > 1 and [op[2] for op in parts] == [0] * (len(parts) - 1) + [-100]
    assert [x for op in parts for x in op[3]] == flat


def test_a_click_log_is_the_history_oldest_first_times_then_ids() -> None:
    times = {"b": 20.0, "a": 20.0, "é": 5.0, "x/1": 1e9 + 0.125}
    raw = pack_clicks(times)
    assert raw == struct.pack("<I4d", 4, 5.0, 20.0, 20.0, 1e9 + 0.125) + "é\0a\0b\0x/1".encode()
    assert unpack_clicks(raw) == ((5.0, 20.0, 20.0, 1e9 + 0.125), "é\0a\0b\0x/1")  # ties by id
    assert unpack_clicks(raw.decode("utf-8", "surrogateescape")) == unpack_clicks(raw)  # a text reply
    hist = {f"sku-{n}": 1_700_000_000.0 + 37.5 * (n % 7) for n in range(50)}
    got_t, got_i = unpack_clicks(pack_clicks(hist))
    assert dict(zip(got_i.split("\0"), got_t, strict=True)) == hist and list(got_t) == sorted(got_t)
    for bad in (None, b"", b"\x01\x00", raw[:-6] + b"\0\0\0\0\0\0\0"):  # absent, cut short, ids off by some
        assert unpack_clicks(bad) == ((), "")


def test_the_session_span_of_a_click_log_is_session_around() -> None:
    rng = random.Random(4)
    for _ in range(300):
        h = {f"i{j}": float(rng.choice([0, 10, 60, 2000, 3000]) * j + rng.randrange(5)) for j in range(rng.randint(1, 12))}
        times, ids = unpack_clicks(pack_clicks(h))
        items = ids.split("\0")
        t = rng.uniform(-3000, 40_000)
        span = session_span(times, t, GAP)
        want = session_around(list(h.items()), t, GAP)
        assert (set(items[span[0]:span[1] + 1]) if span else set()) == want


def _context(st: InMemoryState, users: set[str]) -> BatchContext:
    """What the worker's load reads of ``users`` from a store holding ``st``."""
    return BatchContext(stored_offsets={}, landmark=st.landmark,
                        histories={u: list(st.hist[u].items()) for u in users if u in st.hist},
                        user_weights={u: list(st.user_items[u].items()) for u in users if u in st.user_items})


@pytest.mark.parametrize("seed", [0, 1])
def test_the_worker_writes_the_click_logs_the_reference_keeps(seed: int) -> None:
    """streams/session_index.py's SET values equal InMemoryState's (what the evaluation reads),
    batch after batch, forgetting included; a replay of a batch plans the same bytes."""
    rng = random.Random(seed)
    st = _state(100, ForgettingState)
    t, offset = 0.0, 0
    for _ in range(30):
        batch = []
        for _ in range(rng.randint(1, 12)):
            t += rng.choice([30.0, 60.0, 600.0, 4000.0])
            user = f"u{rng.randrange(6)}"
            typ = "forget_user" if rng.random() < 0.03 else "view"
            batch.append(ev(user, "" if typ == "forget_user" else f"i{rng.randrange(15)}", t, offset, typ))
            offset += 1
        delta = st.plan(batch)
        ctx = _context(st, {e.user for e in batch})
        after: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
        user_item_ops(Keys("t"), delta, ctx, st.history_len, after)
        ops = click_log_ops(Keys("t"), delta, after)
        again: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
        user_item_ops(Keys("t"), delta, ctx, st.history_len, again)
        assert click_log_ops(Keys("t"), delta, again) == ops  # replay-safe: the same SETs
        assert st.apply(delta)
        assert {key: flat[0] for key, _, _, flat in ops} == {
            f"t:{{u:{u}}}:clk": st.click_logs[u] for u in delta.hist}
        assert all(kind == "t" and cap == 0 for _, kind, cap, _ in ops)
        for user in delta.forgotten - delta.hist.keys():
            assert user not in st.click_logs
        for user, value in st.click_logs.items():
            times, ids = unpack_clicks(value)
            assert dict(zip(ids.split("\0"), times, strict=True)) == st.hist[user]


def test_session_query_is_the_latest_sessions_items_oldest_first() -> None:
    newest_first = [("c", 5000.0), ("b", 4000.0), ("a", 1000.0)]  # a is before a 3000 s gap
    assert session_query(newest_first, k=8, session_gap_s=GAP) == ["b", "c"]
    assert session_query(newest_first, ["n"], k=2, session_gap_s=GAP) == ["c", "n"]
    assert session_query(newest_first, k=1, session_gap_s=GAP) == ["c"]


def test_session_around_is_the_run_of_clicks_holding_the_time() -> None:
    h = [("a", 0.0), ("b", 100.0), ("c", 5000.0), ("d", 5100.0), ("e", 9000.0)]
    assert session_around(h, 100.0, GAP) == {"a", "b"}
    assert session_around(h, 5000.0, GAP) == {"c", "d"}
    assert session_around(h, 5500.0, GAP) == {"c", "d"}  # the click at t left the history: its neighbours'
    assert session_around(h, 20000.0, GAP) == set()
    assert session_around(h, -5000.0, GAP) == set()


def test_session_neighbours_are_the_latest_other_users() -> None:
    rows = {"x": [("me", 90.0), ("a", 50.0), ("b", 40.0)], "y": [("b", 70.0), ("c", 10.0)]}
    assert session_neighbours(rows, "me", 2) == [("b", 70.0), ("a", 50.0)]
    assert session_neighbours(rows, "me", 10) == [("b", 70.0), ("a", 50.0), ("c", 10.0)]


def test_with_the_query_neighbours_are_ranked_by_v_sknn_similarity_from_the_index_rows() -> None:
    # query x then y (y last: weight 2, x 1): c shares y and x (3), b y (2), a x (1); d only z
    rows = {"x": [("a", 90.0), ("c", 20.0)], "y": [("b", 70.0), ("c", 60.0), ("me", 99.0)],
            "z": [("d", 95.0)]}
    assert session_neighbours(rows, "me", 3, ["x", "y"]) == [("c", 60.0), ("b", 70.0), ("a", 90.0)]
    assert session_neighbours(rows, "me", 1, ["x", "y"]) == [("c", 60.0)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_reads_that_reach_every_session_it_scores_as_v_sknn(seed: int) -> None:
    """One session per user, distinct items, no cap reached: the index finds exactly the sessions
    V-SKNN compares, and the source's scores are V-SKNN's (models/sknn.py, all neighbours kept)."""
    events = _session_log(60, seed)
    st = _state(1000)
    ref = SessionKNNRecommender(sequential=True, k=10_000, sample_size=10_000, session_gap_s=GAP, last_n=None)
    checked = 0
    for i in range(0, len(events), 25):
        batch = events[i:i + 25]
        st.process(batch)
        ref.update(batch)
        for user in sorted({e.user for e in batch}):
            newest = sorted(st.hist[user].items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
            query = session_query(newest, k=50, session_gap_s=GAP)
            rows = {item: st.session_users(item, 1000) for item in query}
            nbrs = session_neighbours(rows, user, 1000, query)
            theirs = {v: unpack_clicks(st.click_logs[v]) for v, _ in nbrs}
            got = dict(session_knn_scores(query, nbrs, theirs, gap_s=GAP))
            want = ref.scores(user)
            assert got.keys() == want.keys()
            assert got == pytest.approx(want, rel=1e-12)
            checked += bool(want)
    assert checked > 20


@pytest.mark.parametrize("seed", [0, 1])
def test_from_the_click_logs_it_scores_the_sessions_around_the_shared_clicks(seed: int) -> None:
    """Shoppers with several sessions: the source's scores from the click logs equal V-SKNN over
    the session of each neighbour's stored history around their shared click (what the reader
    computed from whole item HASHes before the click logs)."""
    rng = random.Random(seed)
    log = []
    for u in range(40):
        t = rng.uniform(0, 20_000)
        for _ in range(rng.randint(1, 4)):  # sessions hours apart
            for _ in range(rng.randint(2, 6)):
                log.append((t, f"u{u}", f"i{rng.randrange(30)}"))
                t += 60.0
            t += rng.uniform(2 * GAP, 20 * GAP)
    log.sort()
    st = _state(50)
    st.process([ev(user, item, t, offset=n) for n, (t, user, item) in enumerate(log)])
    scored = 0
    for user in sorted(st.hist):
        newest = sorted(st.hist[user].items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        query = session_query(newest, k=8, session_gap_s=GAP)
        nbrs = session_neighbours({i: st.session_users(i, 20) for i in query}, user, 30, query)
        got = dict(session_knn_scores(query, nbrs, {v: unpack_clicks(st.click_logs[v]) for v, _ in nbrs},
                                      gap_s=GAP))
        sessions = [session_around(list(st.hist[v].items()), t, GAP) for v, t in nbrs]
        want = vsknn_scores(query, [x for x in sessions if x], len(nbrs))
        assert got.keys() == want.keys() and got == pytest.approx(want, rel=1e-12)
        scored += bool(want)
    assert scored > 20


def test_the_live_recommender_serves_the_source_and_its_reason() -> None:
    s = Settings(reader_blend_weights={"session_knn": 1.0, "item_item": 0.0, "user_vector": 0.0, "tf": 0.0,
                                       "similar_users": 0.0, "trending": 0.0}, session_index_k=50)
    live = LiveRecommender(s)
    # v and w clicked a then b; u clicks a now: b comes from their sessions
    live.update([ev("v", "a", 0.0, 0), ev("v", "b", 60.0, 1), ev("w", "a", 100.0, 2), ev("w", "b", 160.0, 3),
                 ev("u", "a", 200.0, 4)])
    assert live.recommend("u", 1, set(), 200.0) == ["b"]
    c = live.read("u", 1, set()).candidates
    assert dict(c.session_knn) == pytest.approx({"a": 2.0, "b": 2.0})
    ranked = blend(Candidates(session_knn=[("b", 1.0)]), 1, weights=BlendWeights(session_knn=1.0, trending=0.0))
    assert ranked[0].source == "session_knn" and ranked[0].reason == "in sessions like yours"
