"""The reader against a real Redis: its answers equal models.blend.blend on the reference state."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import redis

from driftrec.keys import Keys
from driftrec.models.blend import BlendWeights, Candidates, blend
from driftrec.models.cooccurrence import top_k
from driftrec.models.factors import fold_in
from driftrec.models.online import InMemoryState
from driftrec.settings import Settings
from tests.integration.test_reader_support import (
    publish_model,
    reader,
    reference_state,
    shop_events,
    wait_for,
    write_state,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def rsettings(settings: Settings) -> Settings:
    # Read every neighbour of every recent item, and keep every item in the snapshot, so the
    # reference below needs no mirror of the reader's caps. The recent items keep their decayed
    # weights (no session weighting: tests/unit/test_candidates.py checks that against its own
    # hand-computed cases), so the reference is the plain blend of the stored state.
    return settings.model_copy(update={
        "reader_recent_items": settings.history_len, "reader_neighbours": settings.neighbours_k,
        "reader_snapshot_items": 100_000,
        "reader_recent_position_decay": 0.0, "reader_outside_session_weight": 1.0,
    })


@pytest.fixture()
def state(rsettings: Settings) -> InMemoryState:
    st = reference_state(rsettings, shop_events())
    client = redis.Redis.from_url(rsettings.redis)
    try:
        write_state(client, Keys(rsettings.key_prefix), st)
    finally:
        client.close()
    return st


def expected(st: InMemoryState, s: Settings, user: str, n: int, *, exclude: tuple[str, ...] = (),
             weights: BlendWeights | None = None) -> list[tuple[str, float, str, str]]:
    """What the reader must answer, computed from the in-memory reference."""
    recent = top_k(st.user_weights(user), s.history_len)
    items = set(st.pop)
    neighbours = {r: st.neighbours(r, s.neighbours_k) for r, _ in recent}
    trend_n = n + len(exclude) + s.history_len
    cands = Candidates(
        recent=recent, neighbours=neighbours, norms={i: st.value(st.pop[i]) for i in items},
        trending=st.popular(trend_n),
    )
    seen = set(st.hist.get(user, {}))
    out = blend(cands, n, exclude=seen | set(exclude), weights=weights or BlendWeights(),
                shrinkage=s.similarity_shrinkage)
    return [(x.item, x.score, x.source, x.reason) for x in out]


def got(body: dict[str, Any]) -> list[tuple[str, float, str, str]]:
    return [(x["item_id"], x["score"], x["source"], x["reason"]) for x in body["items"]]


def same(a: list[tuple[str, float, str, str]], b: list[tuple[str, float, str, str]]) -> bool:
    return [x[0] for x in a] == [x[0] for x in b] and [x[2:] for x in a] == [x[2:] for x in b] and all(
        x[1] == pytest.approx(y[1], rel=1e-9) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("redis_py_only", [False, True], ids=["resp-pool", "redis-py"])
async def test_recommendations_equal_blend_on_the_reference_state(rsettings: Settings, state: InMemoryState,
                                                                  redis_py_only: bool) -> None:
    users = sorted(state.hist)[:12]
    async with reader(rsettings, redis_py_only=redis_py_only) as (app, client):
        assert (app.state.store.fast is None) == redis_py_only
        ids = set()
        for user in users:
            r = await client.get(f"/v1/recommendations/{user}", params={"n": 8})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["degraded"] is False and body["model_version"] is None
            assert body["request_id"] not in ids and r.headers["x-request-id"] == body["request_id"]
            ids.add(body["request_id"])
            want = expected(state, rsettings, user, 8)
            assert same(got(body), want), (user, got(body), want)
            assert not set(state.hist[user]) & {x["item_id"] for x in body["items"]}  # seen removed
        user = users[0]
        first = (await client.get(f"/v1/recommendations/{user}", params={"n": 5})).json()["items"]
        excl = ",".join(x["item_id"] for x in first[:2])
        r = await client.get(f"/v1/recommendations/{user}", params={"n": 5, "exclude": excl})
        assert same(got(r.json()), expected(state, rsettings, user, 5, exclude=tuple(excl.split(","))))
        # Per-request weights: trending alone ranks as the trending list minus seen items.
        r = await client.get(f"/v1/recommendations/{user}", params={"n": 5, "strategy": "trending"})
        want = expected(state, rsettings, user, 5, weights=BlendWeights(0, 0, 0, 0, 1))
        assert same(got(r.json()), want) and all(x[3] == "popular now" for x in want)


async def test_reasons_explain_the_source(rsettings: Settings, state: InMemoryState) -> None:
    user = max(state.hist, key=lambda u: len(state.hist[u]))
    async with reader(rsettings) as (_, client):
        body = (await client.get(f"/v1/recommendations/{user}", params={"n": 10})).json()
    reasons = {x["source"]: x["reason"] for x in body["items"]}
    assert reasons.get("item_item", "").startswith("because you viewed ")
    viewed = reasons["item_item"].removeprefix("because you viewed ")
    assert viewed in state.user_items[user]


async def test_shared_rows_are_reused_for_at_most_the_cache_ttl(rsettings: Settings, state: InMemoryState) -> None:
    """Other shoppers' clicks reach a user's item-item answers at most reader_cache_ttl_s late;
    the user's own state is read on every request."""
    s = rsettings.model_copy(update={"reader_cache_ttl_s": 0.5})
    user = max(state.hist, key=lambda u: len(state.hist[u]))
    params = {"n": 5, "strategy": "item_item"}
    client_r = redis.Redis.from_url(s.redis)
    keys = Keys(s.key_prefix)
    async with reader(s) as (app, client):
        rec = app.state.recommender
        now = [1000.0]
        rec.clock = lambda: now[0]
        first = (await client.get(f"/v1/recommendations/{user}", params=params)).json()["items"]
        assert first and rec.nbr_rows.misses > 0 and rec.nbr_rows.hits == 0
        # Another shopper's clicks make "hot-new" the strongest neighbour of every item.
        for item in state.cooc:
            client_r.zadd(keys.item_nbrs(item), {"hot-new": 1e12})
        now[0] += 0.4
        again = (await client.get(f"/v1/recommendations/{user}", params=params)).json()["items"]
        assert again == first and rec.nbr_rows.hits > 0  # rows reused: not yet seen
        now[0] += 0.2  # 0.6 s after the rows were read
        later = (await client.get(f"/v1/recommendations/{user}", params=params)).json()["items"]
        assert later[0]["item_id"] == "hot-new", later
        # The shopper's own click shows at once: a clicked item is seen, so never recommended.
        client_r.hset(keys.user_state(user), "hot-new", client_r.hget(keys.user_state(user), next(iter(state.hist[user]))))
        now[0] += 0.1
        own = (await client.get(f"/v1/recommendations/{user}", params=params)).json()["items"]
        assert "hot-new" not in {x["item_id"] for x in own}
    client_r.close()


