"""Experiments in the reader without Redis: definitions, the admin endpoint, sticky variants, records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from driftrec.catalogue import ItemFilter
from driftrec.experiments import (
    InvalidExperimentError,
    counts_key,
    definitions_key,
    load_experiments_file,
    parse_experiment,
    shoppers_key,
)
from driftrec.keys import Keys
from driftrec.models.blend import BlendWeights, Scored
from driftrec.models.experiments import assign
from driftrec.online.catalogue import CatalogueView
from driftrec.online.errors import EXCEPTION_HANDLERS
from driftrec.online.experiments import ExperimentRegistry
from driftrec.online.metrics import ReaderMetrics
from driftrec.online.model_cache import ModelCache
from driftrec.online.recommender import Answer
from driftrec.online.routes_experiments import experiment_routes
from driftrec.online.routes_recs import recommendation_routes
from driftrec.online.served import ServedRecorder
from driftrec.settings import Settings

KEY = "k-secret"


def two(a: dict[str, Any] | None = None, b: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"variants": [{"name": "control", "share": 0.5, **(a or {})},
                         {"name": "treat", "share": 0.5, **(b or {})}], **kw}


# --- definitions ------------------------------------------------------------------------------
@pytest.mark.parametrize("body, words", [
    (two(b={"share": 0.6}), "shares must add up to 1, they add up to 1.1"),
    (two(b={"strategy": "magic"}), "variants.1.strategy"),
    (two(b={"weights": {"nope": 1.0}}), "unknown blend sources: nope"),
    (two(b={"weights": {"tf": -1}}), "blend weight tf must be a finite number >= 0"),
    (two(b={"name": "control"}), "names must be unique"),
    ({"variants": [{"name": "a", "share": 1.0}]}, "at least 2"),
    (two(start="2026-01-02T00:00:00Z", stop="2026-01-01T00:00:00Z"), "stop must be after start"),
    ({"method": "interleave", "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "exactly two"),
    (two(b={"model_version": "v 1"}), "variants.1.model_version"),
    (two(extra=1), "extra"),
])
def test_bad_definitions_are_named(body: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidExperimentError, match=None) as exc:
        parse_experiment(body, "e1")
    assert words in str(exc.value)
    assert exc.value.http_status_code() == 422


def test_interleave_ignores_shares_and_file_loads(tmp_path: Any) -> None:
    exp = parse_experiment({"method": "interleave", "variants": [{"name": "a"}, {"name": "b", "strategy": "tf"}]}, "i")
    assert exp.shares == (0.5, 0.5)
    f = tmp_path / "exp.yaml"
    f.write_text("experiments:\n  - name: e1\n    variants: [{name: a, share: 0.25}, {name: b, share: 0.75}]\n")
    (e,) = load_experiments_file(f)
    assert e.name == "e1" and e.shares == (0.25, 0.75)
    f.write_text("experiments:\n  - name: e1\n    variants: [{name: a, share: 0.5}, {name: b, share: 0.6}]\n")
    with pytest.raises(InvalidExperimentError, match="experiment 0: variants: shares must add up to 1"):
        load_experiments_file(f)


# --- a reader with a fake store -----------------------------------------------------------------
class FakeStore:
    """Just the commands the experiment code sends, on dicts."""

    def __init__(self) -> None:
        self.keys = Keys("t")
        self.hashes: dict[str, dict[str, str]] = {}
        self.strings: set[str] = set()
        self.sets: dict[str, set[str]] = {}

    async def execute(self, commands: list[list[Any]]) -> list[Any]:
        out: list[Any] = []
        for cmd in commands:
            op, key, *args = cmd
            h = self.hashes.setdefault(key, {}) if op.startswith("H") else None
            if op == "HGETALL":
                out.append([x for kv in self.hashes.get(key, {}).items() for x in kv])
            elif op == "HSET":
                assert h is not None
                for f, v in zip(args[::2], args[1::2], strict=True):
                    h[str(f)] = v.decode() if isinstance(v, bytes) else str(v)
                out.append(1)
            elif op == "HDEL":
                assert h is not None
                out.append(int(h.pop(args[0], None) is not None))
            elif op == "HINCRBY":
                assert h is not None
                h[args[0]] = str(int(h.get(args[0], "0")) + int(args[1]))
                out.append(int(h[args[0]]))
            elif op == "DEL":
                gone = 0
                for k in (key, *args):
                    gone += (self.hashes.pop(k, None) is not None) + (self.sets.pop(k, None) is not None)
                out.append(gone)
            elif op == "EXISTS":
                out.append(int(key in self.strings or key in self.hashes))
            elif op == "EXPIRE":
                out.append(1)
            elif op == "SADD":
                members = self.sets.setdefault(key, set())
                out.append(int(args[0] not in members))
                members.add(args[0])
            else:
                raise AssertionError(op)
        return out


class FakeRec:
    """Ranks by the weights it is given: tf-heavy weights give t-items, the rest i-items."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.weights = BlendWeights()
        self.snapshot = None
        self.catalogue = CatalogueView(None, Keys())  # the Recommender's: variants share it
        self.calls: list[BlendWeights] = []

    async def for_user(self, user: str, n: int, *, exclude: Sequence[str] = (), category: str | None = None,
                       weights: BlendWeights | None = None, context: Sequence[str] = (),
                       rule: ItemFilter | None = None) -> Answer:
        w = weights or self.weights
        self.calls.append(w)
        src, p = ("tf", "t") if w.tf > w.item_item else ("item_item", "i")
        return Answer([Scored(f"{p}{k}", 1.0 / (k + 1), src, "r") for k in range(n)], "v0", False)

    async def for_user_ranked(self, user: str, n: int, weights: Sequence[BlendWeights], **kw: Any) -> list[Answer]:
        return [await self.for_user(user, n, weights=w, **kw) for w in weights]

    def degraded(self, n: int, category: str | None, exclude: set[str], rule: ItemFilter | None = None) -> Answer:
        return Answer([Scored("pop", 1.0, "trending", "popular now")], "v0", True)


