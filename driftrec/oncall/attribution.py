"""Click attribution: a click carrying a served answer's ``request_id`` is credited to its source."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from driftrec.keys import Keys
from driftrec.oncall.experiment_counts import ExperimentCounter

__all__ = ["Click", "Credit", "parse_click", "attribute", "Attributor", "STRATEGY_FIELD", "EXPERIMENT_FIELD",
           "VARIANT_FIELD", "TEAMS_FIELD"]

logger = logging.getLogger(__name__)

#: Field of ``P:{r:R}`` holding the answer's strategy; ``#`` can never start an item id.
STRATEGY_FIELD = "#strategy"
#: The experiment and variant an answer was served in (online/experiments.py writes them), and for
#: an interleaved answer the JSON object item -> variant that contributed it.
EXPERIMENT_FIELD = "#experiment"
VARIANT_FIELD = "#variant"
TEAMS_FIELD = "#teams"


@dataclass(frozen=True, slots=True)
class Click:
    request_id: str
    item_id: str
    type: str
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class Credit:
    """``source`` is None when the click could not be attributed; ``reason`` then says why.

    ``experiment`` and ``variant`` name the experiment the answer was served in and the variant
    credited with the item (for an interleaved answer, the one whose ranking contributed it).
    """

    click: Click
    strategy: str | None
    source: str | None
    reason: str | None
    experiment: str | None = None
    variant: str | None = None


def parse_click(raw: bytes | None) -> Click | None:
    """The attribution-relevant fields of one clicks-topic message, or None if it has no request_id.

    Full validation is the worker's job (bad events are dead-lettered there); here a message
    that is not a JSON object with string ``request_id`` and ``item_id`` is simply not counted.
    """
    if not raw or b"request_id" not in raw:  # cheap pre-filter: most clicks carry none
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    rid, item, kind, user = data.get("request_id"), data.get("item_id"), data.get("type"), data.get("user_id")
    if not isinstance(rid, str) or not isinstance(item, str) or not rid or not item:
        return None
    return Click(rid, item, kind if isinstance(kind, str) else "unknown", user if isinstance(user, str) else "")


def attribute(click: Click, served: dict[str, str]) -> Credit:
    """Credit one click given the answer's stored hash (empty when expired or never written)."""
    if not served:
        return Credit(click, None, None, "unknown_request")
    source = served.get(click.item_id)
    strategy = served.get(STRATEGY_FIELD, "unknown")
    experiment = served.get(EXPERIMENT_FIELD)
    if source is None:
        return Credit(click, strategy, None, "item_not_served", experiment)
    variant = served.get(VARIANT_FIELD)
    teams = served.get(TEAMS_FIELD)
    if teams is not None:
        try:
            variant = orjson.loads(teams).get(click.item_id)
        except (orjson.JSONDecodeError, AttributeError):
            variant = None
    return Credit(click, strategy, source, None, experiment, variant)


class Attributor:
    """Reads the clicks topic with its own consumer group and credits clicks via Redis."""

    def __init__(self, bootstrap: str, topic: str, group: str, client: aioredis.Redis, keys: Keys,
                 on_credit: Callable[[Credit], None]) -> None:
        self.topic = topic
        self.count = ExperimentCounter(keys)
        self.client = client
        self.keys = keys
        self.on_credit = on_credit
        # "latest": counters live in this process, so a new exporter counts from now on rather
        # than replaying days of clicks against answers whose keys expired long ago.
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                         auto_offset_reset="latest", enable_auto_commit=True)

    async def credit(self, clicks: Sequence[Click]) -> list[Credit]:
        if not clicks:
            return []
        pipe = self.client.pipeline(transaction=False)
        for c in clicks:
            pipe.hgetall(self.keys.served(c.request_id))
        rows = await pipe.execute()
        out = []
        served_rows = []
        for click, row in zip(clicks, rows, strict=True):
            served = {_s(k): _s(v) for k, v in row.items()}
            served_rows.append(served)
            out.append(attribute(click, served))
        # Experiment counters: more pipelines, only when a click was on an experiment's answer.
        await self.count.count(out, served_rows, self._execute)
        return out

    async def _execute(self, cmds: Sequence[Sequence[Any]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for cmd in cmds:
            pipe.execute_command(*cmd)
        return list(await pipe.execute())

    async def run(self) -> None:
        try:
            await self.consumer.start()
            while True:
                batch = await self.consumer.getmany(timeout_ms=1000, max_records=2000)
                clicks = [c for recs in batch.values() for c in _clicks(r.value for r in recs)]
                for credit in await self.credit(clicks):
                    self.on_credit(credit)
        except asyncio.CancelledError:
            raise
        finally:
            await self.consumer.stop()


def _clicks(values: Iterable[bytes | None]) -> Iterable[Click]:
    for v in values:
        c = parse_click(v)
        if c is not None:
            yield c


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x