async def test_cold_start_and_category_filter(rsettings: Settings, state: InMemoryState) -> None:
    cat = sorted(state.trend)[0]
    async with reader(rsettings) as (_, client):
        # An unknown user with no clicks: trending in the asked category.
        body = (await client.get("/v1/recommendations/newcomer", params={"n": 5, "category": cat})).json()
        assert [x["item_id"] for x in body["items"]] == [i for i, _ in state.trending(cat, 5)]
        assert {x["reason"] for x in body["items"]} == {f"popular in {cat}"}
        # An unknown user with session clicks the caller passes: session-based neighbours.
        clicked = state.history(sorted(state.hist)[0])[-1][0]
        body = (await client.get("/v1/recommendations/anon-1", params={"n": 5, "context": clicked})).json()
        assert body["items"] and clicked not in {x["item_id"] for x in body["items"]}
        assert any(x["reason"] == f"because you viewed {clicked}" for x in body["items"])
        # A known user asking for one category gets only that category, nothing seen.
        user = sorted(state.hist)[1]
        body = (await client.get(f"/v1/recommendations/{user}", params={"n": 10, "category": cat})).json()
        assert body["items"]
        assert all(state.item_cat.get(x["item_id"]) == cat for x in body["items"])
        assert not set(state.hist[user]) & {x["item_id"] for x in body["items"]}


