"""The reader's HTTP layer without Redis or Kafka: events, API keys, limits, errors, OpenAPI, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest
from starlette.routing import Route

from driftrec.events import TOMBSTONE_TYPE, ClickEvent
from driftrec.online.app import create_app
from driftrec.online.errors import Unavailable
from driftrec.online.routes_events import MAX_EVENTS, split_batch
from driftrec.settings import Settings


class ListSink:
    """Collects what the reader would produce to Kafka."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[ClickEvent] = []
        self.fail = fail

    async def send_all(self, events: Sequence[ClickEvent]) -> None:
        if self.fail:
            raise Unavailable("event log unavailable: test")
        self.events.extend(events)

    async def close(self) -> None:
        pass


def ev(i: int = 0, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "user_id": "u1", "item_id": f"i{i}", "type": "view", "timestamp": 1.7e9 + i, **kw}


def call(app: Any, method: str, url: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reader") as client:
            return await client.request(method, url, **kw)

    return asyncio.run(go())


def app_with(sink: ListSink, **settings: Any) -> Any:
    # Redis on a port nothing listens on: these routes never read it.
    settings.setdefault("allow_anonymous_writes", True)
    s = Settings(redis_url="redis://127.0.0.1:9/0", kafka_bootstrap_servers="127.0.0.1:9", **settings)
    return create_app(s, sink=sink, refresh_snapshot=False)


def test_split_batch_shapes_and_errors() -> None:
    allowed = frozenset({"view"})
    good, errors = split_batch(ev(1), allowed)
    assert [e.event_id for e in good] == ["e1"] and errors == []
    good, errors = split_batch({"events": [ev(1), ev(2, type="teleport"), ev(3, user_id="a b")]}, allowed)
    assert [e.event_id for e in good] == ["e1"]
    assert [(e["index"], e["field"]) for e in errors] == [(1, "type"), (2, "user_id")]
    good, errors = split_batch([ev(1, type=TOMBSTONE_TYPE, item_id="")], allowed)
    assert good == [] and errors[0]["field"] == "type"


def test_post_events_produces_the_valid_ones() -> None:
    sink = ListSink()
    r = call(app_with(sink), "POST", "/v1/events", json=[ev(1), ev(2, type="nope"), ev(3)])
    assert r.status_code == 202
    assert r.json()["accepted"] == 2 and r.json()["rejected"] == 1
    assert [e.event_id for e in sink.events] == ["e1", "e3"]
    r = call(app_with(sink), "POST", "/v1/events", json=[ev(4, type="nope")])
    assert r.status_code == 422 and r.json()["accepted"] == 0


@pytest.mark.parametrize("body,status", [
    (b"not json", 400), (b"[]", 400), (b"{}", 422), (b"42", 422),
    (orjson.dumps([ev(i) for i in range(MAX_EVENTS + 1)]), 413),
])
def test_bad_bodies(body: bytes, status: int) -> None:
    r = call(app_with(ListSink()), "POST", "/v1/events", content=body,
             headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert "error" in r.json() or "errors" in r.json()


def test_body_size_limit_with_and_without_content_length() -> None:
    sink = ListSink()
    app = app_with(sink, max_request_bytes=2048)
    big = orjson.dumps([ev(i, properties={"pad": "x" * 200}) for i in range(20)])
    assert len(big) > 2048
    assert call(app, "POST", "/v1/events", content=big).status_code == 413

    async def chunks():  # type: ignore[no-untyped-def]
        for k in range(0, len(big), 500):
            yield big[k:k + 500]

    r = call(app, "POST", "/v1/events", content=chunks())  # chunked: no Content-Length
    assert r.status_code == 413 and sink.events == []


def test_api_keys_guard_writes() -> None:
    sink = ListSink()
    app = app_with(sink, api_keys=("k-one", "k-two"))
    assert call(app, "POST", "/v1/events", json=ev(1)).status_code == 401
    assert call(app, "POST", "/v1/events", json=ev(1), headers={"x-api-key": "k-on"}).status_code == 401
    assert call(app, "POST", "/v1/events", json=ev(1), headers={"x-api-key": "k-two"}).status_code == 202
    assert call(app, "POST", "/v1/events", json=ev(2),
                headers={"authorization": "Bearer k-one"}).status_code == 202
    assert call(app, "DELETE", "/v1/users/u9").status_code == 401
    r = call(app, "DELETE", "/v1/users/u9", headers={"x-api-key": "k-one"})
    assert r.status_code == 202
    tomb = sink.events[-1]
    assert (tomb.type, tomb.user_id, tomb.item_id) == (TOMBSTONE_TYPE, "u9", "")
    assert r.json()["event_id"] == tomb.event_id


def test_kafka_down_is_a_503() -> None:
    app = app_with(ListSink(fail=True))
    r = call(app, "POST", "/v1/events", json=ev(1))
    assert r.status_code == 503 and r.json()["error"] == "Unavailable"
    assert call(app, "DELETE", "/v1/users/u1").status_code == 503


def test_routing_errors_are_json() -> None:
    app = app_with(ListSink())
    for method, url, status in [("GET", "/nope", 404), ("PUT", "/v1/events", 405), ("GET", "/v1/trending/", 404),
                                ("GET", "/v1/recommendations/a%20b", 400),
                                ("DELETE", "/v1/users/%7Bx%7D", 400)]:
        r = call(app, method, url)
        assert r.status_code == status and set(r.json()) == {"error", "detail"}


def test_openapi_documents_every_route() -> None:
    app = app_with(ListSink())
    doc = call(app, "GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    routes = {r.path.replace(":path}", "}"): set(r.methods or ()) - {"HEAD"}
              for r in app.routes if isinstance(r, Route)}
    documented = {p: {m.upper() for m in ops} for p, ops in doc["paths"].items()}
    assert routes == documented


def test_metrics_count_requests_by_route_and_status() -> None:
    app = app_with(ListSink())
    call(app, "GET", "/v1/recommendations/a%20b")
    call(app, "POST", "/v1/events", json=ev(1))
    text = call(app, "GET", "/metrics").text
    assert 'driftrec_reader_requests_total{endpoint="/v1/recommendations/{user_id}",method="GET",status="400"} 1.0' in text
    assert 'driftrec_reader_request_seconds_bucket{endpoint="/v1/events",le="0.005"}' in text
    assert 'driftrec_reader_ingested_events_total{outcome="accepted"} 1.0' in text


@pytest.mark.parametrize("method, url, kw", [
    ("POST", "/v1/events", {"json": [ev(1)]}),
    ("DELETE", "/v1/users/u1", {}),
])
def test_writes_are_refused_without_a_key_unless_anonymous_writes_are_allowed(
        method: str, url: str, kw: dict[str, Any]) -> None:
    sink = ListSink()
    r = call(app_with(sink, allow_anonymous_writes=False), method, url, **kw)
    assert r.status_code == 403 and "DRIFTREC_API_KEYS" in r.json()["detail"]
    assert sink.events == []  # nothing produced
    # A configured key opens them (whatever allow_anonymous_writes says) ...
    r = call(app_with(sink, allow_anonymous_writes=False, api_keys=("k1",)), method, url,
             headers={"X-API-Key": "k1"}, **kw)
    assert r.status_code in (200, 202) and len(sink.events) == 1
    # ... and so does the explicit setting, which the demo and the tests use.
    r = call(app_with(sink, allow_anonymous_writes=True), method, url, **kw)
    assert r.status_code in (200, 202) and len(sink.events) == 2
