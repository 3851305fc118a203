"""Every endpoint fuzzed against a real Redis: only JSON 4xx for bad input, never a 500, and every
key the reader touches (seen by Redis MONITOR) is one of the layout's keys with a valid id; the
only writes are the records of served answers (``P:{r:R}``)."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from driftrec.keys import Keys
from driftrec.models.blend import SOURCES
from driftrec.online.app import create_app
from driftrec.online.params import ID_PATTERN
from driftrec.online.routes_recs import SIMILAR_STRATEGY, STRATEGIES
from driftrec.settings import Settings
from tests.integration.test_reader_support import (
    ListSink,
    reference_state,
    shop_events,
    write_state,
)

pytestmark = pytest.mark.integration

_ID = ID_PATTERN.strip("^$")
_NO_KEY = {"PING", "CLIENT", "HELLO", "SELECT", "INFO", "MONITOR", "AUTH", "QUIT", "COMMAND"}


class Harness:
    """One reader app on one event loop, shared by every example (building apps is slow)."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.sink = ListSink()
        self.app = create_app(settings, sink=self.sink, refresh_snapshot=False)
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.loop.run_until_complete(self._lifespan.__aenter__())
        self.loop.run_until_complete(self.app.state.snapshot.refresh())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
                                        base_url="http://reader")

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, url, **kw))

    def flush(self) -> None:
        """Write the queued answer records now (they are written off the request path)."""
        self.loop.run_until_complete(self.app.state.recorder.flush())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self._lifespan.__aexit__(None, None, None))
        self.loop.close()


