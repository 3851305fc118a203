"""The exporter's /api/shopper and /dashboard/shopper without a broker: the reader is an httpx stand-in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import unquote

import httpx
import pytest
from starlette.testclient import TestClient

from driftrec.oncall.exporter import Exporter, ExporterConfig
from driftrec.oncall.web import create_app
from driftrec.settings import Settings

Handler = Callable[[httpx.Request], httpx.Response]
_READER = "http://reader.test"


def _reader(request: httpx.Request) -> httpx.Response:
    """A reader that knows shopper u1 (two clicks, two recommendations) and no one else."""
    path = unquote(request.url.path)
    if "/v1/users/" in path and path.endswith("/history"):
        user = path[len("/v1/users/"):-len("/history")]
        assert request.url.params["fields"] == "title,price"
        items = [{"item_id": "m-2", "timestamp": 200.0, "category": "drama", "title": "Heat (1995)", "price": 4.5},
                 {"item_id": "sku-x", "timestamp": 100.0, "category": None, "title": None, "price": None}]
        return httpx.Response(200, json={"user_id": user, "items": items if user == "u1" else [], "categories": []})
    if path.startswith("/v1/recommendations/"):
        assert request.url.params["strategy"] == "blend"  # never enrolled in an experiment
        items = [{"item_id": "m-3", "score": 0.9, "reason": "because you viewed Heat (1995)", "source": "item_item",
                  "title": "Casino (1995)", "price": 3.0},
                 {"item_id": "m-4", "score": 0.2, "reason": "popular", "source": "popular", "title": None,
                  "price": None}]
        return httpx.Response(200, json={"request_id": "r", "model_version": "v7", "degraded": False,
                                         "user_id": path.rsplit("/", 1)[-1], "strategy": "blend", "items": items})
    return httpx.Response(404, json={"error": "not_found", "detail": path})


def _client(handler: Handler | None, reader_url: str | None = _READER) -> Iterator[TestClient]:
    s = Settings(redis_url="redis://127.0.0.1:9/0", kafka_bootstrap_servers="127.0.0.1:9")
    exporter = Exporter(s, ExporterConfig(groups=("g",), reader_url=reader_url, canary=False, attribution=False))
    if handler is not None:
        exporter.http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    # No `with`: the lifespan (the exporter's loops against Kafka and Redis) is not started.
    yield TestClient(create_app(exporter), raise_server_exceptions=False)


@pytest.fixture()
def client() -> Iterator[TestClient]:
    yield from _client(_reader)


def test_shopper_answer_has_titled_clicks_and_recommendations(client: TestClient) -> None:
    resp = client.get("/api/shopper", params={"user": "u1"})
    assert resp.status_code == 200
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["user_id"] == "u1" and body["model_version"] == "v7" and body["degraded"] is False
    assert [(c["item_id"], c["title"], c["category"]) for c in body["clicks"]] == [
        ("m-2", "Heat (1995)", "drama"), ("sku-x", None, None)]
    assert [(r["title"], r["price"], r["reason"], r["source"]) for r in body["recommendations"]] == [
        ("Casino (1995)", 3.0, "because you viewed Heat (1995)", "item_item"), (None, None, "popular", "popular")]


def test_unknown_shopper_is_an_empty_answer_not_an_error(client: TestClient) -> None:
    resp = client.get("/api/shopper", params={"user": "nobody"})
    assert resp.status_code == 200 and resp.json()["clicks"] == []


@pytest.mark.parametrize("query", [{}, {"user": ""}, {"user": "a b"}, {"user": "x" * 129}, {"user": "u1\n"},
                                   {"user": "{tag}"}, {"user": "é"}])
def test_bad_shopper_id_is_a_400_json(client: TestClient, query: dict[str, str]) -> None:
    resp = client.get("/api/shopper", params=query)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_request" and "user" in resp.json()["detail"]


def test_reader_refusal_keeps_its_4xx() -> None:
    def refuses(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": "invalid_request", "detail": "user_id: no"})

    client = next(_client(refuses))
    resp = client.get("/api/shopper", params={"user": "u1"})
    assert resp.status_code == 422 and resp.json() == {"error": "invalid_request", "detail": "user_id: no"}


@pytest.mark.parametrize("failure", ["down", "500", "garbage"])
def test_reader_failure_is_a_502_json_never_a_500(failure: str) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        if failure == "down":
            raise httpx.ConnectError("refused", request=request)
        if failure == "500":
            return httpx.Response(500, text="boom")
        return httpx.Response(200, content=b"<html>not json")

    resp = next(_client(broken)).get("/api/shopper", params={"user": "u1"})
    assert resp.status_code == 502 and resp.json()["error"] in {"reader_unreachable", "reader_error"}


def test_no_reader_configured_is_a_503_json() -> None:
    resp = next(_client(None, reader_url=None)).get("/api/shopper", params={"user": "u1"})
    assert resp.status_code == 503 and resp.json()["error"] == "no_reader"


def test_ids_with_slashes_reach_the_reader_as_one_path_segment() -> None:
    seen: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return _reader(request)

    resp = next(_client(record)).get("/api/shopper", params={"user": "shop/u1"})
    assert resp.status_code == 200
    assert any(p.startswith("/v1/users/shop%2Fu1/history") for p in seen), seen


def test_shopper_page_is_served_and_linked_from_the_dashboard(client: TestClient) -> None:
    page = client.get("/dashboard/shopper")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="user"' in page.text and "/api/shopper?user=" in page.text
    assert 'href="/dashboard/shopper"' in client.get("/dashboard").text



def test_reader_history_checks_fields_before_reading_redis() -> None:
    """The page asks the reader's history for ``fields=title,price``; a bad name is a 400 there too."""
    from driftrec.online.app import create_app as reader_app

    class NoSink:
        async def send_all(self, events: object) -> None:
            raise AssertionError("nothing is produced")

        async def close(self) -> None:
            pass

    s = Settings(redis_url="redis://127.0.0.1:9/0", kafka_bootstrap_servers="127.0.0.1:9")
    app = reader_app(s, sink=NoSink(), item_sink=NoSink(), refresh_snapshot=False)  # type: ignore[arg-type]
    resp = TestClient(app, raise_server_exceptions=False).get("/v1/users/u1/history", params={"fields": "colour"})
    assert resp.status_code == 400 and "fields" in resp.json()["detail"]
