"""The compiled front (``reader_native``) gives the Python reader's answers, and passes on the rest.

One shop in Redis (a worker applied the clicks), one published model large enough for the HNSW
indexes and with a TF part, then two readers on it: ``driftrec serve`` with the front, and a
plain Python reader. Every shopper's recommendations must agree item for item (ids, order,
sources, reasons) with scores equal to float32 rounding, and the front's metrics must show it
ranked them itself, not passed them on.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import numpy as np
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from driftrec.keys import Keys
from driftrec.publisher import publish_events
from driftrec.settings import Settings
from tests.integration.services import wait_http
from tests.integration.test_reader_support import publish_model
from tools.chaos.stack import free_port

pytestmark = pytest.mark.integration

N_ITEMS = 6000  # above reader_ann_min_rows (5,000): the user-vector and TF sources search their indexes
N_USERS = 120
K = 16


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _clicks(rng: np.random.Generator) -> list[dict[str, object]]:
    """Shoppers browsing clusters of 20 items, interleaved, with times a few seconds apart."""
    events = []
    t = 1_700_000_000.0
    for step in range(8):
        for u in range(N_USERS):
            cluster = (u * 7) % 200
            item = cluster * 20 + int(rng.integers(0, 20)) if rng.random() < 0.8 else int(rng.integers(0, N_ITEMS))
            t += 0.5
            events.append({"event_id": f"e{step}-{u}", "user_id": f"u{u}", "item_id": f"i{item}",
                           "type": "view" if rng.random() < 0.8 else "add_to_cart", "timestamp": t})
    return events


def _model(client: redis.Redis, keys: Keys, rng: np.random.Generator) -> None:
    items = [f"i{j}" for j in range(N_ITEMS)]
    Y = rng.normal(size=(N_ITEMS, K)) / np.sqrt(K)
    # Half the shoppers were in the batch model (their batch vectors and the similar-users pool);
    # the other half get folded in from their clicks.
    users = [f"u{u}" for u in range(0, N_USERS, 2)] + [f"pool{j}" for j in range(400)]
    U = rng.normal(size=(len(users), K))
    h = 16
    tf = [(rng.normal(size=(N_ITEMS, h)) * 0.3, rng.normal(size=h) * 0.1),
          (rng.normal(size=(h, N_ITEMS)) * 0.3, rng.normal(size=N_ITEMS) * 0.1)]
    publish_model(client, keys, "native-m1", items, Y, user_ids=users, U=U, tf=tf)


def _native_answers(text: str) -> float:
    """Recommendations the front ranked: its series in the Python reader's request counter."""
    return sum(float(v) for v in re.findall(
        r'^driftrec_reader_requests_total\{endpoint="/v1/recommendations/\{user_id\}",method="GET",status="200",'
        r'front="native"\} (\S+)$', text, re.M))


def test_the_front_ranks_like_the_python_reader_and_passes_on_the_rest(settings: Settings, spawn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    client = redis.Redis.from_url(settings.redis)
    keys = Keys(settings.key_prefix)
    _model(client, keys, rng)
    spawn(["worker"])
    events = _clicks(rng)
    publish_events(settings, events)
    deadline = time.monotonic() + 90
    last = events[-1]
    while time.monotonic() < deadline and not client.hexists(keys.user_state(str(last["user_id"])), str(last["item_id"])):
        time.sleep(0.2)
    assert client.hexists(keys.user_state(str(last["user_id"])), str(last["item_id"])), "the worker did not apply the clicks"
    models = tmp_path / "models"
    front = spawn(["serve"], settings.model_copy(update={"reader_native": True, "reader_model_dir": str(models)}))
    # The same folder: both map the one build of the version (HNSW graphs included).
    plain = settings.model_copy(update={"reader_port": free_port(), "reader_model_dir": str(models)})
    python = spawn(["serve"], plain)
    base, ref = f"http://127.0.0.1:{settings.reader_port}", f"http://127.0.0.1:{plain.reader_port}"
    wait_http(f"{base}/readyz", 90, front)
    wait_http(f"{ref}/readyz", 90, python)
    # The first requests start the model build (Python) and its mapping (the front); both
    # readers serve it once their answers carry its version.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, a = _get(f"{base}/v1/recommendations/u1")
        _, b = _get(f"{ref}/v1/recommendations/u1")
        _, m = _get(f"{base}/metrics")
        if (orjson.loads(a)["model_version"] == orjson.loads(b)["model_version"] == "native-m1"
                and "driftrec_reader_native_model_loaded 1.0" in m.decode()):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the model was not served by both readers:\n{front.tail()}")
    time.sleep(2.5)  # both trending snapshots refreshed after the last click (every 2 s)
    before = _native_answers(_get(f"{base}/metrics")[1].decode())
    asked = 0
    for u in range(N_USERS):
        for query in ("", "?n=25", f"?n=5&exclude=i{(u * 7) % 200 * 20},i{(u * 7) % 200 * 20 + 1}"):
            sa, a = _get(f"{base}/v1/recommendations/u{u}{query}")
            sb, b = _get(f"{ref}/v1/recommendations/u{u}{query}")
            assert sa == sb == 200
            got, want = orjson.loads(a), orjson.loads(b)
            asked += 1
            assert not got["degraded"] and not want["degraded"]
            assert got["model_version"] == want["model_version"]
            assert [(x["item_id"], x["source"], x["reason"]) for x in got["items"]] == \
                   [(x["item_id"], x["source"], x["reason"]) for x in want["items"]], f"u{u}{query}"
            assert np.allclose([x["score"] for x in got["items"]], [x["score"] for x in want["items"]], rtol=1e-5, atol=1e-9)
    assert asked > 0
    text = _get(f"{base}/metrics")[1].decode()
    assert _native_answers(text) - before == asked, "the front passed recommendations on instead of ranking them"
    # Whatever the front does not rank, the Python reader answers through it, errors included.
    for path in ("/v1/trending?n=3", "/v1/items/i1/similar?n=3", "/v1/recommendations/u1?strategy=item_item",
                 "/v1/recommendations/u1?n=0", "/v1/recommendations/u1?bogus=1", "/healthz"):
        sa, a = _get(base + path)
        sb, b = _get(ref + path)
        assert sa == sb, path
        if sa == 200 and path.startswith("/v1/"):
            assert [x["item_id"] for x in orjson.loads(a)["items"]] == [x["item_id"] for x in orjson.loads(b)["items"]], path
        else:
            assert orjson.loads(a).keys() == orjson.loads(b).keys(), path
    # The Python reader's own metrics, passed on, with the front's series in their families.
    text = _get(f"{base}/metrics")[1].decode()
    assert 'driftrec_reader_requests_total{endpoint="/v1/trending",method="GET",status="200"}' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # the merged text still parses
    counts = [s.value for s in families["driftrec_reader_request_seconds"].samples
              if s.name.endswith("_count") and s.labels.get("front") == "native"]
    assert counts == [_native_answers(text)]
    assert any(s.labels.get("front") == "native" for s in families["driftrec_reader_items_served"].samples)
    client.close()