class KeyWatch:
    """Collects the keys of every command Redis executes while it runs (MONITOR)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=None)
        self.commands: list[list[str]] = []
        # stop() sends this; MONITOR shows it after every command Redis ran before it, so the watch
        # reads up to it (on a loaded machine the watch lags behind the commands it is sent).
        self._marker = f"keywatch-stop-{uuid.uuid4().hex}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        with self.client.monitor() as m:
            self._ready.set()
            while True:
                # The raw line: redis-py's next_command() joins the arguments with spaces.
                try:
                    line = m.connection.read_response()
                except redis.exceptions.TimeoutError:
                    continue  # a quiet moment on a loaded machine, not the end of the watch
                if self._marker in line:
                    return  # every command before stop() is read
                self.commands.append(_split(line.split("] ", 1)[1] if "] " in line else ""))

    def stop(self) -> None:
        poke = redis.Redis(**{k: v for k, v in self.client.connection_pool.connection_kwargs.items()
                              if k in ("host", "port", "db", "password")})
        poke.execute_command("PING", self._marker)
        poke.close()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the monitor never saw the stop marker"


def _split(line: str) -> list[str]:
    # MONITOR quotes each argument ("ZREVRANGE" "key" "0" ...) and escapes every byte that is
    # not printable ASCII as \xHH: undo that to get the argument's exact text back.
    return [a.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")
            for a in re.findall(r'"((?:[^"\\]|\\.)*)"', line)]


@pytest.fixture()
def harness(settings: Settings) -> Iterator[Harness]:
    client = redis.Redis.from_url(settings.redis)
    write_state(client, Keys(settings.key_prefix), reference_state(settings, shop_events(300)))
    client.close()
    h = Harness(settings)
    yield h
    h.close()


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.method, str(r.request.url), r.status_code, r.text[:300])
    body = orjson.loads(r.content) if r.headers.get("content-type", "").startswith("application/json") else None
    if r.request.url.path != "/metrics":
        assert body is not None, (str(r.request.url), r.headers.get("content-type"), r.text[:200])
    if r.status_code >= 400 and body is not None:
        assert ("error" in body and "detail" in body) or "errors" in body, body


ids = st.one_of(
    st.text(max_size=140),
    st.text(alphabet="abc019._:@/+-{}*?[] %\\\x00\n", max_size=40),
    st.sampled_from(["u1", "i1", "..", "../../etc", "%7B", "x}:hist", "{g}", "a" * 128, "a" * 129, "*"]),
)
params = st.dictionaries(
    st.one_of(st.sampled_from(["n", "exclude", "category", "strategy", "weights", "context"]), st.text(max_size=10)),
    st.one_of(st.text(max_size=60), st.integers(-10**12, 10**12).map(str),
              st.sampled_from(["10", "0", "101", "nan", "item_item:1", "tf:-1,trending:x", ",,,", "blend"])),
    max_size=4,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {"event_id": ids, "user_id": ids, "item_id": ids,
     "type": st.sampled_from(["view", "purchase", "add_to_cart", "forget_user", "", "VIEW", "x" * 40]),
     "timestamp": st.one_of(st.floats(allow_nan=False), st.integers(-2**63, 2**63 - 1), st.text(max_size=30))},
    optional={"category": st.one_of(st.text(max_size=70), st.integers(-2**63, 2**63 - 1)), "session_id": ids,
              "request_id": ids, "properties": json_values, "extra": json_values},
)
bodies = st.one_of(
    st.binary(max_size=300),
    # What orjson cannot produce but a client can send.
    st.sampled_from([b'{"timestamp": 1e400}', b'[' + b'9' * 400 + b']', b'{"events": NaN}', b'[[[[[[[[[[]]]]]]]]]]',
                     b'{"event_id":"e","user_id":"u","item_id":"i","type":"view","timestamp":' + b'9' * 40 + b'}',
                     b'\xff\xfe{}', b'{"a":' * 2000 + b'1' + b'}' * 2000]),
    json_values.map(orjson.dumps),
    event_like.map(orjson.dumps),
    st.lists(event_like, max_size=8).map(orjson.dumps),
    st.lists(event_like, max_size=3).map(lambda evs: orjson.dumps({"events": evs})),
)
HS = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


def test_fuzz_json_4xx_ids_stay_in_their_keys_and_only_answers_are_recorded(settings: Settings, harness: Harness) -> None:
    watch = KeyWatch(settings.redis)

    @HS
    @given(which=st.sampled_from(["recs", "similar", "history", "trending", "raw"]), id_=ids, q=params,
           raw_path=st.text(max_size=60))
    def one(which: str, id_: str, q: dict[str, str], raw_path: str) -> None:
        seg = quote(id_, safe="")
        url = {"recs": f"/v1/recommendations/{seg}", "similar": f"/v1/items/{seg}/similar",
               "history": f"/v1/users/{seg}/history", "trending": "/v1/trending",
               "raw": "/" + quote(raw_path, safe="/%?=&")}[which]
        _check(harness.request("GET", url, params=q))

    try:
        one()
        harness.flush()
    finally:
        watch.stop()
    prefix = settings.key_prefix
    grammar = re.compile(
        rf"^{prefix}:(\{{u:{_ID}\}}:(iw|cats|vec|clk)|\{{i:{_ID}\}}:(nbr|vec|us)"
        rf"|\{{g\}}:(pop|icat|meta|trend:[^\x00-\x1f\x7f]{{1,64}})|\{{m\}}:(current|v:.+))$")
    # The one key the reader writes: the record of an answer, named by the request id it made.
    served = re.compile(rf"^{prefix}:\{{r:[0-9a-f]{{32}}\}}$")
    touched = [c for c in watch.commands if c and c[0].upper() not in _NO_KEY and len(c) > 1
               and c[1].startswith(prefix + ":")]
    assert touched, "the monitor saw no reader command"
    reads = [c for c in touched if c[0].upper() in {"ZREVRANGE", "HGETALL", "HMGET", "HGET", "GET", "MGET", "ZMSCORE"}]
    writes = [c for c in touched if c not in reads]
    bad = [c[:2] for c in reads if not grammar.match(c[1])]
    bad += [[c[0], k] for c in reads if c[0].upper() == "MGET" for k in c[2:] if not grammar.match(k)]
    assert not bad, bad[:10]
    # Writes: only HSET + EXPIRE of answer records, whose fields are served items (valid ids)
    # and their sources, plus the strategy; nothing else the fuzzer sent is ever written.
    assert writes, "no answer was recorded"
    assert {c[0].upper() for c in writes} == {"HSET", "EXPIRE"}, {c[0] for c in writes}
    bad = [c[:2] for c in writes if not served.match(c[1])]
    assert not bad, bad[:10]
    for c in writes:
        if c[0].upper() == "EXPIRE":
            assert c[2:] == ["3600"], c
            continue
        fields = dict(zip(c[2::2], c[3::2], strict=True))
        assert fields.pop("#strategy") in {*STRATEGIES, SIMILAR_STRATEGY}, c
        assert fields and all(re.fullmatch(_ID, i) for i in fields), c
        assert set(fields.values()) <= set(SOURCES), c


def test_fuzz_writes_only_json_4xx(settings: Settings, harness: Harness) -> None:
    @HS
    @given(body=bodies, ctype=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
           delete_id=ids)
    def one(body: bytes, ctype: str, delete_id: str) -> None:
        headers = {"content-type": ctype} if ctype else {}
        r = harness.request("POST", "/v1/events", content=body, headers=headers)
        _check(r)
        if r.status_code in (202, 422) and "accepted" in r.json():
            assert r.json()["accepted"] + r.json()["rejected"] >= 1
        _check(harness.request("DELETE", f"/v1/users/{quote(delete_id, safe='')}"))

    one()
    for event in harness.sink.events:  # whatever was accepted is a valid, non-tombstone event...
        assert re.fullmatch(_ID, event.user_id) and re.fullmatch(_ID, event.event_id)
        assert event.type != "forget_user" or event.item_id == ""