async def test_similar_items_trending_and_history(rsettings: Settings, state: InMemoryState) -> None:
    item = max(state.cooc, key=lambda i: len(state.cooc[i]))
    async with reader(rsettings) as (_, client):
        body = (await client.get(f"/v1/items/{item}/similar", params={"n": 5})).json()
        want = state.similar_items(item, 5, rsettings.similarity_shrinkage)
        assert [x["item_id"] for x in body["items"]] == [i for i, _ in want]
        assert all(x["reason"] == f"often viewed with {item}" for x in body["items"])
        # An unknown item: trending in the category given (it has none of its own).
        cat = sorted(state.trend)[-1]
        body = (await client.get("/v1/items/never-seen/similar", params={"n": 4, "category": cat})).json()
        assert [x["item_id"] for x in body["items"]] == [i for i, _ in state.trending(cat, 4)]

        body = (await client.get("/v1/trending", params={"n": 6})).json()
        assert [x["item_id"] for x in body["items"]] == [i for i, _ in state.popular(6)]
        assert [x["score"] for x in body["items"]] == pytest.approx([v for _, v in state.popular(6)], rel=1e-9)
        body = (await client.get("/v1/trending", params={"n": 3, "category": cat})).json()
        assert [x["item_id"] for x in body["items"]] == [i for i, _ in state.trending(cat, 3)]

        user = sorted(state.hist)[2]
        body = (await client.get(f"/v1/users/{user}/history", params={"n": 5})).json()
        newest = sorted(state.hist[user].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        assert [(x["item_id"], x["timestamp"]) for x in body["items"]] == [(i, t) for i, t in newest]
        assert all(x["category"] == state.item_cat.get(x["item_id"]) for x in body["items"])
        assert {c["category"] for c in body["categories"]} == set(state.user_cats[user])


async def test_published_model_is_served_switched_and_a_corrupt_one_ignored(rsettings: Settings, state: InMemoryState) -> None:
    keys = Keys(rsettings.key_prefix)
    client = redis.Redis.from_url(rsettings.redis)
    items = sorted(state.pop)
    rng = np.random.default_rng(5)
    Y1 = rng.normal(size=(len(items), 8)).astype(np.float32)
    publish_model(client, keys, "v1", items, Y1)
    user = sorted(state.hist)[3]
    try:
        async with reader(rsettings) as (app, http):
            async def version_is(v: str) -> bool:
                r = await http.get(f"/v1/recommendations/{user}", params={"strategy": "user_vector"})
                assert r.status_code == 200
                return bool(r.json()["model_version"] == v)

            await wait_for(lambda: version_is("v1"))
            r = await http.get(f"/v1/recommendations/{user}", params={"n": 6, "strategy": "user_vector"})
            body = r.json()
            # No stored vector and not a training user: folded in from the decayed weights.
            w = state.user_weights(user)
            idx = [items.index(i) for i in w]
            u = fold_in(Y1, Y1.astype(np.float64).T @ Y1.astype(np.float64), idx, list(w.values()),
                        rsettings.fold_in_regularization).astype(np.float32)
            scores = Y1 @ u
            order = [items[j] for j in np.argsort(-scores) if items[j] not in state.hist[user] and scores[j] > 0]
            vec_items = [x["item_id"] for x in body["items"] if x["source"] == "user_vector"]
            assert vec_items and vec_items == order[: len(vec_items)]
            assert {x["reason"] for x in body["items"] if x["source"] == "user_vector"} == {"matches your taste"}

            # A new version goes live without a restart, with no failed request on the way.
            Y2 = rng.normal(size=(len(items), 8)).astype(np.float32)
            publish_model(client, keys, "v2", items, Y2)
            await wait_for(lambda: version_is("v2"))
            # A corrupt version is refused; the live one stays.
            client.set(keys.model_blob("v3", "item_ids"), "\n".join(items))
            client.set(keys.model_blob("v3", "item_factors"), b"\x93NUMPY garbage")
            client.set(keys.model_current, "v3")
            for _ in range(5):
                assert await version_is("v2")
                await asyncio.sleep(0.05)
            await app.state.models.wait()
            assert app.state.models.failures >= 1 and app.state.models.version == "v2"
    finally:
        client.close()
