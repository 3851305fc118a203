"""Helpers of the reader's integration tests (no tests here): a reference state, written to Redis.

The reference is :class:`driftrec.models.online.InMemoryState` fed simulator clicks; :func:`write_state`
stores it in the worker's key layout, so the reader's answers can be compared with
:func:`driftrec.models.blend.blend` run on the same state.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import redis

from driftrec.events import ClickEvent, validate_event
from driftrec.keys import Keys
from driftrec.models.online import EventView, InMemoryState
from driftrec.online.app import create_app, create_store
from driftrec.online.errors import Unavailable
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.userstate import encode_state

__all__ = ["shop_events", "reference_state", "write_state", "reader", "ListSink", "npy", "publish_model"]


def shop_events(n: int = 800, *, users: int = 30, items: int = 60, categories: int = 4,
                seed: int = 3) -> list[dict[str, Any]]:
    sim = ShopSimulator(n_users=users, n_items=items, n_categories=categories, seed=seed)
    return list(itertools.islice(sim.events(n), n))


def views(events: Sequence[dict[str, Any]]) -> list[EventView]:
    out = []
    for offset, raw in enumerate(events):
        e = validate_event(raw, ("view", "add_to_cart", "purchase", "forget_user"))
        out.append(EventView(e.user_id, e.item_id, e.type, e.timestamp, e.category, offset, 0))
    return out


def reference_state(settings: Settings, events: Sequence[dict[str, Any]], batch: int = 100,
                    landmark: float | None = None) -> InMemoryState:
    """The oracle fed ``events``; from ``landmark`` (a worker's) when given, so that its
    fixed-point increments are the worker's own, else from the first batch's (moved there)."""
    state = InMemoryState.from_settings(settings, user_cats_k=32, user_items_k=settings.history_len,
                                        **({} if landmark is None else {"landmark": landmark}))
    vs = views(events)
    for start in range(0, len(vs), batch):
        state.process(vs[start:start + batch])
    return state


def write_state(client: redis.Redis, keys: Keys, state: InMemoryState) -> None:
    """Store ``state`` in the worker's key layout (``docs/redis-keys.md``)."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.meta, mapping={"landmark": repr(state.landmark),
                                  "last_event_time": repr(state.last_event_time)})
    if state.pop:
        pipe.zadd(keys.popularity, state.pop)
    for cat, row in state.trend.items():
        pipe.zadd(keys.trending(cat), row)
    for item, row in state.cooc.items():
        if row:
            pipe.zadd(keys.item_nbrs(item), row)
    for user in state.user_items.keys() | state.hist.keys():
        row = encode_state(state.hist.get(user, {}), state.user_items.get(user, {}))
        if row:
            pipe.hset(keys.user_state(user), mapping=row)  # type: ignore[arg-type]
    for user, row in state.user_cats.items():
        if row:
            pipe.zadd(keys.user_cats(user), row)
    if state.item_cat:
        pipe.hset(keys.item_category, mapping=state.item_cat)
    pipe.execute()


class ListSink:
    """Collects what the reader would produce to Kafka (for tests that are not about Kafka)."""

    def __init__(self) -> None:
        self.events: list[ClickEvent] = []

    async def send_all(self, events: Sequence[ClickEvent]) -> None:
        if any(e.user_id == "kafka-down" for e in events):
            raise Unavailable("event log unavailable: test")
        self.events.extend(events)

    async def close(self) -> None:
        pass


@asynccontextmanager
async def reader(settings: Settings, *, sink: Any = None, refresh: bool = False,
                 redis_py_only: bool = False) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The reader app in-process (lifespan run) and an HTTP client on it.

    ``redis_py_only`` leaves out the raw RESP pool, as for URLs it does not handle (TLS, cluster).
    """
    store = create_store(settings)
    if redis_py_only:
        store.fast = None
    app = create_app(settings, store, sink=sink if sink is not None else ListSink(), refresh_snapshot=refresh)
    async with app.router.lifespan_context(app):
        await app.state.snapshot.refresh()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reader") as client:
            yield app, client


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def publish_model(client: redis.Redis, keys: Keys, version: str, item_ids: Sequence[str], Y: np.ndarray,
                  *, user_ids: Sequence[str] = (), U: np.ndarray | None = None,
                  tf: Sequence[tuple[np.ndarray, np.ndarray]] = (), extra: dict[str, bytes] | None = None) -> None:
    """Publish a version in the format of ``online/model_cache.py`` and make it current."""
    parts: dict[str, bytes] = {"item_ids": "\n".join(item_ids).encode(), "item_factors": npy(Y.astype(np.float32))}
    if U is not None:
        parts["user_ids"] = "\n".join(user_ids).encode()
        parts["user_factors"] = npy(U.astype(np.float32))
    if tf:
        parts["tf_n_layers"] = npy(np.array([len(tf)], np.int32))
        for i, (w, b) in enumerate(tf):
            parts[f"tf_layer{i}_weight"] = npy(w.astype(np.float32))
            parts[f"tf_layer{i}_bias"] = npy(b.astype(np.float32))
    parts.update(extra or {})
    pipe = client.pipeline(transaction=False)
    for part, blob in parts.items():
        pipe.set(keys.model_blob(version, part), blob)
    pipe.set(keys.model_current, version)
    pipe.execute()


async def wait_for(predicate: Any, timeout: float = 10.0, every: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(every)
    raise AssertionError("condition not reached in time")
