"""The catalogue's HTTP endpoints without Kafka or Redis: what they produce, what they refuse
(4xx JSON, never 500), API keys, and ``fields=`` / filters on an answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest

from driftrec.catalogue import ItemEvent, encode_item_event, validate_item_event
from driftrec.online.app import create_app
from driftrec.online.errors import Unavailable
from driftrec.online.routes_items import MAX_ITEMS, split_items
from driftrec.settings import Settings


class ListItemSink:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[ItemEvent] = []
        self.fail = fail

    async def send_all(self, events: Sequence[ItemEvent]) -> None:
        if self.fail:
            raise Unavailable("catalogue log unavailable: test")
        self.events.extend(events)

    async def close(self) -> None:
        pass


class NoSink:
    async def send_all(self, events: Sequence[Any]) -> None:
        raise AssertionError("no click event expected")

    async def close(self) -> None:
        pass


def call(app: Any, method: str, url: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reader") as client:
            return await client.request(method, url, **kw)

    return asyncio.run(go())


def app_with(sink: ListItemSink, **settings: Any) -> Any:
    settings.setdefault("allow_anonymous_writes", True)
    # Redis on a port nothing listens on: ranking answers are degraded, from the snapshot.
    s = Settings(redis_url="redis://127.0.0.1:9/0", kafka_bootstrap_servers="127.0.0.1:9", **settings)
    return create_app(s, sink=NoSink(), item_sink=sink, refresh_snapshot=False)


def test_put_produces_one_upsert_under_the_urls_id() -> None:
    sink = ListItemSink()
    r = call(app_with(sink), "PUT", "/v1/items/sku-1", json={"title": "Shoe", "price": 10, "tags": ["a"]})
    assert r.status_code == 202 and r.json() == {"item_id": "sku-1", "op": "upsert", "status": "scheduled"}
    assert [(e.op, e.item_id, e.title, e.price) for e in sink.events] == [("upsert", "sku-1", "Shoe", 10.0)]


def test_delete_produces_a_delete_record() -> None:
    sink = ListItemSink()
    r = call(app_with(sink), "DELETE", "/v1/items/sku-1")
    assert r.status_code == 202 and r.json()["op"] == "delete"
    assert [(e.op, e.item_id) for e in sink.events] == [("delete", "sku-1")]


@pytest.mark.parametrize(("method", "url", "body", "status", "field"), [
    ("PUT", "/v1/items/sku-1", b'{"price": -3}', 422, "price"),
    ("PUT", "/v1/items/sku-1", b'{"item_id": "sku-2"}', 422, "item_id"),
    ("PUT", "/v1/items/sku-1", b'{"op": "delete"}', 422, "op"),
    ("PUT", "/v1/items/sku-1", b'{"colour": "red"}', 422, "colour"),
    ("PUT", "/v1/items/sku-1", b"[1]", 422, None),
    ("PUT", "/v1/items/sku-1", b"not json", 400, None),
    ("PUT", "/v1/items/a%20b", b"{}", 400, None),
    ("DELETE", "/v1/items/%7Bx%7D", b"", 400, None),
    ("POST", "/v1/items", b"[]", 400, None),
    ("POST", "/v1/items", b"{nope", 400, None),
    ("POST", "/v1/items", orjson.dumps([{"item_id": f"i{k}"} for k in range(MAX_ITEMS + 1)]), 413, None),
])
def test_bad_requests_are_json_4xx(method: str, url: str, body: bytes, status: int, field: str | None) -> None:
    sink = ListItemSink()
    r = call(app_with(sink), method, url, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"}
    if field is not None:
        assert r.json()["detail"].startswith(f"{field}:")
    assert sink.events == []


def test_bulk_post_produces_the_valid_ones_and_names_the_rest() -> None:
    sink = ListItemSink()
    body = {"items": [{"item_id": "a", "title": "A"}, {"item_id": "b", "price": "x"},
                      {"op": "delete", "item_id": "c"}, {"item_id": "d", "available": False}]}
    r = call(app_with(sink), "POST", "/v1/items", json=body)
    assert r.status_code == 202
    assert r.json()["accepted"] == 3 and r.json()["errors"] == [{"index": 1, "error": "price: price must be a number",
                                                                 "field": "price"}]
    assert [(e.op, e.item_id, e.available) for e in sink.events] == [
        ("upsert", "a", True), ("delete", "c", True), ("upsert", "d", False)]
    r = call(app_with(sink), "POST", "/v1/items", json=[{"item_id": "a b"}])
    assert r.status_code == 422 and r.json()["accepted"] == 0
    good, errors = split_items({"item_id": "one"})
    assert [e.item_id for e in good] == ["one"] and errors == []


@pytest.mark.parametrize(("method", "url", "kw"), [
    ("PUT", "/v1/items/sku-1", {"json": {"title": "x"}}),
    ("DELETE", "/v1/items/sku-1", {}),
    ("POST", "/v1/items", {"json": [{"item_id": "sku-1"}]}),
])
def test_catalogue_writes_need_a_key_like_every_write(method: str, url: str, kw: dict[str, Any]) -> None:
    sink = ListItemSink()
    r = call(app_with(sink, allow_anonymous_writes=False), method, url, **kw)
    assert r.status_code == 403 and "DRIFTREC_API_KEYS" in r.json()["detail"]
    keyed = app_with(sink, allow_anonymous_writes=False, api_keys=("k1",))
    assert call(keyed, method, url, **kw).status_code == 401
    assert call(keyed, method, url, headers={"x-api-key": "nope"}, **kw).status_code == 401
    assert sink.events == []
    assert call(keyed, method, url, headers={"authorization": "Bearer k1"}, **kw).status_code == 202
    assert len(sink.events) == 1


def test_kafka_down_is_a_503() -> None:
    app = app_with(ListItemSink(fail=True))
    assert call(app, "PUT", "/v1/items/a", json={}).status_code == 503
    assert call(app, "DELETE", "/v1/items/a").json()["error"] == "Unavailable"


def _loaded(app: Any, *records: dict[str, Any]) -> None:
    view = app.state.catalogue
    for rec in records:
        event = validate_item_event(rec)
        view._put(event.item_id, encode_item_event(event))


def test_get_item_reads_the_readers_view() -> None:
    app = app_with(ListItemSink())
    assert call(app, "GET", "/v1/items/a").status_code == 404
    _loaded(app, {"item_id": "a", "title": "A", "available": False}, {"op": "delete", "item_id": "b"})
    got = call(app, "GET", "/v1/items/a").json()
    assert got["title"] == "A" and got["hidden"] and not got["deleted"] and got["price"] is None
    assert call(app, "GET", "/v1/items/b").json()["deleted"]
    text = call(app, "GET", "/metrics").text
    assert 'driftrec_reader_catalogue_items{state="all"} 2.0' in text
    assert 'driftrec_reader_catalogue_items{state="hidden"} 2.0' in text
    assert "driftrec_reader_catalogue_age_seconds -1.0" in text  # never polled (no Redis here)


def test_answers_carry_fields_and_obey_filters_and_hide_unavailable_items() -> None:
    app = app_with(ListItemSink())
    app.state.snapshot.popular = [("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0)]
    _loaded(app, {"item_id": "a", "available": False},
            {"item_id": "b", "title": "Bee", "price": 5, "image_url": "https://s/b.jpg", "tags": ["sale"]},
            {"item_id": "c", "title": "Sea", "price": 50, "tags": ["sale"]})
    # Redis is down here: every ranking endpoint answers from the snapshot (degraded).
    for url in ("/v1/trending", "/v1/recommendations/u1", "/v1/items/x/similar"):
        r = call(app, "GET", url, params={"n": 3, "fields": "title,price,image_url"})
        assert r.status_code == 200 and r.json()["degraded"], r.text
        items = r.json()["items"]
        assert [x["item_id"] for x in items] == ["b", "c", "d"]
        assert items[0]["title"] == "Bee" and items[0]["price"] == 5.0 and items[0]["image_url"] == "https://s/b.jpg"
        assert items[2]["title"] is None and "tags" not in items[0]
        r = call(app, "GET", url, params={"tag": "sale", "price_max": "10"})
        assert [x["item_id"] for x in r.json()["items"]] == ["b"]
    for params in ({"fields": "title,colour"}, {"price_min": "5", "price_max": "1"}, {"price_max": "cheap"},
                   {"tag": ""}):
        r = call(app, "GET", "/v1/trending", params=params)
        assert r.status_code == 400 and set(r.json()) == {"error", "detail"}, (params, r.text)


def test_with_titles_a_reason_names_the_item_it_refers_to_by_its_title() -> None:
    from types import SimpleNamespace

    from driftrec.keys import Keys
    from driftrec.online.catalogue import CatalogueView
    from driftrec.online.routes_recs import _add_fields

    view = CatalogueView(None, Keys())
    for rec in ({"item_id": "m1", "title": "Toy Story (1995)"}, {"item_id": "m2", "title": "Heat (1995)"},
                {"item_id": "m3"}):
        event = validate_item_event(rec)
        view._put(event.item_id, encode_item_event(event))
    reasons = ["because you viewed m1", "often viewed with m2", "liked by the same shoppers as m1",
               "because you viewed m3", "because you viewed m9", "popular in m1", "matches your taste"]
    body: dict[str, Any] = {"items": [{"item_id": "m2", "reason": r} for r in reasons]}
    _add_fields(body, ("title",), SimpleNamespace(catalogue=view))  # type: ignore[arg-type]
    assert [x["reason"] for x in body["items"]] == [
        "because you viewed Toy Story (1995)", "often viewed with Heat (1995)",
        "liked by the same shoppers as Toy Story (1995)", "because you viewed m3", "because you viewed m9",
        "popular in m1", "matches your taste"]
    assert body["items"][0]["title"] == "Heat (1995)"
    body = {"items": [{"item_id": "m2", "reason": "because you viewed m1"}]}
    _add_fields(body, ("price",), SimpleNamespace(catalogue=view))  # type: ignore[arg-type]
    assert body["items"][0] == {"item_id": "m2", "reason": "because you viewed m1", "price": None}
