"""A Redis that lost acknowledged writes at the end of a stream heals without a next event.

The worker applied every record and Kafka's committed offsets are at the end; then Redis comes
back from an AOF missing its last script (an OS crash under ``appendfsync everysec``). Nothing
more is published, so no batch would ever show the hole: the worker must notice on its own that
Redis stores less than it consumed, read the records back from Kafka and reach the oracle.
Twice: with the worker running through the rollback (it remembers what Redis accepted), and with
the worker killed before it and started after it (only its consumer position says what is lost).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from driftrec.keys import Keys
from driftrec.redis_conn import sync_client
from driftrec.settings import Settings
from tools.chaos.procs import Child
from tools.chaos.scenario import ChaosConfig, run_settings, sim_rows
from tools.chaos.stack import PrivateRedis, drop_aof_tail
from tools.chaos.state import (
    build_oracle,
    compare,
    last_offsets,
    read_redis,
    read_topic,
    views_of,
)
from tools.chaos.traffic import publish_steady, wait_zero_lag

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def _applied(client: redis.Redis, keys: Keys) -> int:
    return int(client.hget(keys.meta, "applied_events") or 0)


def _wait_applied(client: redis.Redis, keys: Keys, n: int, worker: Child, timeout_s: float) -> int:
    """Poll Redis' applied counter until it reaches ``n``; returns the last value read."""
    deadline = time.monotonic() + timeout_s
    got = -1
    while time.monotonic() < deadline:
        assert worker.check(), worker.tail()
        try:
            got = _applied(client, keys)
        except (redis.RedisError, OSError):
            got = -1
        if got >= n:
            return got
        time.sleep(0.1)
    return got


@pytest.mark.parametrize("worker_down", [False, True], ids=["worker-running", "worker-restarted"])
def test_redis_rolled_back_after_the_last_event_returns_to_the_oracle(
        services: Settings, private_redis: PrivateRedis, worker_down: bool) -> None:
    s = run_settings(services.model_copy(update={"redis_url": private_redis.url}), batch_max_wait_s=0.02)
    keys = Keys(s.key_prefix)
    _, rows = sim_rows(ChaosConfig(events=3000, users=300, items=800, categories=6, seed=33))
    client = sync_client(s.redis)
    log = ARTIFACTS / "rollback-heal" / f"worker-{'restarted' if worker_down else 'running'}.log"
    worker = Child(s, ["worker"], log).start()
    try:
        # Two halves, so the offsets of every partition survive the cut of the last script.
        asyncio.run(publish_steady(s, rows[:1500], rate=20_000.0))
        assert _wait_applied(client, keys, 1500, worker, 90.0) == 1500, worker.tail()
        asyncio.run(publish_steady(s, rows[1500:], rate=20_000.0))
        assert _wait_applied(client, keys, 3000, worker, 60.0) == 3000, worker.tail()
        waited, lag = asyncio.run(wait_zero_lag(s.bootstrap, s.consumer_group, s.clicks_topic, timeout_s=60.0))
        assert waited is not None, lag  # Kafka's committed offsets are at the end of the topic
        if worker_down:
            worker.kill9()
        else:
            # Held still while Redis restarts: otherwise it may reconnect and heal before the
            # count below is read, and the test would not see what Redis lost. It keeps its
            # connections, consumer and state: a running worker, only a moment later.
            os.kill(worker.pid, signal.SIGSTOP)
        private_redis.kill9()
        assert drop_aof_tail(private_redis.workdir, 1) > 0
        private_redis.start()
        lost = 3000 - _applied(client, keys)
        if worker_down:
            worker.start()
        else:
            os.kill(worker.pid, signal.SIGCONT)
        assert 0 < lost <= 1500, lost  # Redis lost acknowledged writes, not the first half
        # Nothing more is published: the worker alone must read the lost records back.
        assert _wait_applied(client, keys, 3000, worker, 60.0) == 3000, worker.tail()
    finally:
        worker.stop()
    records = read_topic(s, s.clicks_topic)
    views, _ = views_of(records, s.event_types)
    snap = read_redis(client, keys)
    client.close()
    assert len(views) == 3000
    assert snap.applied == 3000  # each lost record applied once more, none twice
    cmp = compare(snap, build_oracle(s, views, float(snap.meta["landmark"])), s,
                  last_offsets=last_offsets(records))
    assert cmp.equal, cmp.as_dict()
