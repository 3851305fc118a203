"""Redis Cluster: the worker and the reader on a ``redis+cluster://`` URL against a local
three-node cluster (``redis-server --cluster-enabled yes``, joined by ``redis-cli --cluster
create``), each batch applied per hash slot with a guard per slot, effectively once.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.crc import key_slot

from driftrec.keys import Keys
from driftrec.redis_conn import async_client, cluster_nodes, is_cluster_url, sync_client
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams.cluster_state import ClusterRedisState, guard_key, inflight_key
from driftrec.streams.processor import BatchProcessor, RawRecord
from driftrec.streams.published import FactorCache
from tools.chaos.scenario import ChaosConfig, Fault, check_vectors, publish_model, run_chaos
from tools.chaos.stack import LocalRedisCluster
from tools.chaos.state import TopicRecord, build_oracle, compare, read_redis, views_of

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "cluster"


def test_cluster_urls_parse() -> None:
    assert is_cluster_url("redis+cluster://a:7000,b:7001") and not is_cluster_url("redis://a:6379/0")
    nodes, opts = cluster_nodes("rediss+cluster://u:p%40ss@a:7000,[::1]:7001/0")
    assert nodes == [("a", 7000), ("::1", 7001)] and opts == {"username": "u", "password": "p@ss", "ssl": True}


def _records(n: int, seed: int) -> list[TopicRecord]:
    sim = ShopSimulator(n_users=150, n_items=600, n_categories=6, seed=seed)
    out, offsets = [], [0] * 4
    for e in sim.events(n):
        p = zlib.crc32(e["user_id"].encode()) % 4
        out.append(TopicRecord(p, offsets[p], e["user_id"].encode(), orjson.dumps(e)))
        offsets[p] += 1
    return out


class Crash(BaseException):
    """The process dies here (BaseException: nothing on the way may catch it)."""


def _processor(s: Settings, client: Any, crash_after_groups: int | None = None) -> BatchProcessor:
    keys = Keys(s.key_prefix)
    state = ClusterRedisState(client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                              neighbours_k=s.neighbours_cut, trending_k=s.trending_k)
    if crash_after_groups is not None:
        async def dies_mid_batch(batch_id: str, groups: list[tuple[str, bytes]], finish: Any) -> None:
            await state._scripts(state._slot, [([g], [p]) for g, p in groups[:crash_after_groups]])
            raise Crash()
        state._complete = dies_mid_batch  # type: ignore[method-assign]

    async def sink(dead: Any) -> None:
        raise AssertionError(f"no dead letters expected: {dead}")

    return BatchProcessor(s, state, sink, FactorCache(client, keys, s.fold_in_regularization))


def test_a_batch_cut_off_between_slot_groups_is_finished_once(cluster: LocalRedisCluster) -> None:
    s = Settings(redis_url=cluster.url, kafka_bootstrap_servers="unused:1", key_prefix="cl1", clicks_topic="clicks")
    keys = Keys(s.key_prefix)
    records = _records(6000, seed=3)
    sync = sync_client(s.redis)
    sim = ShopSimulator(n_users=150, n_items=600, n_categories=6, seed=3)
    model_items, Y = publish_model(sync, keys, sim)

    def raw(rs: list[TopicRecord]) -> list[RawRecord]:
        return [RawRecord(s.clicks_topic, r.partition, r.offset, r.value) for r in rs]

    async def run() -> tuple[int, int]:
        client = async_client(s.redis, socket_timeout=10)
        first = _processor(s, client)
        for i in range(0, 2000, 500):
            await first.process(raw(records[i: i + 500]))
        # The process dies after 40 of the next batch's slot groups: its copy is in, its offsets not.
        with pytest.raises(Crash):
            await _processor(s, client, crash_after_groups=40).process(raw(records[2000:2600]))
        assert sync.hlen(inflight_key(keys)) > 0
        # A new process replays from the committed offset with other batch boundaries.
        again = _processor(s, client)
        for i in range(2000, len(records), 700):
            await again.process(raw(records[i: i + 700]))
        await client.aclose()
        return again.state.recovered, again.state.commands_sent  # type: ignore[attr-defined]

    recovered, commands = asyncio.run(run())
    assert recovered == 1 and commands > 0
    assert sync.hlen(inflight_key(keys)) == 0 and not list(sync.scan_iter(match=f"{s.key_prefix}:{{g}}:wal:*"))
    snap = read_redis(sync, keys)
    views, _ = views_of(records, s.event_types)
    oracle = build_oracle(s, views, float(snap.meta["landmark"]))
    cmp = compare(snap, oracle, s)
    assert cmp.equal, cmp.as_dict()
    assert snap.applied == len(records)
    vec = check_vectors(snap, oracle, model_items, Y, s.history_len)
    assert vec["users_checked"] > 50 and vec["users_differing"] == 0, vec
    # One guard per slot, under a tag of that slot, covering every slot that holds state.
    guards = [k for k in snap.other_keys if k.endswith(":applied")]
    assert len(guards) > 100
    user = next(iter(oracle.hist))
    slot = key_slot(keys.user_state(user).encode())
    assert key_slot(guard_key(keys, slot).encode()) == slot
    owner = {r.partition for r in records if r.key == user.encode()}.pop()
    assert int(sync.hget(guard_key(keys, slot), f"{s.clicks_topic}:{owner}")) >= max(
        r.offset for r in records if r.key == user.encode())
    sync.close()


def test_worker_killed_and_reader_on_a_cluster_url(services: Settings, cluster: LocalRedisCluster) -> None:
    class OnCluster:
        settings = services.model_copy(update={"redis_url": cluster.url})

        def kill9_redis(self) -> None:
            raise AssertionError("not in this test")

        start_redis = stop_kafka = start_kafka = kill9_redis

    cfg = ChaosConfig(events=8000, rate=2000.0, users=300, items=1200, categories=8, seed=9,
                      faults=(Fault("worker_kill9", 0.5),), poll_rate=10.0, timeout_s=90.0,
                      lag_timeout_s=60.0, settings_update={"batch_max_wait_s": 0.02})
    r = run_chaos(OnCluster(), cfg, ARTIFACTS)
    assert r["lost_events"] == 0 and r["double_applied_events"] == 0, r
    assert r["state_equal_to_oracle"], r["comparison"]
    assert r["fold_in_vectors"]["users_checked"] > 0
    reader = r["reader"]
    assert reader["reader_5xx"] == 0 and reader["no_answer"] == 0
    assert reader["ok_200"] >= 0.95 * reader["requests"], reader  # served from the cluster, not degraded
    # Keys really are spread over the nodes, each node holding part of the state.
    per_node = []
    for host, port in cluster_nodes(cluster.url)[0]:
        node = redis.Redis(host=host, port=port)
        per_node.append(node.dbsize())
        node.close()
    assert all(n > 100 for n in per_node), per_node


def test_reader_answers_from_a_cluster(services: Settings, cluster: LocalRedisCluster, spawn: Any,
                                       settings: Settings) -> None:
    from tests.integration.services import wait_http

    s = settings.model_copy(update={"redis_url": cluster.url})
    sync = sync_client(s.redis)
    records = _records(1500, seed=5)
    async def fill() -> None:
        client = async_client(s.redis)
        proc = _processor(s, client)
        await proc.process([RawRecord(s.clicks_topic, r.partition, r.offset, r.value) for r in records])
        await client.aclose()
    asyncio.run(fill())
    user = json.loads(records[-1].value)["user_id"]
    spawn(["serve"], s)
    wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 30)
    with urllib.request.urlopen(f"http://127.0.0.1:{s.reader_port}/v1/recommendations/{user}?n=10", timeout=5) as resp:
        body = json.loads(resp.read())
    assert not body["degraded"] and len(body["items"]) == 10
    with urllib.request.urlopen(f"http://127.0.0.1:{s.reader_port}/v1/users/{user}/history", timeout=5) as resp:
        hist = json.loads(resp.read())
    assert hist["items"], hist
    for key in sync.scan_iter(match=f"{s.key_prefix}:*"):
        sync.delete(key)
    sync.close()
