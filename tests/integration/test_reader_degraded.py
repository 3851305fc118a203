"""Redis down or hung: the reader answers from its in-memory trending snapshot, /readyz says 503."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from driftrec.keys import Keys
from driftrec.models.online import InMemoryState
from driftrec.settings import Settings
from tests.integration.services import free_port
from tests.integration.test_reader_support import reader, reference_state, shop_events, write_state

pytestmark = pytest.mark.integration


class PrivateRedis:
    """A redis-server of this test alone, so it can be stopped, frozen and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)

    def freeze(self, frozen: bool) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def fill(settings: Settings) -> InMemoryState:
    st = reference_state(settings, shop_events(600, seed=11))
    client = redis.Redis.from_url(settings.redis)
    write_state(client, Keys(settings.key_prefix), st)
    client.close()
    return st


async def test_redis_down_gives_degraded_answers_from_the_snapshot(settings: Settings, private_redis: PrivateRedis) -> None:
    s = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{private_redis.port}/0",
                                    "reader_snapshot_interval_s": 0.1, "reader_redis_timeout_s": 0.3})
    st = fill(s)
    cat = sorted(st.trend)[0]
    user = sorted(st.hist)[0]
    async with reader(s, refresh=True) as (app, client):
        r = await client.get(f"/v1/recommendations/{user}", params={"category": cat})
        assert r.status_code == 200 and r.json()["degraded"] is False
        await asyncio.sleep(0.3)  # the next refresh keeps the asked category's list
        assert cat in app.state.snapshot.categories

        private_redis.stop()
        started = time.monotonic()
        r = await client.get(f"/v1/recommendations/{user}", params={"n": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] is True and body["request_id"]
        assert [x["item_id"] for x in body["items"]] == [i for i, _ in st.popular(5)]
        assert {x["reason"] for x in body["items"]} == {"popular now"}
        r = await client.get(f"/v1/recommendations/{user}", params={"n": 3, "category": cat,
                                                                     "exclude": st.trending(cat, 1)[0][0]})
        assert [x["item_id"] for x in r.json()["items"]] == [i for i, _ in st.trending(cat, 4)[1:]]
        assert {x["reason"] for x in r.json()["items"]} == {f"popular in {cat}"}
        for url in ("/v1/trending", f"/v1/items/{user}/similar"):
            r = await client.get(url)
            assert r.status_code == 200 and r.json()["degraded"] is True and r.json()["items"]
        assert time.monotonic() - started < 5
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        r = await client.get(f"/v1/users/{user}/history")
        assert r.status_code == 503 and r.json()["error"] == "Unavailable"
        metrics = (await client.get("/metrics")).text
        assert 'driftrec_reader_degraded_answers_total{endpoint="recommendations"} 2.0' in metrics

        # Redis back (empty, a fresh server): ready again, answers are live again.
        private_redis.start()
        fill(s)
        r = await client.get("/readyz")
        assert r.status_code == 200
        r = await client.get(f"/v1/recommendations/{user}")
        assert r.json()["degraded"] is False


async def test_a_hung_redis_times_out_into_a_degraded_answer(settings: Settings, private_redis: PrivateRedis) -> None:
    s = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{private_redis.port}/0",
                                    "reader_snapshot_interval_s": 0.1, "reader_redis_timeout_s": 0.3})
    st = fill(s)
    async with reader(s, refresh=True) as (_, client):
        assert (await client.get("/v1/recommendations/x")).json()["degraded"] is False
        private_redis.freeze(True)
        try:
            started = time.monotonic()
            r = await client.get("/v1/recommendations/x", params={"n": 4})
            elapsed = time.monotonic() - started
            assert r.status_code == 200 and r.json()["degraded"] is True
            assert [x["item_id"] for x in r.json()["items"]] == [i for i, _ in st.popular(4)]
            assert elapsed < 2.0
        finally:
            private_redis.freeze(False)
        await asyncio.sleep(0.2)
        r = await client.get("/v1/recommendations/x")
        assert r.status_code == 200 and r.json()["degraded"] is False


def _shed(app: object, reason: str) -> float:
    metrics = app.state.metrics  # type: ignore[attr-defined]
    return sum(metrics.shed.labels(e, reason)._value.get() for e in ("recommendations", "similar"))


async def test_past_max_in_flight_requests_are_answered_at_once_from_memory(
        settings: Settings, private_redis: PrivateRedis) -> None:
    """Overload does not queue: with the slots taken (Redis hung), the next requests are shed."""
    s = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{private_redis.port}/0",
                                    "reader_redis_timeout_s": 3.0, "reader_deadline_s": 5.0,
                                    "reader_max_in_flight": 2})
    st = fill(s)
    async with reader(s) as (app, client):
        assert (await client.get("/v1/recommendations/x")).json()["degraded"] is False
        private_redis.freeze(True)
        try:
            stuck = [asyncio.create_task(client.get(f"/v1/recommendations/u{i}")) for i in range(2)]
            await asyncio.sleep(0.3)  # both hold a slot, waiting on the hung Redis
            assert app.state.metrics is not None and not any(t.done() for t in stuck)
            started = time.monotonic()
            shed = [await client.get(f"/v1/recommendations/v{i}", params={"n": 4}) for i in range(3)]
            shed.append(await client.get("/v1/items/i1/similar", params={"n": 4}))
            elapsed = time.monotonic() - started
            for r in shed:
                assert r.status_code == 200 and r.json()["degraded"] is True
            assert [x["item_id"] for x in shed[0].json()["items"]] == [i for i, _ in st.popular(4)]
            assert elapsed < 0.5, elapsed  # answered at once, not after the Redis timeout
            assert _shed(app, "in_flight") == 4 and _shed(app, "deadline") == 0
        finally:
            private_redis.freeze(False)
        for r in await asyncio.gather(*stuck):
            assert r.status_code == 200
        # The slots are free again: answers are live.
        r = await client.get("/v1/recommendations/x")
        assert r.json()["degraded"] is False
        assert _shed(app, "in_flight") == 4


async def test_a_request_past_the_deadline_is_answered_from_memory(
        settings: Settings, private_redis: PrivateRedis) -> None:
    s = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{private_redis.port}/0",
                                    "reader_redis_timeout_s": 5.0, "reader_deadline_s": 0.3})
    fill(s)
    async with reader(s) as (app, client):
        assert (await client.get("/v1/recommendations/x")).json()["degraded"] is False
        private_redis.freeze(True)
        try:
            started = time.monotonic()
            r = await client.get("/v1/recommendations/x")
            elapsed = time.monotonic() - started
        finally:
            private_redis.freeze(False)
        assert r.status_code == 200 and r.json()["degraded"] is True
        assert 0.3 <= elapsed < 1.5, elapsed  # the deadline, not the 5 s Redis timeout
        assert _shed(app, "deadline") == 1
        await asyncio.sleep(0.2)
        assert (await client.get("/v1/recommendations/x")).json()["degraded"] is False
