"""Resolves the services a process talks to: given ones from the environment, else the local stack."""

from __future__ import annotations

import logging

from driftrec.kafka_admin import ensure_topics
from driftrec.settings import Settings

__all__ = ["ensure_services"]

logger = logging.getLogger(__name__)


def ensure_services(settings: Settings, *, start: bool = True) -> Settings:
    """Start the local stack when nothing was given, then make sure the topics exist."""
    if settings.local_stack and start:
        from driftrec.stack import LocalStack

        LocalStack(settings).up()
    ensure_topics(settings.bootstrap, {settings.clicks_topic: settings.topic_partitions,
                                       settings.dead_letter_topic: 1})
    return settings
