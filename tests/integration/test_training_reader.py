"""A publish under a running reader (`driftrec serve`): no failed request, the new version in the answers."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import redis

from driftrec.keys import Keys
from driftrec.models.decay import DecayPolicy
from driftrec.publisher import Publisher as EventPublisher
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.training.clicklog import read_topic
from driftrec.training.matrix import build_interactions
from driftrec.training.runner import TrainConfig, make_publisher, train_once
from driftrec.userstate import encode_state
from tests.integration.services import wait_http

pytestmark = pytest.mark.integration

PARAMS = {"als": {"factors": 8, "iterations": 5, "regularization": 1.0, "alpha": 2.0, "num_threads": 1},
          "tf": {"hidden": [16], "epochs": 3, "batch_size": 64, "learning_rate": 1e-2}}


def _write_user_state(s: Settings, users: list[str]) -> None:
    """What the worker would hold for these users: decayed item weights and the stream clock."""
    data = build_interactions(read_topic(s), DecayPolicy(s.half_life_s))
    keys = Keys(s.key_prefix)
    client = redis.Redis.from_url(s.redis)
    pipe = client.pipeline(transaction=False)
    # landmark = last event time: a stored forward score then equals the decayed weight
    pipe.hset(keys.meta, mapping={"landmark": repr(data.until), "last_event_time": repr(data.until)})
    m = data.matrix
    row_of = {u: r for r, u in enumerate(data.user_ids)}
    for user in users:
        r = row_of[user]
        items = {data.item_ids[j]: float(w) for j, w in zip(m.indices[m.indptr[r]:m.indptr[r + 1]],
                                                            m.data[m.indptr[r]:m.indptr[r + 1]], strict=True)}
        pipe.hset(keys.user_state(user), mapping=encode_state({}, items))  # weights only, as after a trim
    pipe.execute()
    client.close()


def test_publish_under_a_running_reader(settings: Settings, spawn: Any) -> None:
    sim = ShopSimulator(n_users=80, n_items=250, n_categories=5, seed=12, start_time=1.7e9, id_prefix="r")
    events = list(itertools.islice(sim.events(2500), 2500))

    async def send() -> None:
        async with EventPublisher(settings) as pub:
            for e in events:
                await pub.send(e)
            await pub.flush()

    asyncio.run(send())
    config = TrainConfig(models=("als", "tf"), params=PARAMS, seed=1)
    v1 = train_once(settings, config, echo=lambda _: None).version
    users = sorted({e["user_id"] for e in events})[:30]
    _write_user_state(settings, users)

    reader = spawn(["serve"])
    base = f"http://127.0.0.1:{settings.reader_port}"
    wait_http(f"{base}/readyz", 30, reader)

    statuses: Counter[int] = Counter()
    answers: list[tuple[float, str | None, frozenset[str]]] = []
    stop = threading.Event()

    def hammer(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            for n in itertools.count(offset):
                if stop.is_set():
                    return
                r = client.get(f"/v1/recommendations/{users[n % len(users)]}", params={"n": 10})
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    body = r.json()
                    answers.append((time.monotonic(), body["model_version"],
                                    frozenset(x["source"] for x in body["items"])))

    threads = [threading.Thread(target=hammer, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(v == v1 for _, v, _ in answers):
        time.sleep(0.05)
    assert any(v == v1 for _, v, _ in answers), reader.tail()

    # v2: another seed, no gate (the gate would keep v1: nothing new happened)
    v2 = train_once(settings, TrainConfig(models=("als", "tf"), params=PARAMS, seed=2, gate=False),
                    echo=lambda _: None).version
    assert v2 and v2 != v1 and make_publisher(settings).live_version() == v2
    switched_at = time.monotonic()
    deadline = switched_at + 20
    while time.monotonic() < deadline and not any(v == v2 for _, v, _ in answers[-20:]):
        time.sleep(0.05)
    time.sleep(1.5)  # keep hammering the new version for a moment
    stop.set()
    for t in threads:
        t.join(15)

    assert set(statuses) == {200}, (statuses, reader.tail())
    assert sum(statuses.values()) > 100
    seen = [v for _, v, _ in answers]
    # None only while the reader loads its first model at start-up, never again
    first = seen.index(v1)
    assert set(seen[:first]) <= {None} and set(seen[first:]) <= {v1, v2} and v2 in seen, Counter(seen)
    # once an answer carried v2, the reader never went back (a request in flight at the swap aside)
    v2_from = next(t for t, v, _ in answers if v == v2)
    tail = [v for t, v, _ in answers if t > v2_from + 0.5]
    assert len(tail) > 10 and set(tail) == {v2}, Counter(tail)
    # the published model answered: its user-vector and TF sources are in the lists
    sources = set().union(*(s for _, v, s in answers if v == v2))
    assert {"user_vector", "tf"} <= sources, sources
