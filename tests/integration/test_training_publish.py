"""driftrec train on the real broker and Redis: click log -> version -> worker's and reader's loaders; gate; errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from driftrec.errors import ModelError
from driftrec.keys import Keys
from driftrec.models.batch import create_model
from driftrec.models.decay import DecayPolicy
from driftrec.online.app import create_store
from driftrec.online.model_cache import ModelCache
from driftrec.publisher import Publisher as EventPublisher
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams.published import FactorCache
from driftrec.training.clicklog import events_to_log, read_topic
from driftrec.training.matrix import build_interactions
from driftrec.training.publish import (
    MANIFEST,
    gate_log_key,
    npy,
    pack_models,
    versions_key,
)
from driftrec.training.runner import TrainConfig, make_publisher, train_once

pytestmark = pytest.mark.integration

TINY_ALS = {"factors": 8, "iterations": 6, "regularization": 1.0, "alpha": 2.0, "num_threads": 1}
TINY_TF = {"hidden": [16], "epochs": 5, "batch_size": 32, "learning_rate": 1e-2}


def shop(n: int, seed: int = 4) -> list[dict[str, Any]]:
    sim = ShopSimulator(n_users=120, n_items=300, n_categories=6, seed=seed, start_time=1.7e9,
                        id_prefix=f"s{seed}")
    return list(itertools.islice(sim.events(n), n))


def send(s: Settings, events: Sequence[dict[str, Any]], raw: Sequence[bytes] = ()) -> None:
    async def run() -> None:
        async with EventPublisher(s) as pub:
            for e in events:
                await pub.send(e)
            for value in raw:
                await pub.send_raw(value, key=b"bad")
            await pub.flush()

    asyncio.run(run())


def quiet(_: str) -> None:
    pass


def bytes_client(s: Settings) -> redis.Redis:
    return redis.Redis.from_url(s.redis)


def test_topic_to_published_version_that_worker_and_reader_load(settings: Settings, rds: redis.Redis) -> None:
    events = shop(3000)
    leaver = events[0]["user_id"]
    last_of_leaver = max(n for n, e in enumerate(events) if e["user_id"] == leaver)
    tombstone = {"event_id": "bye", "user_id": leaver, "item_id": "", "type": "forget_user",
                 "timestamp": events[last_of_leaver]["timestamp"]}
    events.insert(last_of_leaver + 1, tombstone)
    bad = [b"{oops", orjson.dumps({**events[1], "type": "wishlist"}), orjson.dumps({**events[2], "user_id": "a b"})]
    send(settings, events, bad)

    out: list[str] = []
    config = TrainConfig(models=("als", "tf"), params={"als": TINY_ALS, "tf": TINY_TF}, seed=1)
    report = train_once(settings, config, echo=out.append)
    text = "\n".join(out)
    n_leaver = sum(1 for e in events if e["user_id"] == leaver and e["type"] != "forget_user")
    assert report.log.messages == len(events) + 3 and report.log.skipped == 3
    assert dict(report.log.bad) == {"message": 1, "type": 1, "user_id": 1}
    assert report.log.tombstones == 1 and report.log.forgotten == n_leaver
    assert sum(report.log.offsets[p][1] for p in report.log.offsets) == len(events) + 3
    assert "als: trained in" in text and "tf: trained in" in text and "non-zeros" in text
    version = report.version
    assert version and rds.get(Keys(settings.key_prefix).model_current) == version

    pub = make_publisher(settings)
    model = pub.load(version)
    assert model.has_tf and model.pool_ids and leaver not in model.user_index
    manifest = pub.manifest(version)
    assert manifest is not None and manifest["events"] == len(events) - 1 - n_leaver
    assert manifest["trained_until"] == max(e["timestamp"] for e in events if e["user_id"] != leaver)
    assert set(manifest["parts"]) | {MANIFEST} == {k.rsplit(":", 1)[1] for k in rds.keys(f"{settings.key_prefix}:{{m}}:v:{version}:*")}
    (record,) = pub.gate_log()
    assert record["passed"] and record["reason"] == "no live model" and record["published_version"] == version

    async def loaders() -> tuple[Any, Any]:
        client = aioredis.Redis.from_url(settings.redis)
        worker = FactorCache(client, Keys(settings.key_prefix), settings.fold_in_regularization)
        await worker.refresh(version)
        store = create_store(settings)
        reader = ModelCache(store.model_parts, default_reg=settings.fold_in_regularization,
                            pool_size=settings.reader_similar_users_pool)
        served = await reader.load(version)
        await client.aclose()
        return worker.model, served

    worker_model, served = asyncio.run(loaders())
    assert worker_model is not None and worker_model.version == version
    assert list(worker_model.ids) == served.item_ids and served.has_tf
    np.testing.assert_array_equal(worker_model.Y, served.Y)


def test_gate_keeps_a_better_live_model_and_old_versions_go_after_the_grace(settings: Settings) -> None:
    s = settings.model_copy(update={"model_grace_s": 0.0, "gate_min_users": 10})
    events = shop(5000, seed=8)
    send(s, events[:4000])
    good = TrainConfig(models=("als",), params={"als": TINY_ALS}, seed=0)
    v1 = train_once(s, good, echo=quiet).version
    assert v1 is not None
    send(s, events[4000:])
    pub = make_publisher(s)

    # a hopeless recipe: its nDCG on the newest events is below the live model's
    awful = TrainConfig(models=("als",), params={"als": {**TINY_ALS, "factors": 2, "iterations": 1,
                                                         "regularization": 1e5}}, seed=0)
    kept = train_once(s, awful, echo=quiet)
    assert kept.version is None and kept.gate is not None and not kept.gate.passed
    assert pub.live_version() == v1
    rec = pub.gate_log()[0]
    assert rec["passed"] is False and rec["published_version"] is None and rec["live_version"] == v1
    assert rec["candidate"]["vector"]["ndcg"] < rec["live"]["vector"]["ndcg"]
    # the live model never saw the holdout: it starts after the live model's training data
    assert rec["cut"] >= pub.manifest(v1)["trained_until"] and rec["holdout_users"] >= 10

    s_lenient = s.model_copy(update={"gate_margin": 1.0})
    published = train_once(s_lenient, good, echo=quiet)
    v2 = published.version
    assert v2 and published.gate is not None and published.gate.passed and pub.live_version() == v2
    assert published.removed == [v1]  # grace 0: the replaced version is deleted at once
    assert not bytes_client(s).keys(f"{s.key_prefix}:{{m}}:v:{v1}:*")
    assert set(bytes_client(s).hgetall(versions_key(Keys(s.key_prefix)))) == {v2.encode()}

    # nothing newer than the live model: keep it
    again = train_once(s, good, echo=quiet)
    assert again.version is None and "0 users" in again.gate.reason and pub.live_version() == v2
    assert [r["passed"] for r in pub.gate_log()] == [False, True, False, True]
    assert bytes_client(s).llen(gate_log_key(Keys(s.key_prefix))) == 4


def _tiny_parts(seed: int = 0) -> tuple[dict[str, bytes], list[str]]:
    log = events_to_log(shop(800, seed=3), Settings())
    data = build_interactions(log, DecayPolicy(Settings().half_life_s))
    als = create_model("als", **TINY_ALS).fit(data.matrix, seed=seed)
    return pack_models({"als": als}, data.item_ids, manifest={"trained_until": data.until}), data.item_ids


def test_empty_log_unknown_ids_and_corrupt_blobs_leave_the_live_version(settings: Settings) -> None:
    keys = Keys(settings.key_prefix)
    client = bytes_client(settings)
    pub = make_publisher(settings)
    with pytest.raises(ModelError, match="no accepted events"):
        train_once(settings, TrainConfig(models=("als",), params={"als": TINY_ALS}), echo=quiet)
    assert read_topic(settings).stats.messages == 0 and pub.live_version() is None
    assert not client.keys(f"{settings.key_prefix}:*")

    parts, items = _tiny_parts()
    v1 = pub.publish(parts, expected_live=None)
    before = {k: client.get(k) for k in client.keys(f"{settings.key_prefix}:{{m}}:v:{v1}:*")}

    with pytest.raises(ModelError, match="unknown model version"):
        pub.activate("20990101T000000Z-nosuchthing")
    with pytest.raises(ModelError, match="item_factors"):
        pub.publish({**parts, "item_factors": b"\x93NUMPY\x01\x00garbage"}, expected_live=v1, version="bad1")
    with pytest.raises(ModelError, match="rows for"):
        pub.publish({**parts, "item_ids": "\n".join(items[:-1]).encode()}, expected_live=v1, version="bad2")
    assert not client.keys(f"{settings.key_prefix}:{{m}}:v:bad*")
    assert b"bad1" not in client.hgetall(versions_key(keys))

    # written but corrupted in Redis before anyone switched to it: activation refuses it
    other, _ = _tiny_parts(seed=1)
    pub.write("v-later", other)
    client.set(keys.model_blob("v-later", "item_factors"), npy(np.full((2, 2), np.nan, np.float32)))
    with pytest.raises(ModelError, match="item_factors"):
        pub.activate("v-later")
    # a trainer whose gate saw another live version must not overwrite the newer one
    with pytest.raises(ModelError, match="changed"):
        pub.publish(other, expected_live="someone-elses", version="v-racer")
    assert pub.live_version() == v1
    assert {k: client.get(k) for k in client.keys(f"{settings.key_prefix}:{{m}}:v:{v1}:*")} == before
    with pytest.raises(ModelError, match="is live"):
        pub.delete(v1)

    # the live version's blob breaks: the next training run replaces it, and says why
    client.set(keys.model_blob(v1, "item_factors"), b"not an array")
    send(settings, shop(1500, seed=5))
    report = train_once(settings, TrainConfig(models=("als",), params={"als": TINY_ALS}), echo=quiet)
    assert report.version and pub.live_version() == report.version
    assert "cannot be read" in pub.gate_log()[0]["reason"]
    assert json.loads(client.get(keys.model_blob(report.version, MANIFEST)))["events"] == 1500


def test_cli_trains_on_a_timer_and_stops_cleanly(settings: Settings, spawn: Any) -> None:
    s = settings.model_copy(update={"gate_min_users": 1})
    send(s, shop(2000, seed=6))
    proc = spawn(["train", "-m", "als", "--param", "als.factors=4", "--param", "als.iterations=3",
                  "--every", "1s", "--seed", "3"], s)
    pub = make_publisher(s)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(pub.gate_log()) < 2:
        assert proc.alive(), proc.tail()
        time.sleep(0.2)
    proc.stop()
    log = pub.gate_log(10)
    assert len(log) >= 2, proc.tail()
    first, second = log[-1], log[-2]
    assert first["passed"] and first["published_version"] == pub.live_version()
    assert not second["passed"] and second["holdout_events"] == 0  # no new clicks: keep it
    text = proc.tail(20000)
    assert "2000 accepted" in text and "als: trained in" in text and "2000 events ->" in text
    assert proc.proc.returncode == 0, text
