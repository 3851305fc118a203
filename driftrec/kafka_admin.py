"""Small Kafka admin helpers on aiokafka: readiness probe and topic creation."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = ["broker_ready", "ensure_topics", "ensure_topics_async"]

logger = logging.getLogger(__name__)


async def _describe(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.list_topics(), 5)
        return True
    finally:
        await admin.close()


def broker_ready(bootstrap: str) -> bool:
    """True when the broker answers a metadata request (not merely a TCP connect)."""
    try:
        return asyncio.run(_describe(bootstrap))
    except (TimeoutError, KafkaError, OSError):
        return False


async def ensure_topics_async(bootstrap: str, topics: dict[str, int],
                              configs: dict[str, dict[str, str]] | None = None) -> None:
    """Create each topic (name -> partitions) if missing, with its ``configs`` (name -> topic
    configs, e.g. ``{"cleanup.policy": "compact"}``); existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name=name, num_partitions=parts, replication_factor=1,
                     topic_configs=(configs or {}).get(name, {}))
            for name, parts in topics.items()
            if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        # Wait until metadata shows every partition, so producers do not race the creation.
        for _ in range(100):
            meta = await admin.describe_topics(list(topics))
            if all(t.get("error_code", 0) == 0 and len(t.get("partitions", [])) > 0 for t in meta):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def ensure_topics(bootstrap: str, topics: dict[str, int],
                  configs: dict[str, dict[str, str]] | None = None) -> None:
    asyncio.run(ensure_topics_async(bootstrap, topics, configs))
