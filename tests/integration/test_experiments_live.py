"""Online experiments on the real stack: defined through the reader's admin endpoint, answers name
the shopper's sticky variant, clicks are credited to it by the exporter, and the figures
(`driftrec experiments`, the exporter's metrics) report the lift a set click margin makes, with
the right sign."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from driftrec.experiments import counts_key, shoppers_key
from driftrec.keys import Keys
from driftrec.models.blend import BlendWeights
from driftrec.models.experiments import assign
from driftrec.publisher import publish_events
from driftrec.settings import Settings
from tests.integration.services import ROOT, free_port, wait_http
from tests.integration.test_reader_support import (
    publish_model,
    reader,
    reference_state,
    shop_events,
    wait_for,
    write_state,
)

pytestmark = pytest.mark.integration

KEY = "exp-admin-key"


def _http(method: str, url: str, body: Any = None, key: str | None = KEY) -> tuple[int, Any]:
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                          **({"X-API-Key": key} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _click(user: str, item: str, request_id: str, kind: str = "view") -> dict[str, Any]:
    return {"event_id": f"e-{time.time_ns()}-{random.random()}", "user_id": user, "item_id": item, "type": kind,
            "timestamp": time.time(), "request_id": request_id}


def test_ab_experiment_end_to_end(settings: Settings, spawn: Any) -> None:
    s = settings.model_copy(update={"exporter_port": free_port(), "lag_interval_s": 0.5, "canary_interval_s": 5.0,
                                    "api_keys": (KEY,), "allow_anonymous_writes": False})
    st = reference_state(s, shop_events())
    client = redis.Redis.from_url(s.redis, decode_responses=True)
    write_state(client, Keys(s.key_prefix), st)
    reader_proc = spawn(["serve"], s)
    base = f"http://127.0.0.1:{s.reader_port}"
    wait_http(f"{base}/readyz", 30, reader_proc)

    # Bad definitions are refused with a clear 4xx; the good one is stored.
    bad = {"variants": [{"name": "control", "share": 0.5}, {"name": "trend", "share": 0.6}]}
    assert _http("PUT", f"{base}/v1/experiments/e2e", bad)[0] == 422
    assert _http("PUT", f"{base}/v1/experiments/e2e", bad, key=None)[0] == 401
    pinned = {"variants": [{"name": "control", "share": 0.5}, {"name": "m", "share": 0.5, "model_version": "nope"}]}
    status, err = _http("PUT", f"{base}/v1/experiments/e2e", pinned)
    assert status == 422 and "no published model nope" in err["detail"]
    assert _http("GET", f"{base}/v1/experiments/e2e")[0] == 404
    good = {"variants": [{"name": "control", "share": 0.5},
                         {"name": "trend", "share": 0.5, "strategy": "trending"}]}
    status, defined = _http("PUT", f"{base}/v1/experiments/e2e", good)
    assert status == 201 and defined["status"] == "running", defined

    exporter = spawn(["lag", "--serve", "--port", str(s.exporter_port), "--reader-url", base], s)
    ebase = f"http://127.0.0.1:{s.exporter_port}"
    wait_http(f"{ebase}/healthz", 30, exporter)
    # The attribution consumer starts at the log end: wait until it counts a probe click.
    deadline = time.monotonic() + 30
    probe = 0
    while True:
        publish_events(s, [_click("shopper", "probe", f"probe{probe}")])
        time.sleep(0.5)
        state = json.loads(urllib.request.urlopen(f"{ebase}/api/state", timeout=5).read())
        if state["unattributed"].get("unknown_request", 0) > 0:
            break
        probe += 1
        assert time.monotonic() < deadline and exporter.alive(), exporter.tail()

    # Shoppers answer with a set margin: the first item of a "trend" answer is clicked 60 % of the
    # time, a "control" answer's 20 %; half the clicks on trend answers go on to a purchase.
    rng = random.Random(7)
    users = [f"shopper-{k}" for k in range(300)] + sorted(st.hist)[:20]
    clicks: list[dict[str, Any]] = []
    answers = {"control": 0, "trend": 0}
    clicked = {"control": 0, "trend": 0}
    for user in users:
        status, body = _http("GET", f"{base}/v1/recommendations/{user}?n=5")
        assert status == 200, body
        want = ("control", "trend")[assign("e2e", user, (0.5, 0.5))]
        assert body["experiment"] == {"name": "e2e", "variant": want, "method": "ab"}, body
        if want == "trend":
            assert all(x["source"] == "trending" for x in body["items"]), body
        assert _http("GET", f"{base}/v1/recommendations/{user}?n=5")[1]["experiment"]["variant"] == want  # sticky
        if not body["items"] or body["degraded"]:
            continue
        answers[want] += 1
        if rng.random() < (0.6 if want == "trend" else 0.2):
            clicked[want] += 1
            item = body["items"][0]["item_id"]
            clicks.append(_click(user, item, body["request_id"]))
            if want == "trend" and rng.random() < 0.5:
                clicks.append(_click(user, item, body["request_id"], "purchase"))
    publish_events(s, clicks)

    # The readers counted the answers; the exporter credits the clicks to the variants.
    def figures() -> dict[str, Any]:
        state = json.loads(urllib.request.urlopen(f"{ebase}/api/state", timeout=5).read())
        return next((e for e in state["experiments"] if e["name"] == "e2e"), {})

    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        fig = figures()
        got = {v["name"]: v["types"]["view"]["shoppers_clicked"] for v in fig.get("variants", [])}
        if got == clicked:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"clicks not credited: {figures()} vs {clicked}\n{exporter.tail()}")
    counts = client.hgetall(counts_key(s.key_prefix, "e2e"))
    # Two answers per shopper (the sticky check); the degraded ones are not recorded.
    assert int(counts["answers|trend"]) >= 2 * answers["trend"] - 2
    # Shoppers, each once, are the unit of the rates and of the split check.
    assert {v["name"]: v["shoppers"] for v in figures()["variants"]} == {
        v: client.scard(shoppers_key(s.key_prefix, "e2e", v)) for v in ("control", "trend")}
    assert sum(v["shoppers"] for v in figures()["variants"]) == len(users)
    fig = figures()
    (view,) = [c for c in fig["comparisons"] if c["type"] == "view"]
    assert view["variant"] == "trend" and view["diff"]["estimate"] > 0 and view["diff"]["low"] > 0
    assert view["p_value"] < 0.001 and view["significant"]
    assert not fig["srm"]["mismatch"], fig["srm"]
    trend = next(v for v in fig["variants"] if v["name"] == "trend")
    assert trend["types"]["purchase"]["clicks"] == sum(1 for c in clicks if c["type"] == "purchase")
    metrics = urllib.request.urlopen(f"{ebase}/metrics", timeout=5).read().decode()
    assert 'driftrec_experiment_p_value{experiment="e2e",type="view",variant="trend"}' in metrics

    # The CLI prints the same figures.
    env = {**os.environ, **s.to_env()}
    out = subprocess.run([sys.executable, "-m", "driftrec.cli", "experiments", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (cli,) = [e for e in json.loads(out.stdout) if e["name"] == "e2e"]
    assert cli["variants"][1]["types"]["view"]["shoppers_clicked"] == clicked["trend"]
    table = subprocess.run([sys.executable, "-m", "driftrec.cli", "experiments"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert "e2e (ab, running" in table.stdout, table.stdout

    # Deleting it: answers no longer name it, and a second delete is a 404.
    assert _http("DELETE", f"{base}/v1/experiments/e2e")[0] == 200
    assert _http("DELETE", f"{base}/v1/experiments/e2e")[0] == 404
    assert "experiment" not in _http("GET", f"{base}/v1/recommendations/shopper-1?n=5")[1]
    client.close()


def test_interleaving_end_to_end(settings: Settings, spawn: Any) -> None:
    """One answer merges both variants; a shopper's clicks on one variant's items make them prefer it."""
    s = settings.model_copy(update={"exporter_port": free_port(), "lag_interval_s": 0.5, "canary_interval_s": 5.0,
                                    "api_keys": (KEY,), "allow_anonymous_writes": False})
    st = reference_state(s, shop_events())
    client = redis.Redis.from_url(s.redis, decode_responses=True)
    write_state(client, Keys(s.key_prefix), st)
    reader_proc = spawn(["serve"], s)
    base = f"http://127.0.0.1:{s.reader_port}"
    wait_http(f"{base}/readyz", 30, reader_proc)
    body = {"method": "interleave", "variants": [{"name": "blend"}, {"name": "trend", "strategy": "trending"}]}
    status, defined = _http("PUT", f"{base}/v1/experiments/il", body)
    assert status == 201, defined
    exporter = spawn(["lag", "--serve", "--port", str(s.exporter_port), "--reader-url", base], s)
    ebase = f"http://127.0.0.1:{s.exporter_port}"
    wait_http(f"{ebase}/healthz", 30, exporter)
    deadline = time.monotonic() + 30
    probe = 0
    while True:
        publish_events(s, [_click("shopper", "probe", f"probe{probe}")])
        time.sleep(0.5)
        state = json.loads(urllib.request.urlopen(f"{ebase}/api/state", timeout=5).read())
        if state["unattributed"].get("unknown_request", 0) > 0:
            break
        probe += 1
        assert time.monotonic() < deadline and exporter.alive(), exporter.tail()

    # Users with history: their blend differs from trending, so both teams contribute items.
    users = sorted(st.hist, key=lambda u: (-len(st.hist[u]), u))[:30]
    clicks: list[dict[str, Any]] = []
    preferring_trend = 0
    for user in users:
        status, got = _http("GET", f"{base}/v1/recommendations/{user}?n=8")
        assert status == 200 and got["experiment"] == {"name": "il", "variant": "interleaved",
                                                        "method": "interleave"}, got
        teams = None
        deadline = time.monotonic() + 5
        while teams is None and time.monotonic() < deadline:
            raw = client.hget(Keys(s.key_prefix).served(got["request_id"]), "#teams")
            teams = json.loads(raw) if raw else None
            time.sleep(0.05)
        assert teams is not None and set(teams) == {x["item_id"] for x in got["items"]}
        trend_items = [i for i, v in teams.items() if v == "trend"]
        if trend_items and len(trend_items) < len(teams):
            # These shoppers view trending's items only: trending should be preferred.
            preferring_trend += 1
            clicks.append(_click(user, trend_items[0], got["request_id"]))
    assert preferring_trend >= 10, preferring_trend
    publish_events(s, clicks)

    def figures() -> dict[str, Any]:
        state = json.loads(urllib.request.urlopen(f"{ebase}/api/state", timeout=5).read())
        return next((e for e in state["experiments"] if e["name"] == "il"), {})

    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        il = figures().get("interleaving", {})
        if il.get("wins", {}).get("trend") == preferring_trend:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"preferences not counted: {figures()}\n{exporter.tail()}")
    fig = figures()
    il = fig["interleaving"]
    assert il["wins"] == {"blend": 0, "trend": preferring_trend} and il["answers"] == len(users)
    assert il["preferred"] == "trend" and il["p_value"] < 0.01
    assert not fig["srm"]["mismatch"]
    trend = next(v for v in fig["variants"] if v["name"] == "trend")
    assert trend["types"]["view"]["clicks"] == preferring_trend
    client.close()


async def test_pinned_model_variant_and_its_fallback(settings: Settings) -> None:
    """A variant pinned to an older published version ranks with it next to the live one; when the
    trainer deletes that version, the variant's shoppers get the default strategy and are told so."""
    keys = Keys(settings.key_prefix)
    st = reference_state(settings, shop_events())
    client = redis.Redis.from_url(settings.redis)
    write_state(client, keys, st)
    items = sorted(st.pop)
    rng = np.random.default_rng(3)
    publish_model(client, keys, "v1", items, rng.normal(size=(len(items), 8)).astype(np.float32))
    publish_model(client, keys, "v2", items, rng.normal(size=(len(items), 8)).astype(np.float32))  # live
    users = sorted(st.hist)
    old_user = next(u for u in users if assign("pin", u, (0.5, 0.5)) == 1)
    new_user = next(u for u in users if assign("pin", u, (0.5, 0.5)) == 0)
    try:
        async with reader(settings) as (app, http):
            body = {"variants": [{"name": "live", "share": 0.5, "strategy": "user_vector"},
                                 {"name": "old", "share": 0.5, "strategy": "user_vector", "model_version": "v1"}]}
            assert (await http.put("/v1/experiments/pin", json=body)).status_code == 201

            async def answer(user: str) -> dict[str, Any]:
                r = await http.get(f"/v1/recommendations/{user}", params={"n": 5})
                assert r.status_code == 200
                return dict(r.json())

            async def pinned_served() -> bool:
                got = await answer(old_user)
                return got["model_version"] == "v1" and "fallback" not in got["experiment"]

            await wait_for(pinned_served, timeout=20)
            got = await answer(old_user)
            assert got["experiment"] == {"name": "pin", "variant": "old", "method": "ab"}
            assert any(x["source"] == "user_vector" for x in got["items"]), got
            live = await answer(new_user)
            assert live["model_version"] == "v2" and live["experiment"]["variant"] == "live"

            # The trainer deletes v1 (its grace period is over): the variant falls back, and says so.
            for key in client.scan_iter(match=keys.model_blob("v1", "*")):
                client.delete(key)
            await app.state.experiments.refresh()
            got = await answer(old_user)
            assert got["experiment"]["variant"] == "old"
            assert got["experiment"]["fallback"] == "model v1 is not available: default strategy served"
            assert got["model_version"] == "v2"
            await app.state.recorder.flush()
            counts = client.hgetall(counts_key(settings.key_prefix, "pin"))
            assert int(counts[b"fallback|old"]) >= 1
    finally:
        client.close()


