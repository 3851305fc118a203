"""The reader's snapshot reads the popularity list in pages (online/store.py ReaderStore.snapshot):
the same list as one read, no single command longer than a page, and never two decay scales mixed."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from driftrec.keys import Keys
from driftrec.online.app import create_store
from driftrec.online.store import RescaleInProgress
from driftrec.settings import Settings

pytestmark = pytest.mark.integration


def fill(rds: redis.Redis, settings: Settings, n: int, landmark: float = 1000.0) -> list[tuple[str, float]]:
    keys = Keys(settings.key_prefix)
    rds.hset(keys.meta, mapping={"landmark": landmark, "last_event_time": landmark + 5})
    items = [(f"i{j}", float(10 * n - j)) for j in range(n)]  # distinct scores: one order
    rds.zadd(keys.popularity, dict(items))
    rds.zadd(keys.trending("shoes"), {"i1": 3.0, "i2": 2.0})
    return items


async def test_pages_give_the_whole_list_in_order(settings: Settings, rds: redis.Redis) -> None:
    items = fill(rds, settings, 2_500)
    store = create_store(settings)
    try:
        for n_items, page in ((20_000, 1000), (1_500, 1000), (2_000, 1000), (2_500, 2_500), (3, 1000)):
            meta, pop, lists = await store.snapshot(n_items, ["shoes"], 200, page=page)
            assert pop == items[:n_items], (n_items, page)
            assert meta.landmark == 1000.0 and meta.last_event_time == 1005.0
            assert lists == {"shoes": [("i1", 3.0), ("i2", 2.0)]}
    finally:
        await store.aclose()


async def test_no_popularity_command_reads_more_than_a_page(settings: Settings, rds: redis.Redis) -> None:
    fill(rds, settings, 2_500)
    store = create_store(settings)
    ranges: list[tuple[int, int]] = []
    run = store._run

    async def spy(commands: list[list[Any]], binary: frozenset[int] = frozenset()) -> list[Any]:
        ranges.extend((int(c[2]), int(c[3])) for c in commands
                      if c[0] == "ZREVRANGE" and c[1] == store.keys.popularity)
        return await run(commands, binary)

    store._run = spy  # type: ignore[method-assign]
    try:
        _, pop, _ = await store.snapshot(20_000, [], 200, page=1000)
    finally:
        await store.aclose()
    assert len(pop) == 2_500
    assert ranges == [(0, 999), (1000, 1999), (2000, 2999)]


async def test_a_rescale_between_pages_restarts_the_read(settings: Settings, rds: redis.Redis) -> None:
    fill(rds, settings, 2_500)
    store = create_store(settings)
    run = store._run
    calls = 0

    async def rescale_once(commands: list[list[Any]], binary: frozenset[int] = frozenset()) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the first page: the worker rescales every stored score by 1/2
            rds.hset(store.keys.meta, "landmark", 2000.0)
            rds.zadd(store.keys.popularity, {f"i{j}": (25_000.0 - j) / 2 for j in range(2_500)})
        return await run(commands, binary)

    store._run = rescale_once  # type: ignore[method-assign]
    try:
        meta, pop, _ = await store.snapshot(20_000, [], 200, page=1000)
    finally:
        await store.aclose()
    assert meta.landmark == 2000.0
    assert pop == [(f"i{j}", (25_000.0 - j) / 2) for j in range(2_500)]  # all on the new scale


async def test_a_landmark_that_never_settles_is_an_error_not_a_mixed_snapshot(settings: Settings, rds: redis.Redis) -> None:
    fill(rds, settings, 2_500)
    store = create_store(settings)
    run = store._run
    landmark = 1000.0

    async def always_moving(commands: list[list[Any]], binary: frozenset[int] = frozenset()) -> list[Any]:
        nonlocal landmark
        landmark += 1
        rds.hset(store.keys.meta, "landmark", landmark)
        return await run(commands, binary)

    store._run = always_moving  # type: ignore[method-assign]
    try:
        with pytest.raises(RescaleInProgress):
            await store.snapshot(20_000, [], 200, page=1000)
    finally:
        await store.aclose()
