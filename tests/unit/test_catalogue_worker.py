"""The worker's catalogue applier without Redis or Kafka: what it sends to the script, dead
letters first and once, outages retried (streams/catalogue.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import redis.exceptions

from driftrec.keys import Keys
from driftrec.streams.catalogue import CatalogueApplier, CatalogueRecord
from driftrec.streams.processor import Backoff


class FakeClient:
    """register_script -> a callable that records its calls and fails the first ``fail`` times."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[list[str], list[Any]]] = []
        self.fail = fail
        self.log: list[str] = []

    def register_script(self, source: str) -> Any:
        assert "XADD" in source and "HINCRBY" in source

        async def script(keys: list[str], args: list[Any]) -> list[int]:
            self.log.append("script")
            if self.fail:
                self.fail -= 1
                raise redis.exceptions.ConnectionError("Redis went away")
            self.calls.append((keys, args))
            return [sum(1 for rec in args[5::4] if rec != ""), 0]

        return script


def rec(offset: int, key: bytes | None, value: bytes | None) -> CatalogueRecord:
    return CatalogueRecord("items", 0, offset, key, value)


def test_valid_records_go_to_the_script_and_bad_ones_move_only_the_offset() -> None:
    client = FakeClient()
    sent: list[tuple[CatalogueRecord, str]] = []

    async def dlq(dead: Sequence[tuple[CatalogueRecord, str]]) -> None:
        client.log.append("dlq")
        sent.extend(dead)

    applier = CatalogueApplier(client, Keys("p"), "items", dlq, feed_len=500)  # type: ignore[arg-type]
    records = [rec(0, b"a", b'{"item_id": "a", "title": "A", "price": 3}'),
               rec(1, b"b", b'{"item_id": "c"}'),  # key and id disagree
               rec(2, b"d", None),  # a null tombstone is not how driftrec deletes
               rec(3, b"e", b'{"op": "delete", "item_id": "e"}')]
    out = asyncio.run(applier.apply(records))
    assert (out.applied, len(out.dead)) == (2, 2)
    assert client.log == ["dlq", "script"]  # dead letters acknowledged before Redis moves the offset
    assert [r.offset for r, _ in sent] == [1, 2] and "differs" in sent[0][1] and "no value" in sent[1][1]
    (keys, args), = client.calls
    assert keys == [Keys("p").catalogue, Keys("p").catalogue_feed, Keys("p").catalogue_offsets]
    assert args[:2] == ["items", 500]
    groups = [args[i:i + 4] for i in range(2, len(args), 4)]
    assert [g[:3] for g in groups] == [[0, 0, "a"], [0, 1, ""], [0, 2, ""], [0, 3, "e"]]
    assert orjson.loads(groups[0][3]) == {"op": "upsert", "item_id": "a", "title": "A", "price": 3.0,
                                          "available": True}
    assert orjson.loads(groups[3][3]) == {"op": "delete", "item_id": "e"}


def test_an_outage_is_retried_without_sending_dead_letters_twice() -> None:
    client = FakeClient(fail=2)
    sends = []

    async def dlq(dead: Sequence[tuple[CatalogueRecord, str]]) -> None:
        sends.append(len(dead))

    applier = CatalogueApplier(client, Keys("p"), "items", dlq,  # type: ignore[arg-type]
                               backoff=Backoff(initial=0.001, maximum=0.002))
    out = asyncio.run(applier.apply([rec(0, b"x", b"{bad"), rec(1, b"y", b'{"item_id": "y"}')]))
    assert out.applied == 1 and sends == [1] and client.log == ["script"] * 3
