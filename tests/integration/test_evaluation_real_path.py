"""The prequential numbers are the same in-process and through Kafka → worker → Redis → reader."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import redis

from driftrec.keys import Keys
from driftrec.live_eval import LiveModel, LiveRecommender, publish_parts
from driftrec.models.baselines import Interactions
from driftrec.models.batch.als import ALSModel
from driftrec.models.decay import EventWeights
from driftrec.models.prequential import event_views, run_prequential, scored_mask
from driftrec.publisher import Publisher
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from tests.integration.services import wait_http

pytestmark = pytest.mark.integration

VERSION = "eval-real-path"


def _slice() -> list[dict]:
    sim = ShopSimulator(n_users=25, n_items=80, n_categories=4, seed=11, drift_every_s=None)
    return [{**e, "event_id": f"rp-{i}"} for i, e in enumerate(sim.events(260))]


def _reader_ranks(settings: Settings, user: str, exclude: set[str], target: str) -> int:
    q = {"n": "10"}
    if exclude:
        q["exclude"] = ",".join(sorted(exclude))
    url = f"http://127.0.0.1:{settings.reader_port}/v1/recommendations/{user}?{urllib.parse.urlencode(q)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["degraded"] is False and body["model_version"] == VERSION, body
    items = [it["item_id"] for it in body["items"]]
    return items.index(target) + 1 if target in items else 0


def _model_version(settings: Settings) -> str | None:
    url = f"http://127.0.0.1:{settings.reader_port}/v1/recommendations/nobody"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["model_version"]


#: The default blend, and the session_knn source alone (its index writes, the reader's third round
#: trip and the raw replies' bytes items must give the in-process ranks too).
SESSION_ONLY = {"session_knn": 1.0, "item_item": 0.0, "user_vector": 0.0, "tf": 0.0, "similar_users": 0.0,
                "trending": 0.0}


@pytest.mark.parametrize("weights", [{}, SESSION_ONLY], ids=["defaults", "session_knn"])
def test_real_path_gives_the_in_process_numbers(settings: Settings, spawn, rds, weights) -> None:  # type: ignore[no-untyped-def]
    # Bounds the slice never reaches (so how Kafka cuts batches cannot matter), one partition
    # (stream order), a snapshot of norms and trending that refreshes fast, and no reuse of
    # shared rows across requests (each request must see the state after the last event; the
    # bounded staleness of the row cache is tested in test_reader_api.py).
    s = settings.model_copy(update={
        "topic_partitions": 1, "clicks_topic": settings.clicks_topic + "1", "history_len": 1000,
        "neighbours_k": 1000, "trending_k": 1000, "reader_snapshot_interval_s": 0.02,
        "reader_cache_ttl_s": 0.0, "reader_blend_weights": weights,
    })
    from driftrec.kafka_admin import ensure_topics

    ensure_topics(s.bootstrap, {s.clicks_topic: 1})
    raw = _slice()
    events = event_views(raw)
    start = len(events) // 2
    mask = scored_mask(events, start)
    assert mask.sum() >= 40

    # A model trained on the warm-up, published before the stream starts.
    warm = Interactions(EventWeights(s.event_weights))
    warm.add(events[:start])
    als = ALSModel(factors=8, regularization=0.1, iterations=5, num_threads=1).fit(warm.matrix(), seed=0)
    users = [u for u, _ in sorted(warm.users.items(), key=lambda kv: kv[1])]
    parts = publish_parts(warm.item_names, als.item_factors, alpha=1.0, regularization=0.1,
                          user_ids=users, user_factors=als.user_factors)
    keys = Keys(s.key_prefix)
    raw_client = redis.Redis.from_url(s.redis)
    for part, blob in parts.items():
        raw_client.set(keys.model_blob(VERSION, part), blob)
    raw_client.set(keys.model_current, VERSION)

    # In-process: the loop with one event per batch.
    live = LiveRecommender(s, model=LiveModel(VERSION, parts, s))
    expected = run_prequential(events, {"live": live}, mask, batch_size=1, bulk_size=None)
    if weights:  # the source ranks something: without it (trending back-fill only) the ranks differ
        off = s.model_copy(update={"reader_blend_weights": {**weights, "session_knn": 0.0}})
        without = run_prequential(events, {"live": LiveRecommender(off, model=LiveModel(VERSION, parts, off))},
                                  mask, batch_size=1, bulk_size=None)
        assert without.ranks["live"].tolist() != expected.ranks["live"].tolist()

    # Real path: ask the reader before each scored event, then publish it and wait until applied.
    worker = spawn(["worker"], s)
    reader = spawn(["serve"], s)
    wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 30, reader)
    deadline = time.monotonic() + 20  # the reader loads a published model in the background
    while _model_version(s) != VERSION:
        assert time.monotonic() < deadline, reader.tail()
        time.sleep(0.05)
    ranks: list[int] = []
    seen: dict[str, set[str]] = {}

    async def drive() -> None:
        async with Publisher(s) as pub:
            for i, (e, flagged) in enumerate(zip(raw, mask, strict=True)):
                if flagged:
                    await asyncio.sleep(0.08)  # let the reader's snapshot of norms catch up
                    ranks.append(await asyncio.to_thread(
                        _reader_ranks, s, e["user_id"], seen.get(e["user_id"], set()), e["item_id"]))
                await pub.send(e)
                await pub.flush()
                deadline = time.monotonic() + 20
                while int(rds.hget(keys.meta, "applied_events") or 0) < i + 1:
                    assert worker.alive(), worker.tail()
                    assert time.monotonic() < deadline, f"event {i} not applied\n{worker.tail()}"
                    await asyncio.sleep(0.005)
                seen.setdefault(e["user_id"], set()).add(e["item_id"])

    asyncio.run(drive())
    raw_client.close()
    got = np.array(ranks)
    assert got.tolist() == expected.ranks["live"].tolist()
    assert expected.hr("live") > 0  # the comparison is not between two empty answers
    hr = float((got > 0).mean())
    ndcg = float(np.where(got > 0, 1 / np.log2(np.maximum(got, 1) + 1), 0).mean())
    assert hr == pytest.approx(expected.hr("live")) and ndcg == pytest.approx(expected.ndcg("live"))
