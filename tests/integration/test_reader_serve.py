"""``driftrec serve`` as a process (uvicorn, uvloop, httptools): answers, metrics, OpenAPI, models."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
import redis

from driftrec.keys import Keys
from driftrec.settings import Settings
from tests.integration.services import wait_http
from tests.integration.test_reader_support import (
    publish_model,
    reference_state,
    shop_events,
    write_state,
)

pytestmark = pytest.mark.integration


def get(settings: Settings, path: str) -> tuple[int, dict[str, str], bytes]:
    url = f"http://127.0.0.1:{settings.reader_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serve_process_answers_counts_and_switches_models(settings: Settings, spawn: Any) -> None:
    state = reference_state(settings, shop_events(400, seed=5))
    keys = Keys(settings.key_prefix)
    client = redis.Redis.from_url(settings.redis)
    write_state(client, keys, state)
    items = sorted(state.pop)
    publish_model(client, keys, "m1", items, np.random.default_rng(1).normal(size=(len(items), 6)))
    proc = spawn(["serve"])
    wait_http(f"http://127.0.0.1:{settings.reader_port}/readyz", 30, proc)

    user = sorted(state.hist)[0]
    deadline = time.monotonic() + 20
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, headers, raw = get(settings, f"/v1/recommendations/{user}?n=5")
        assert status == 200, raw
        body = json.loads(raw)
        if body["model_version"] == "m1":
            break
        time.sleep(0.1)
    assert body["model_version"] == "m1" and headers["x-request-id"] == body["request_id"]
    assert len(body["items"]) == 5 and not body["degraded"]
    assert not set(state.hist[user]) & {x["item_id"] for x in body["items"]}

    publish_model(client, keys, "m2", items, np.random.default_rng(2).normal(size=(len(items), 6)))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and json.loads(get(settings, f"/v1/recommendations/{user}")[2])["model_version"] != "m2":
        time.sleep(0.1)
    ready = json.loads(get(settings, "/readyz")[2])
    assert ready["status"] == "ready" and ready["model_version"] == "m2"
    client.close()

    status, _, raw = get(settings, "/v1/recommendations/bad%20id")
    assert status == 400 and json.loads(raw)["error"] == "InvalidRequestError"
    status, headers, raw = get(settings, "/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'driftrec_reader_requests_total{endpoint="/v1/recommendations/{user_id}",method="GET",status="200"}' in text
    assert 'driftrec_reader_requests_total{endpoint="/v1/recommendations/{user_id}",method="GET",status="400"} 1.0' in text
    assert 'driftrec_reader_request_seconds_bucket{endpoint="/v1/recommendations/{user_id}",le="0.005"}' in text
    assert 'driftrec_reader_model_version{version="m2"} 1.0' in text
    assert "driftrec_reader_items_served_total" in text
    status, _, raw = get(settings, "/openapi.json")
    doc = json.loads(raw)
    assert status == 200 and "/v1/recommendations/{user_id}" in doc["paths"]