async def test_two_rankings_from_one_read_equal_two_reads(settings: Settings) -> None:
    """An interleaved answer's two rankings come from one read (Recommender.for_user_ranked): each
    equals what its own request would have ranked, on the reference shop and a published model."""
    keys = Keys(settings.key_prefix)
    st = reference_state(settings, shop_events())
    client = redis.Redis.from_url(settings.redis)
    write_state(client, keys, st)
    items = sorted(st.pop)
    publish_model(client, keys, "v1", items, np.random.default_rng(4).normal(size=(len(items), 8)).astype(np.float32))
    weights = [BlendWeights(), BlendWeights(tf=0.0, trending=1.0, item_item=0.2),
               BlendWeights(item_item=0.0, user_vector=1.0, tf=0.0, similar_users=0.0, trending=0.0)]
    try:
        async with reader(settings.model_copy(update={"reader_cache_ttl_s": 0.0})) as (app, http):
            rec = app.state.recommender
            assert (await http.get(f"/v1/recommendations/{items[0]}")).status_code == 200
            await app.state.models.wait()
            for user in sorted(st.hist)[:25]:
                for a, b in ((0, 1), (1, 2), (0, 2)):
                    pair = await rec.for_user_ranked(user, 8, (weights[a], weights[b]), exclude=("x",))
                    one = [await rec.for_user(user, 8, weights=weights[k], exclude=("x",)) for k in (a, b)]
                    assert [x.items for x in pair] == [x.items for x in one], (user, a, b)
                    assert pair[0].model_version == "v1"
    finally:
        client.close()
