"""Chaos, short: a worker kill -9, a Redis kill -9 and a Redis restart that lost the tail of its
AOF, during a steady replay, lose nothing and apply nothing twice; a poison flood crashes nothing
and lands every bad event in the DLQ.

The long version (100,000 events, two worker kills, a Kafka outage) is ``make chaos``
(benchmarks/chaos.py). Redis here is a private one with the local stack's persistence (AOF
everysec), so killing it hurts no other test; Kafka is the suite's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from driftrec.settings import Settings
from tools.chaos.poison import run_poison
from tools.chaos.scenario import ChaosConfig, Fault, run_chaos
from tools.chaos.stack import PrivateRedis, drop_aof_tail

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


class SharedKafkaPrivateRedis:
    """The chaos run's services: the suite's broker (never stopped here) and a Redis of its own."""

    def __init__(self, base: Settings, redis_server: PrivateRedis) -> None:
        self.redis_server = redis_server
        self.settings = base.model_copy(update={"redis_url": redis_server.url})

    def kill9_redis(self) -> None:
        self.redis_server.kill9()

    def start_redis(self) -> None:
        self.redis_server.start()  # same port and folder: it replays its AOF

    def drop_aof_tail(self, batches: int) -> int:
        return drop_aof_tail(self.redis_server.workdir, batches)

    def stop_kafka(self) -> None:
        raise AssertionError("the short chaos test must not stop the shared broker")

    start_kafka = stop_kafka


@pytest.fixture()
def chaos_services(services: Settings, tmp_path: Path) -> Iterator[SharedKafkaPrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield SharedKafkaPrivateRedis(services, server)
    server.stop()


def test_worker_and_redis_killed_mid_stream_end_at_the_oracle(chaos_services: SharedKafkaPrivateRedis) -> None:
    cfg = ChaosConfig(events=12_000, rate=1500.0, users=400, items=1500, categories=8, seed=21,
                      faults=(Fault("worker_kill9", 0.3), Fault("redis_kill9", 0.55, 0.5),
                              Fault("redis_rollback", 0.8, 5)),
                      poll_rate=10.0, timeout_s=120.0, lag_timeout_s=60.0,
                      settings_update={"batch_max_wait_s": 0.02})
    r = run_chaos(chaos_services, cfg, ARTIFACTS / "chaos-short")
    assert [f["kind"] for f in r["faults"]] == ["worker_kill9", "redis_kill9", "redis_rollback"]
    assert r["events_in_topic"] == cfg.events and r["duplicate_event_ids_in_topic"] == 0
    assert r["lost_events"] == 0 and r["double_applied_events"] == 0, r
    assert r["comparison"]["equal"], r["comparison"]
    assert r["fold_in_vectors"]["users_checked"] > 0 and r["fold_in_vectors"]["users_differing"] == 0
    assert r["state_equal_to_oracle"]
    # Redis restarted from its AOF: nothing it had acknowledged before the kill went missing.
    redis_fault = r["faults"][1]
    assert redis_fault["applied_after_restart"] is not None
    assert redis_fault["applied_after_restart"] >= redis_fault["applied_before"]
    # Then Redis lost acknowledged writes (its AOF's last five batches, as an OS crash would):
    # the worker read those records back from Kafka, so the end state above still holds.
    rollback = r["faults"][2]
    assert rollback["aof_bytes_dropped"] > 0 and rollback["applied_lost_by_restart"] > 0, rollback
    reader = r["reader"]
    assert reader["reader_5xx"] == 0 and reader["requests"] > 50, reader
    assert reader["ok_200"] + reader["degraded_200"] >= 0.95 * reader["requests"], reader
    assert r["seconds_to_zero_lag"] is not None and r["seconds_to_zero_lag"] < 60, r
    # Redis' counter reached every event (the worker read the rolled-back tail back by itself).
    assert r["seconds_to_redis_caught_up"] is not None, r


def test_poison_flood_crashes_nothing_and_dead_letters_every_bad_event(services: Settings) -> None:
    r = run_poison(services, ARTIFACTS / "chaos-short", good=3000, bad=1500, rate=4000.0, seed=5,
                   users=150, items=600, timeout_s=60.0)
    assert len(r["bad_families"]) >= 15, r["bad_families"]
    assert r["worker_crashes"] == 0 and r["worker_tracebacks_in_log"] == 0
    assert r["bad_events_in_dlq"] == 1500 and r["bad_events_missing_from_dlq"] == 0
    assert r["dead_letters_without_reason"] == 0 and r["good_events_in_dlq"] == 0
    assert r["applied_events_counter"] == 3000
    assert r["good_state_equal_to_oracle"], r["comparison"]
