"""The worker's wait for an unreachable broker: back-off, retry, and what is not retried (no I/O)."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError

from driftrec.runtime import ensure_topics_waiting


def test_waiting_for_kafka_backs_off_and_creates_topics_once_it_answers() -> None:
    calls: list[dict[str, int]] = []
    slept: list[float] = []

    def create(bootstrap: str, topics: dict[str, int]) -> None:
        calls.append(topics)
        if len(calls) <= 6:
            raise KafkaConnectionError("Unable to bootstrap from 127.0.0.1:1")

    failures = ensure_topics_waiting("127.0.0.1:1", {"clicks": 4}, initial_s=0.5, maximum_s=4.0,
                                     sleep=slept.append, create=create)
    assert failures == 6 and len(calls) == 7
    assert slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_waiting_for_kafka_raises_what_is_not_an_outage() -> None:
    def create(bootstrap: str, topics: dict[str, int]) -> None:
        raise ValueError("bad partition count")

    with pytest.raises(ValueError):
        ensure_topics_waiting("x:1", {"clicks": 0}, sleep=lambda _: None, create=create)
