"""`driftrec simulate` publishes live clicks: a long run at a shop's rate loses none to the
dead-letter topic (issue 21: the simulator's event time once ran ~1,800x ahead of the clock)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from driftrec.keys import Keys
from driftrec.settings import Settings

pytestmark = pytest.mark.integration


async def _end_offsets(s: Settings, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


def test_twenty_thousand_simulated_clicks_at_2000_per_s_all_applied(settings: Settings, spawn: Any) -> None:
    r = redis.Redis.from_url(settings.redis)
    worker = spawn(["worker"])
    started = time.monotonic()
    sim = spawn(["simulate", "--events", "20000", "--rate", "2000"])
    deadline = time.monotonic() + 240
    applied = 0
    while time.monotonic() < deadline:
        assert worker.alive(), worker.tail()
        applied = int(r.hget(Keys(settings.key_prefix).meta, "applied_events") or 0)
        if applied >= 20_000 and not sim.alive():
            break
        time.sleep(0.5)
    assert sim.proc is not None and sim.proc.wait(5) == 0, sim.tail()
    assert "sent 20000, rejected 0" in sim.tail(), sim.tail()
    # Publishing took ~10 s at 2,000/s: the run spans far more than the old simulator's window.
    assert time.monotonic() - started >= 9.5
    assert applied == 20_000, f"applied {applied}\n{worker.tail()}"
    assert asyncio.run(_end_offsets(settings, settings.dead_letter_topic, 1)) == 0
    assert asyncio.run(_end_offsets(settings, settings.clicks_topic, settings.topic_partitions)) == 20_000
