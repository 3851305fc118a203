"""Resolves the services a process talks to: given ones from the environment, else the local stack."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

from aiokafka.errors import KafkaError

from driftrec.kafka_admin import ensure_topics
from driftrec.settings import Settings

__all__ = ["ensure_services", "ensure_topics_waiting", "topic_plan"]

logger = logging.getLogger(__name__)


def ensure_services(settings: Settings, *, start: bool = True, wait: bool = False) -> Settings:
    """Start the local stack when nothing was given, then make sure the topics exist.

    With ``wait`` an unreachable broker is waited for (logged, with back-off) instead of raising:
    a worker started before Kafka, or while it restarts, begins consuming once Kafka is up.
    """
    if settings.local_stack and start:
        from driftrec.stack import LocalStack

        LocalStack(settings).up()
    topics, configs = topic_plan(settings)
    if wait:
        ensure_topics_waiting(settings.bootstrap, topics, create=partial(ensure_topics, configs=configs))
    else:
        ensure_topics(settings.bootstrap, topics, configs)
    return settings


def topic_plan(settings: Settings) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Every topic driftrec creates (name -> partitions) and the configs of those that need some:
    the items topic is log-compacted (the latest record of each item is kept for ever, so a
    replay from its start rebuilds the catalogue, deletes included)."""
    topics = {settings.clicks_topic: settings.topic_partitions, settings.dead_letter_topic: 1,
              settings.items_topic: settings.items_partitions, settings.items_dead_letter_topic: 1}
    return topics, {settings.items_topic: {"cleanup.policy": "compact"}}


def ensure_topics_waiting(bootstrap: str, topics: dict[str, int], *, initial_s: float = 0.5,
                          maximum_s: float = 10.0, sleep: Callable[[float], None] = time.sleep,
                          create: Callable[[str, dict[str, int]], None] = ensure_topics) -> int:
    """Create the topics once the broker answers, retrying forever; returns the failed attempts.

    Back-off doubles from ``initial_s`` to ``maximum_s``. Only outages are retried (Kafka errors,
    refused connections, timeouts); anything else is a bug or a bad setting and is raised.
    """
    failures, delay = 0, initial_s
    while True:
        try:
            create(bootstrap, topics)
            if failures:
                logger.info("Kafka at %s answers after %d failed attempts", bootstrap, failures)
            return failures
        except (KafkaError, OSError, TimeoutError) as exc:
            failures += 1
            logger.warning("Kafka at %s unreachable (%s: %s); retrying in %.1fs",
                           bootstrap, type(exc).__name__, exc, delay)
            sleep(delay)
            delay = min(delay * 2, maximum_s)