class Reader:
    def __init__(self, **kw: Any) -> None:
        self.settings = Settings(redis_url="redis://127.0.0.1:9/0", kafka_bootstrap_servers="127.0.0.1:9",
                                 api_keys=(KEY,), **kw)
        self.store = FakeStore()
        self.rec = FakeRec(self.settings)
        self.now = 1_800_000_000.0

        async def no_parts(version: str, parts: Sequence[str]) -> dict[str, bytes | None]:
            return {p: None for p in parts}

        self.registry = ExperimentRegistry(
            self.store, "t", self.rec, clock=lambda: self.now,  # type: ignore[arg-type]
            model_cache=lambda: ModelCache(no_parts, default_reg=0.1, pool_size=10))
        self.recorder = ServedRecorder(self.store.execute, self.store.keys, lambda outcome, n: None)  # type: ignore[arg-type]
        self.app = Starlette(routes=[
            *recommendation_routes(self.rec, ReaderMetrics(), self.recorder,  # type: ignore[arg-type]
                                   experiments=self.registry),
            *experiment_routes(self.settings, self.registry)], exception_handlers=EXCEPTION_HANDLERS)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://r")

    async def put(self, name: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
        return await self.client.put(f"/v1/experiments/{name}", content=orjson.dumps(body),
                                     headers={"X-API-Key": key} if key else {})

    async def recs(self, user: str, query: str = "") -> dict[str, Any]:
        r = await self.client.get(f"/v1/recommendations/{user}?n=4{query}")
        assert r.status_code == 200, r.text
        await self.recorder.flush()
        return dict(r.json())


async def test_no_experiment_costs_nothing_and_records_as_before() -> None:
    r = Reader()
    assert r.registry.active == ()
    body = await r.recs("u1")
    assert "experiment" not in body and body["strategy"] == "blend"
    assert r.store.hashes[r.store.keys.served(body["request_id"])]["#strategy"] == "blend"


async def test_admin_endpoint_defines_and_answers_name_the_sticky_variant() -> None:
    r = Reader()
    assert (await r.put("e1", two(b={"weights": {"tf": 5.0}}), key=None)).status_code == 401
    assert (await r.put("e1", two(b={"weights": {"tf": 5.0}}), key="wrong")).status_code == 401
    resp = await r.put("e1", two(b={"weights": {"tf": 5.0}}))
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "running" and resp.json()["defined_in"] == "api"
    assert r.store.hashes[definitions_key("t")]["e1"]
    seen: dict[str, str] = {}
    for k in range(40):
        user = f"u{k}"
        body = await r.recs(user)
        exp = body["experiment"]
        assert exp["name"] == "e1" and exp["method"] == "ab" and "fallback" not in exp
        want = ("control", "treat")[assign("e1", user, (0.5, 0.5))]
        assert exp["variant"] == want
        assert body["items"][0]["source"] == ("tf" if want == "treat" else "item_item")
        again = await r.recs(user)
        assert again["experiment"]["variant"] == want  # sticky
        record = r.store.hashes[r.store.keys.served(body["request_id"])]
        assert record["#experiment"] == "e1" and record["#variant"] == want and record["#user"] == user
        seen[user] = want
    counts = r.store.hashes[counts_key("t", "e1")]
    n_treat = sum(v == "treat" for v in seen.values())
    assert int(counts["answers|treat"]) == 2 * n_treat and int(counts["answers|control"]) == 2 * (40 - n_treat)
    # The shoppers, each once: the unit the split is checked and compared on.
    assert r.store.sets[shoppers_key("t", "e1", "treat")] == {u for u, v in seen.items() if v == "treat"}
    assert len(r.store.sets[shoppers_key("t", "e1", "control")]) == 40 - n_treat
    # A caller that picks its own strategy is not in the experiment.
    assert "experiment" not in await r.recs("u1", "&strategy=tf")


async def test_admin_errors() -> None:
    r = Reader()
    assert (await r.client.get("/v1/experiments/nope")).status_code == 404
    assert (await r.client.delete("/v1/experiments/nope", headers={"X-API-Key": KEY})).status_code == 404
    bad = await r.put("e1", two(b={"share": 0.7}))
    assert bad.status_code == 422 and "shares must add up to 1" in bad.json()["detail"]
    assert (await r.put("e1", two(b={"strategy": "magic"}))).status_code == 422
    missing = await r.put("e1", two(b={"model_version": "v9"}))
    assert missing.status_code == 422 and "no published model v9" in missing.json()["detail"]
    assert (await r.put("e1", {**two(), "name": "other"})).status_code == 422
    assert (await r.client.put("/v1/experiments/e1", content=b"{", headers={"X-API-Key": KEY})).status_code == 400
    assert (await r.client.get("/v1/experiments/a%20b")).status_code == 400
    assert (await r.put("e1", two())).status_code == 201
    clash = await r.put("e2", two())
    assert clash.status_code == 409 and "overlaps e1" in clash.json()["detail"]
    # Scheduled after e1 stops: no overlap.
    assert (await r.put("e1", two(stop="2027-06-01T00:00:00Z"))).status_code == 200
    assert (await r.put("e2", two(start="2027-06-01T00:00:00Z"))).status_code == 201
    listed = (await r.client.get("/v1/experiments")).json()["experiments"]
    assert [(e["name"], e["status"]) for e in listed] == [("e1", "running"), ("e2", "scheduled")]
    await r.recs("u1")
    assert any(k.startswith("t:{x}:exp:e1:shoppers:") for k in r.store.sets)
    assert (await r.client.delete("/v1/experiments/e1", headers={"X-API-Key": KEY})).status_code == 200
    assert (await r.client.get("/v1/experiments/e1")).status_code == 404
    assert not any(k.startswith("t:{x}:exp:e1") for k in [*r.store.sets, *r.store.hashes])


async def test_stopped_experiment_no_longer_applies() -> None:
    r = Reader()
    assert (await r.put("e1", two(stop="2027-06-01T00:00:00Z"))).status_code == 201
    assert "experiment" in await r.recs("u1")
    r.now = 1_900_000_000.0  # 2030
    assert "experiment" not in await r.recs("u1")


async def test_variant_whose_model_is_gone_falls_back_and_says_so() -> None:
    r = Reader()
    model_key = r.store.keys.model_blob("v7", "item_ids")
    r.store.strings.add(model_key)
    body = two(a={"share": 0.5}, b={"share": 0.5, "model_version": "v7"})
    assert (await r.put("e1", body)).status_code == 201
    r.store.strings.discard(model_key)  # the trainer deleted the version
    await r.registry.refresh()
    treat = next(u for u in (f"u{k}" for k in range(100)) if assign("e1", u, (0.5, 0.5)) == 1)
    got = await r.recs(treat)
    assert got["experiment"]["variant"] == "treat"
    assert got["experiment"]["fallback"] == "model v7 is not available: default strategy served"
    assert got["items"][0]["source"] == "item_item"  # the default blend
    record = r.store.hashes[r.store.keys.served(got["request_id"])]
    assert record["#fallback"] == "1" and record["#variant"] == "treat"
    assert r.store.hashes[counts_key("t", "e1")]["fallback|treat"] == "1"


async def test_interleaved_answer_credits_each_item_to_its_variant() -> None:
    r = Reader()
    body = {"method": "interleave", "variants": [{"name": "base"}, {"name": "tfv", "weights": {"tf": 5.0}}]}
    assert (await r.put("il", body)).status_code == 201
    got = await r.recs("u5")
    assert got["experiment"] == {"name": "il", "variant": "interleaved", "method": "interleave"}
    items = got["items"]
    assert len(items) == 4
    record = r.store.hashes[r.store.keys.served(got["request_id"])]
    teams = orjson.loads(record["#teams"])
    for x in items:
        assert teams[x["item_id"]] == ("tfv" if x["item_id"].startswith("t") else "base")
        assert x["source"] == ("tf" if x["item_id"].startswith("t") else "item_item")
    assert sorted(teams.values()) == ["base", "base", "tfv", "tfv"]
    assert record["#user"] == "u5"
    counts = r.store.hashes[counts_key("t", "il")]
    assert counts["answers|interleaved"] == "1"
    assert sum(int(v) for f, v in counts.items() if f.startswith("first|")) == 1


async def test_file_experiments_run_and_cannot_be_changed_through_the_endpoint() -> None:
    r = Reader()
    (exp,) = [parse_experiment(two(b={"strategy": "tf"}), "from-file")]
    r.registry.file = {exp.name: exp}
    r.registry._compile()
    got = await r.recs("u3")
    assert got["experiment"]["name"] == "from-file"
    listed = (await r.client.get("/v1/experiments")).json()["experiments"]
    assert [(e["name"], e["defined_in"]) for e in listed] == [("from-file", "file")]
    assert (await r.put("from-file", two())).status_code == 409
    assert (await r.client.delete("/v1/experiments/from-file", headers={"X-API-Key": KEY})).status_code == 409


async def test_a_failed_refresh_keeps_the_known_experiments() -> None:
    r = Reader()
    assert (await r.put("e1", two())).status_code == 201

    async def down(commands: list[list[Any]]) -> list[Any]:
        raise ConnectionError("redis down")

    r.store.execute = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await r.registry.refresh()
    assert [x.exp.name for x in r.registry.active] == ["e1"]
    assert r.registry.pick("u1") is not None
