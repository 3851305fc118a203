"""Builds the Faust app from settings: broker, loopback web server, no table or router views."""

from __future__ import annotations

from typing import Any

import faust

from driftrec.settings import Settings
from driftrec.streams.batch_consumer import BatchApp

__all__ = ["create_app", "faust_settings"]


def create_app(settings: Settings) -> faust.App:
    """The worker's Faust app; its consumer hands agents whole batches (streams/batch_consumer.py)."""
    app = BatchApp(settings.consumer_group, **faust_settings(settings))
    app.fetch_min_bytes = settings.worker_fetch_min_bytes
    app.fetch_max_wait_ms = settings.worker_fetch_max_wait_ms
    return app


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust settings of the worker's app (besides its id)."""
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)  # Faust makes only the last folder
    return dict(
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",  # our state lives in Redis; Faust keeps no tables
        # Faust writes an (empty) "<id>-data" folder; keep it under driftrec's home, not the cwd.
        datadir=str(settings.home / "faust" / "{conf.name}-data"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=settings.worker_web_port,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        producer_acks=-1,
        # A worker killed without leaving its group holds its partitions until the session times
        # out: keep that short so a restart resumes in seconds, not Faust's default minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_commit_every=2000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, settings.batch_max_events * 2),
        autodiscover=False,
    )
