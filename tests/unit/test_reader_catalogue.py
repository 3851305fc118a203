"""The reader's catalogue view and the answers it filters, without Redis: an in-memory stand-in
for the few commands the view sends (XREVRANGE, XRANGE, HSCAN, HMGET) follows the worker's
layout (P:{g}:items, P:{g}:items:feed with running numbers ``v``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from driftrec.catalogue import ItemFilter, encode_item_event, validate_item_event
from driftrec.keys import Keys
from driftrec.models.decay import DecayPolicy
from driftrec.online.catalogue import CatalogueView
from driftrec.online.recommender import Recommender
from driftrec.online.snapshot import TrendingSnapshot
from driftrec.online.store import Meta
from driftrec.settings import Settings

K = Keys("t")


class FeedStore:
    """The worker's catalogue keys in memory, with the reply shapes of redis-py (text)."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}
        self.feed: list[tuple[str, dict[str, str]]] = []
        self.v = 0
        self.calls: list[str] = []

    def change(self, **item: Any) -> None:
        event = validate_item_event(item)
        self.items[event.item_id] = encode_item_event(event).decode()
        self.v += 1
        self.feed.append((f"{self.v}-0", {"i": event.item_id, "v": str(self.v)}))

    async def xrevrange(self, key: str, count: int) -> list[tuple[str, dict[str, str]]]:
        self.calls.append("XREVRANGE")
        return self.feed[-count:][::-1]

    async def xrange(self, key: str, min: str, count: int) -> list[tuple[str, dict[str, str]]]:
        self.calls.append("XRANGE")
        after = int(min.lstrip("(").split("-")[0])
        return [e for e in self.feed if int(e[0].split("-")[0]) > after][:count]

    async def hscan(self, key: str, cursor: int, count: int) -> tuple[int, dict[str, str]]:
        self.calls.append("HSCAN")
        return 0, dict(self.items)

    async def hmget(self, key: str, ids: list[str]) -> list[str | None]:
        self.calls.append("HMGET")
        return [self.items.get(i) for i in ids]


def test_the_view_follows_the_feed_and_reloads_when_it_jumps() -> None:
    store = FeedStore()
    store.change(item_id="a", title="A", price=5.0, tags=["x"])
    store.change(item_id="b", available=False)
    view = CatalogueView(store, K, batch=2)
    asyncio.run(view.refresh())  # first call: a whole load
    assert set(view.items) == {"a", "b"} and view.hidden == {"b"} and view.version == 2
    store.calls.clear()
    assert asyncio.run(view.refresh()) == 0 and store.calls == ["XRANGE"]  # nothing new: one command
    store.change(item_id="b", available=True)
    store.change(item_id="a", available=False)
    store.change(op="delete", item_id="c")
    assert asyncio.run(view.refresh()) == 3  # two XRANGE calls of at most 2 entries
    assert view.hidden == {"a", "c"} and view.items["c"].deleted and view.version == 5
    # Entries trimmed away (the reader fell behind): the next number is not v + 1 -> reload.
    store.change(item_id="d")
    store.change(item_id="e", available=False)
    del store.feed[-2]
    store.calls.clear()
    asyncio.run(view.refresh())
    assert "HSCAN" in store.calls and view.loads == 2
    assert set(view.items) == {"a", "b", "c", "d", "e"} and view.hidden == {"a", "c", "e"}


def test_a_reload_swaps_the_view_in_whole() -> None:
    store = FeedStore()
    store.change(item_id="a", available=False)
    view = CatalogueView(store, K)
    asyncio.run(view.load())
    before = view.hidden
    store.change(item_id="z", available=False)
    asyncio.run(view.load())
    assert view.hidden is not before and view.hidden == {"a", "z"} and before == {"a"}


def test_hidden_among_and_fields() -> None:
    store = FeedStore()
    store.change(item_id="a", title="A", price=5.0, tags=["x"], image_url="https://s/a.jpg")
    store.change(item_id="b", price=50.0, tags=["x"])
    store.change(item_id="c", available=False, tags=["x"])
    view = CatalogueView(store, K)
    asyncio.run(view.refresh())
    ids = ["a", "b", "c", "unknown"]
    assert view.hidden_among(ids) == {"c"}
    assert view.hidden_among(ids, ItemFilter(tag="x")) == {"c", "unknown"}
    assert view.hidden_among(ids, ItemFilter(price_max=10)) == {"b", "c", "unknown"}
    assert view.fields("a", ["title", "price", "image_url"]) == {"title": "A", "price": 5.0, "image_url": "https://s/a.jpg"}
    assert view.fields("unknown", ["title"]) == {"title": None}
    assert view.overfetch(10) == 1 and view.overfetch(10, ItemFilter(tag="x")) == 31
    assert CatalogueView(None, K).overfetch(10) == 0


class TrendStore:
    """What Recommender.trending reads: meta and a list."""

    keys = K

    def __init__(self, top: list[tuple[str, float]]) -> None:
        self.top = top

    async def trending(self, key: str, n: int) -> tuple[Meta, list[tuple[str, float]]]:
        return Meta(0.0, 0.0), self.top[:n]


def _recommender(top: list[tuple[str, float]], view: CatalogueView) -> Recommender:
    s = Settings(redis_url="redis://127.0.0.1:9/0", kafka_bootstrap_servers="127.0.0.1:9")
    store = TrendStore(top)
    snapshot = TrendingSnapshot(cast(Any, store), DecayPolicy(s.half_life_s), n_items=100)
    snapshot.popular = list(top)
    models = SimpleNamespace(version=None)
    return Recommender(s, cast(Any, store), cast(Any, models), snapshot, cast(Any, None), catalogue=view)


@pytest.mark.parametrize("degraded", [False, True])
def test_trending_and_degraded_answers_never_show_hidden_items_and_still_give_n(degraded: bool) -> None:
    store = FeedStore()
    top = [(f"i{k}", float(100 - k)) for k in range(20)]
    for k in (0, 2, 3):
        store.change(item_id=f"i{k}", available=False)
    store.change(op="delete", item_id="i1")
    store.change(item_id="i5", price=9.0, tags=["sale"])
    store.change(item_id="i9", price=90.0, tags=["sale"])
    view = CatalogueView(store, K)
    asyncio.run(view.refresh())
    rec = _recommender(top, view)

    def answer(n: int, rule: ItemFilter | None = None) -> list[str]:
        if degraded:
            return [x.item for x in rec.degraded(n, None, set(), rule).items]
        return [x.item for x in asyncio.run(rec.trending(n, None, (), rule)).items]

    assert answer(4) == ["i4", "i5", "i6", "i7"]  # four hidden at the top, four still shown
    assert answer(5, ItemFilter(tag="sale")) == ["i5", "i9"]
    assert answer(5, ItemFilter(tag="sale", price_max=10)) == ["i5"]
    store.change(item_id="i0", available=True)
    asyncio.run(view.refresh())
    assert answer(2) == ["i0", "i4"]  # available again: back in its place


def test_without_a_catalogue_nothing_is_hidden() -> None:
    top = [(f"i{k}", float(10 - k)) for k in range(5)]
    rec = _recommender(top, CatalogueView(None, K))
    assert [x.item for x in asyncio.run(rec.trending(3, None)).items] == ["i0", "i1", "i2"]
