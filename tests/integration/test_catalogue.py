"""The item catalogue on the real stack (issue 27): catalogue writes go through the reader's HTTP
endpoints to the items topic, the worker applies them to Redis, and the reader's in-memory view,
kept current from the change feed, hides an unavailable or deleted item from every answer
(recommendations, similar items, trending) within a second; a deleted item stays hidden after a
worker restart, a reader restart and a rebuild of Redis from the topics (a replay)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
import redis

from driftrec.catalogue import parse_item_event
from driftrec.keys import Keys
from driftrec.publisher import ItemPublisher, publish_events
from driftrec.settings import Settings
from tests.integration.services import wait_http
from tests.integration.test_write_path_guarantees import _read_topic

pytestmark = pytest.mark.integration

X, A, B, C = "sku-x", "sku-a", "sku-b", "sku-c"
SHOPPER = "shopper-1"


def _with_items(s: Settings) -> Settings:
    """The test's own items topics (conftest names them too; this keeps the module's tests
    isolated whatever the fixture does)."""
    tag = uuid.uuid4().hex[:8]
    return s.model_copy(update={"items_topic": f"t-{tag}.items", "items_dead_letter_topic": f"t-{tag}.items.dlq"})


def _clicks(n_users: int, start: int = 0) -> list[dict[str, Any]]:
    """Shoppers who view A, then X, then B (C now and then): X is popular, a neighbour of A and
    of B; SHOPPER viewed A only, so X is among their recommendations."""
    now = time.time()
    out = []
    for u in range(start, start + n_users):
        for k, item in enumerate((A, X, B, C) if u % 2 else (A, X, B)):
            out.append({"event_id": f"e{u}-{k}", "user_id": f"u{u}", "item_id": item, "type": "view",
                        "timestamp": now - 60 + k, "category": "shoes"})
    out.append({"event_id": f"s-{start}", "user_id": SHOPPER, "item_id": A, "type": "view", "timestamp": now - 30,
                "category": "shoes"})
    return out


def _applied(s: Settings) -> int:
    client = redis.Redis.from_url(s.redis)
    try:
        return int(client.hget(Keys(s.key_prefix).meta, "applied_events") or 0)
    finally:
        client.close()


def _wait_applied(s: Settings, n: int, worker: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while _applied(s) < n:
        assert worker.alive(), worker.tail()
        assert time.monotonic() < deadline, f"applied {_applied(s)} of {n}\n{worker.tail()}"
        time.sleep(0.1)


def _stack_with_clicks(s: Settings, spawn: Any, n_users: int) -> tuple[Any, Any]:
    """A worker and a reader on ``s``, with the clicks of ``n_users`` shoppers applied."""
    worker = spawn(["worker"], s)
    reader = spawn(["serve"], s)
    wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 60, reader)
    clicks = _clicks(n_users)
    publish_events(s, clicks)
    _wait_applied(s, len(clicks), worker)
    return worker, reader


ENDPOINTS = (f"/v1/recommendations/{SHOPPER}?n=10", f"/v1/items/{A}/similar?n=10", "/v1/trending?n=10")


def _answers(http: httpx.Client) -> dict[str, list[str]]:
    out = {}
    for path in ENDPOINTS:
        r = http.get(path)
        assert r.status_code == 200, r.text
        out[path] = [x["item_id"] for x in r.json()["items"]]
    return out


def _wait_until(http: httpx.Client, shown: bool, timeout: float) -> float:
    """Seconds until X is in every answer (``shown``) or in none; fails after ``timeout``."""
    started = time.monotonic()
    while True:
        answers = _answers(http)
        if all((X in items) == shown for items in answers.values()):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"X shown={not shown} still: {answers}"
        time.sleep(0.01)


def _never_shown(http: httpx.Client, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        answers = _answers(http)
        assert not any(X in items for items in answers.values()), answers
        assert all(answers.values()), f"an empty answer proves nothing: {answers}"
        time.sleep(0.05)


def test_an_unavailable_item_leaves_every_answer_within_a_second_and_comes_back(settings: Settings,
                                                                                 spawn: Any) -> None:
    s = _with_items(settings)
    worker, reader = _stack_with_clicks(s, spawn, 12)
    with httpx.Client(base_url=f"http://127.0.0.1:{s.reader_port}", timeout=5) as http:
        _wait_until(http, shown=True, timeout=30)  # X is everywhere before the catalogue says a word

        r = http.put(f"/v1/items/{X}", json={"title": "Shoe X", "price": 80, "available": True, "tags": ["trail"]})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30  # the first catalogue event also starts the items agent's fetch
        while http.get(f"/v1/items/{X}").status_code != 200:
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.05)
        r = http.get("/v1/trending?n=10&fields=title,price,tags")
        got = {x["item_id"]: x for x in r.json()["items"]}
        assert got[X]["title"] == "Shoe X" and got[X]["price"] == 80.0 and got[X]["tags"] == ["trail"]
        assert got[A]["title"] is None
        # Filters: only X carries the tag; the price range leaves it out.
        assert [x["item_id"] for x in http.get("/v1/trending?tag=trail").json()["items"]] == [X]
        assert X not in [x["item_id"] for x in http.get("/v1/trending?price_max=50").json()["items"]]

        timings = []
        for _ in range(3):
            started = time.monotonic()
            assert http.put(f"/v1/items/{X}", json={"title": "Shoe X", "available": False}).status_code == 202
            _wait_until(http, shown=False, timeout=5)
            gone = time.monotonic() - started
            _never_shown(http, 1.0)
            started = time.monotonic()
            assert http.put(f"/v1/items/{X}", json={"title": "Shoe X", "available": True}).status_code == 202
            _wait_until(http, shown=True, timeout=5)
            back = time.monotonic() - started
            timings.append((gone, back))
        print("seconds from the PUT to the last answer with / without X:", timings)
        assert all(gone < 1.0 and back < 1.0 for gone, back in timings), timings

    # A bad catalogue record goes to the catalogue's dead-letter topic with its reason.
    async def send_bad() -> None:
        async with ItemPublisher(s) as pub:
            await pub.send_raw(b'{"item_id": "sku-q", "price": "free"}', key=b"sku-q")
            await pub.flush()

    asyncio.run(send_bad())
    deadline = time.monotonic() + 30
    rows: list[Any] = []
    while not rows:
        assert time.monotonic() < deadline, worker.tail()
        rows = asyncio.run(_read_topic(s, s.items_dead_letter_topic, 1))
    assert len(rows) == 1 and rows[0].key == b"sku-q"
    headers = dict(rows[0].headers)
    assert headers["driftrec-reason"].decode().startswith("price:")
    assert headers["driftrec-source"].decode().startswith(f"{s.items_topic}:0:")


def test_a_deleted_item_stays_hidden_after_restarts_and_a_replay(settings: Settings, spawn: Any) -> None:
    s = _with_items(settings)
    worker = spawn(["worker"], s)
    reader = spawn(["serve"], s)
    wait_http(f"http://127.0.0.1:{s.reader_port}/readyz", 60, reader)
    first = _clicks(10)
    publish_events(s, first)
    _wait_applied(s, len(first), worker)
    base = f"http://127.0.0.1:{s.reader_port}"
    with httpx.Client(base_url=base, timeout=5) as http:
        _wait_until(http, shown=True, timeout=30)
        assert http.delete(f"/v1/items/{X}").status_code == 202
        _wait_until(http, shown=False, timeout=30)
        assert http.get(f"/v1/items/{X}").json()["deleted"]

    # The worker dies (kill -9, nothing committed cleanly); more clicks of X arrive meanwhile.
    worker.kill9()
    more = _clicks(10, start=100)
    publish_events(s, more)
    worker = spawn(["worker"], s)
    _wait_applied(s, len(first) + len(more), worker)
    reader.stop()  # and a fresh reader, which loads the catalogue from Redis
    reader = spawn(["serve"], s)
    wait_http(f"{base}/readyz", 60, reader)
    with httpx.Client(base_url=base, timeout=5) as http:
        _never_shown(http, 2.0)
        assert http.get(f"/v1/items/{X}").json()["deleted"]
    reader.stop()
    worker.stop()

    # A replay: Redis rebuilt from the topics by a new consumer group under a new key prefix.
    tag = uuid.uuid4().hex[:8]
    r2 = s.model_copy(update={"key_prefix": f"{s.key_prefix}r{tag}", "consumer_group": f"{s.consumer_group}-r"})
    try:
        worker = spawn(["worker"], r2)
        _wait_applied(r2, len(first) + len(more), worker)
        client = redis.Redis.from_url(r2.redis)
        deadline = time.monotonic() + 60
        while client.hget(Keys(r2.key_prefix).catalogue, X) is None:  # the items topic replayed too
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.1)
        client.close()
        reader = spawn(["serve"], r2)
        wait_http(f"{base}/readyz", 60, reader)
        with httpx.Client(base_url=base, timeout=5) as http:
            _never_shown(http, 2.0)
            assert http.get(f"/v1/items/{X}").json()["deleted"]
    finally:
        client = redis.Redis.from_url(r2.redis)
        for key in client.scan_iter(match=f"{r2.key_prefix}:*", count=1000):
            client.delete(key)
        client.close()


def test_items_import_publishes_a_csv_file_with_a_progress_bar(settings: Settings, spawn: Any,
                                                               tmp_path: Any) -> None:
    s = _with_items(settings)
    worker = spawn(["worker"], s)
    n = 3000
    lines = ["item_id,title,category,tags,price,available,brand"]
    lines += [f"m{k},Movie {k},genre{k % 7},a|b{k % 3},{k % 50}.5,{'no' if k % 10 == 0 else 'yes'},studio{k % 4}"
              for k in range(n)]
    lines.insert(5, "bad id,Broken,,,,,")
    path = tmp_path / "items.csv"
    path.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    proc = spawn(["items", "import", str(path)], s)
    assert proc.proc is not None and proc.proc.wait(120) == 1, proc.tail()  # 1: one row was rejected
    seconds = time.monotonic() - started
    out = proc.tail()
    assert f"sent {n}, rejected 1" in out and "line 6 rejected: item_id:" in out, out
    assert "importing: 100%" in out, out  # tqdm's bar reached the end
    client = redis.Redis.from_url(s.redis, decode_responses=True)
    keys = Keys(s.key_prefix)
    deadline = time.monotonic() + 90
    while client.hlen(keys.catalogue) < n:
        assert worker.alive() and time.monotonic() < deadline, worker.tail()
        time.sleep(0.2)
    print(f"{n} items imported and applied in {time.monotonic() - started:.1f} s (the CLI alone: {seconds:.1f} s)")
    record = client.hget(keys.catalogue, "m10")
    assert record is not None and '"available":false' in record and '"properties":{"brand":"studio2"}' in record
    assert client.hget(keys.catalogue_offsets, f"{s.items_topic}:0") == str(n - 1)
    assert client.xlen(keys.catalogue_feed) == n
    client.close()


def test_the_items_topic_is_created_log_compacted(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from driftrec.runtime import ensure_services

    s = _with_items(settings)
    ensure_services(s, start=False)  # what `driftrec worker` (and every other role) runs first

    async def policy(topic: str) -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
        await admin.start()
        try:
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": None})])
        finally:
            await admin.close()
        (resource,) = response.to_object()["resources"]
        return {c["config_names"]: c["config_value"] for c in resource["config_entries"]}["cleanup.policy"]

    assert asyncio.run(policy(s.items_topic)) == "compact"
    assert asyncio.run(policy(s.clicks_topic)) == "delete"  # the clicks keep their retention


def test_a_new_item_with_no_clicks_enters_recommendations_through_its_category(settings: Settings,
                                                                                spawn: Any) -> None:
    """The new-item source on the real stack: an item upserted with no click at all is
    recommended to a shopper whose recent click shares its category, from the reader's in-memory
    catalogue; an equally new item of another category is not, and the weight turns it off."""
    s = _with_items(settings).model_copy(update={"reader_blend_weights": {"new_items": 0.3}})
    worker, reader = _stack_with_clicks(s, spawn, 12)
    now = time.time()
    new, hat = "sku-new", "sku-hat"
    path = f"/v1/recommendations/{SHOPPER}?n=10&fields=title"
    with httpx.Client(base_url=f"http://127.0.0.1:{s.reader_port}", timeout=5) as http:
        # The shopper's click (A) is an old shoe; the new items were added just now.
        for item, body in ((A, {"title": "Shoe A", "category": "shoes", "added_at": now - 400 * 86400}),
                           (new, {"title": "New shoe", "category": "shoes", "tags": ["trail"], "added_at": now}),
                           (hat, {"title": "New hat", "category": "hats", "added_at": now})):
            assert http.put(f"/v1/items/{item}", json=body).status_code == 202
        started = time.monotonic()
        while True:
            got = {x["item_id"]: x for x in http.get(path).json()["items"]}
            if new in got:
                break
            assert time.monotonic() - started < 30, f"{new} not recommended: {list(got)}\n{worker.tail()}"
            time.sleep(0.05)
        print(f"the new item was recommended {time.monotonic() - started:.2f} s after its PUT")
        assert got[new]["source"] == "new_items" and got[new]["reason"] == "new in shoes"
        assert got[new]["title"] == "New shoe"
        assert X in got and hat not in got  # the clicked neighbours stay; another category's new item does not come
        off = [x["item_id"] for x in http.get(f"{path}&weights=new_items:0").json()["items"]]
        assert new not in off and X in off
        # Made unavailable, it leaves the new-item source too.
        assert http.put(f"/v1/items/{new}", json={"category": "shoes", "available": False,
                                                  "added_at": now}).status_code == 202
        started = time.monotonic()
        while new in [x["item_id"] for x in http.get(path).json()["items"]]:
            assert time.monotonic() - started < 5
            time.sleep(0.02)
        # No click of the new item ever reached the store: the metadata alone brought it in.
        client = redis.Redis.from_url(s.redis)
        try:
            assert client.zscore(Keys(s.key_prefix).popularity, new) is None
        finally:
            client.close()


def test_a_catalogue_event_does_not_wait_behind_a_click_backlog(settings: Settings, spawn: Any) -> None:
    """While the worker catches up tens of thousands of clicks, an item made unavailable is
    applied within a second: the click partitions wait while the clicks agent's hand-off is
    full, and the fetch loop keeps serving the items topic (issue 27's head-of-line defect)."""
    s = _with_items(settings)
    worker = spawn(["worker"], s)
    warm = _clicks(4)
    publish_events(s, warm)
    _wait_applied(s, len(warm), worker)
    client = redis.Redis.from_url(s.redis, decode_responses=True)
    keys = Keys(s.key_prefix)

    def wait_record(available: bool, timeout: float) -> float:
        """Seconds from sending the upsert (producer started) to the worker's record in Redis."""

        async def run() -> float:
            async with ItemPublisher(s) as pub:
                started = time.monotonic()
                await pub.send(parse_item_event(orjson.dumps({"item_id": X, "available": available})))
                await pub.flush()
                while f'"available":{str(available).lower()}' not in (client.hget(keys.catalogue, X) or ""):
                    assert worker.alive() and time.monotonic() - started < timeout, worker.tail()
                    await asyncio.sleep(0.01)
                return time.monotonic() - started

        return asyncio.run(run())

    wait_record(True, 60)  # the items agent is up and fetching
    worker.stop()
    now = time.time()
    backlog = [{"event_id": f"b{k}", "user_id": f"bu{k % 20_000}", "item_id": f"bi{(k * 7919) % 5_000}",
                "type": "view", "timestamp": now - 120 + k / 1000, "category": "c"} for k in range(120_000)]
    publish_events(s, backlog)
    total = len(warm) + len(backlog)
    worker = spawn(["worker"], s)
    deadline = time.monotonic() + 120
    while _applied(s) < len(warm) + 5_000:  # catching up, with most of the backlog still to come
        assert worker.alive() and time.monotonic() < deadline, worker.tail()
        time.sleep(0.05)
    seconds = wait_record(False, 30)
    behind = total - _applied(s)
    print(f"applied {seconds:.2f} s after it was sent, with {behind} clicks still to apply")
    assert behind > 0, "the backlog was gone before the catalogue record was applied: nothing measured"
    assert seconds < 1.0, f"{seconds:.2f} s behind {behind} clicks"
    _wait_applied(s, total, worker, timeout=300)  # and the clicks are all applied, once
    assert _applied(s) == total
    client.close()
