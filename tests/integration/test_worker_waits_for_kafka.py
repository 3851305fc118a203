"""A worker started while Kafka is down waits for it, then consumes (a broker of the test's own)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from driftrec.keys import Keys
from driftrec.publisher import publish_events
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from tests.integration.services import Proc
from tools.chaos.stack import PrivateStack, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture()
def stack() -> Iterator[PrivateStack]:
    """Kafka and Redis of this test alone: stopping its broker disturbs no other test."""
    home = ROOT / ".driftrec-test" / f"kafka-down-{uuid.uuid4().hex[:8]}"
    private = PrivateStack(home)
    private.up()
    try:
        yield private
    finally:
        private.down()
        shutil.rmtree(home, ignore_errors=True)


def _applied(client: redis.Redis, s: Settings) -> int:
    return int(client.hget(Keys(s.key_prefix).meta, "applied_events") or 0)  # type: ignore[arg-type]


def test_worker_started_without_kafka_waits_then_applies(stack: PrivateStack) -> None:
    tag = uuid.uuid4().hex[:8]
    s = stack.settings.model_copy(update={
        "clicks_topic": f"t-{tag}.clicks", "dead_letter_topic": f"t-{tag}.dlq",
        "consumer_group": f"g-{tag}", "key_prefix": f"test{tag}",
        "worker_web_port": free_port(), "worker_metrics_port": free_port(), "batch_max_wait_s": 0.02,
    })
    stack.stop_kafka()
    worker = Proc(s, ["worker"], ARTIFACTS / f"worker-waits-for-kafka-{tag}.log")
    client = redis.Redis.from_url(s.redis)
    try:
        time.sleep(10)
        assert worker.alive(), f"the worker exited while Kafka was down:\n{worker.tail()}"
        assert "unreachable" in worker.tail(), worker.tail()

        stack.start_kafka()
        # Publish once the worker has made the topic (a producer first would auto-create it).
        deadline = time.monotonic() + 120
        while "answers after" not in worker.tail(20_000) and time.monotonic() < deadline:
            assert worker.alive(), f"the worker died:\n{worker.tail()}"
            time.sleep(0.5)
        assert "answers after" in worker.tail(20_000), worker.tail()
        events = list(ShopSimulator(n_users=50, n_items=200, n_categories=5, seed=3).events(500))
        report = publish_events(s, events)
        assert report.sent == len(events) and not report.rejected, report

        deadline = time.monotonic() + 120
        while _applied(client, s) < len(events) and time.monotonic() < deadline:
            assert worker.alive(), f"the worker died:\n{worker.tail()}"
            time.sleep(0.5)
        assert _applied(client, s) == len(events), worker.tail()
    finally:
        worker.stop()
        client.close()
