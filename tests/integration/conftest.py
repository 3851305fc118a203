"""Session-wide real services and per-test isolation (own topics, group and Redis prefix)."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from driftrec.kafka_admin import ensure_topics
from driftrec.settings import Settings
from tests.integration.services import Proc, free_port, provide_services
from tools.chaos.stack import LocalRedisCluster

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# Before pytest-timeout (300 s, pyproject) ends a hung test, print what every asyncio task of a
# running event loop is waiting on: the timeout's own dump shows only threads, and an idle loop
# in epoll says nothing about which await never returned.
_TASK_DUMP_AFTER_S = 270.0


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"--- asyncio task {task.get_name()}: {task.get_coro()!r}", file=sys.stderr)
        task.print_stack(limit=30, file=sys.stderr)


def _dump_running_loops(name: str) -> None:
    print(f"=== {name} still running after {_TASK_DUMP_AFTER_S:.0f} s: asyncio tasks", file=sys.stderr)
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running():
            obj.call_soon_threadsafe(_dump_tasks)


@pytest.fixture(autouse=True)
def _hang_report(request: pytest.FixtureRequest) -> Iterator[None]:
    timer = threading.Timer(_TASK_DUMP_AFTER_S, _dump_running_loops, args=(request.node.nodeid,))
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


@pytest.fixture(scope="session")
def services() -> Iterator[Settings]:
    with provide_services() as settings:
        yield settings


@pytest.fixture()
def settings(services: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings unique to one test: topics, consumer group, key prefix and ports."""
    tag = uuid.uuid4().hex[:10]
    s = services.model_copy(update={
        "clicks_topic": f"t-{tag}.clicks", "dead_letter_topic": f"t-{tag}.dlq",
        "items_topic": f"t-{tag}.items", "items_dead_letter_topic": f"t-{tag}.items.dlq",
        "consumer_group": f"g-{tag}", "key_prefix": f"test{tag}",
        "worker_web_port": free_port(), "worker_metrics_port": free_port(), "reader_port": free_port(),
        "batch_max_wait_s": 0.02,
        # Tests POST events and forget users without keys; test_reader_events checks the default.
        "allow_anonymous_writes": True,
        # These tests check what is ranked, on a machine the whole stack shares: a slow moment
        # must not turn an answer into a degraded one. Shedding has its own tests
        # (test_reader_degraded.py, tests/unit/test_admission.py), which set these themselves.
        "reader_deadline_s": 5.0, "reader_max_loop_lag_ms": 0.0,
        # The session index (off by default, as the session_knn source is): on, so the write-path
        # tests check its ops too (chunking, forgetting, crashes); the source's tests give it a weight.
        "session_index_k": 50,
    })
    ensure_topics(s.bootstrap, {s.clicks_topic: s.topic_partitions, s.dead_letter_topic: 1})
    yield s
    client = redis.Redis.from_url(s.redis)
    try:
        for key in client.scan_iter(match=f"{s.key_prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A local 3-node Redis Cluster (``redis-server --cluster-enabled``), one per test module that
    asks for it: a module may stop and restart its nodes."""
    c = LocalRedisCluster(tmp_path_factory.mktemp("cluster"), n=3)
    c.start()
    yield c
    c.stop()


@pytest.fixture()
def rds(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis, decode_responses=True)
    yield client
    client.close()


@pytest.fixture()
def spawn(settings: Settings, request: pytest.FixtureRequest) -> Iterator:  # type: ignore[type-arg]
    """Start driftrec subcommands (worker, serve, ...) that are stopped after the test."""
    procs: list[Proc] = []

    def start(args: list[str], s: Settings | None = None) -> Proc:
        name = request.node.name.replace("/", "_")
        proc = Proc(s or settings, args, ARTIFACTS / f"{name}-{args[0]}-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
