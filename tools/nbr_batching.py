"""The same clicks through the batch processor in batches of different sizes, and how far apart
the neighbour rows they leave are (issue 22: rows that do not depend on batch boundaries).

Shared by tests/integration/test_nbr_batching.py and benchmarks/nbr_batching.py. Each run gets a
fresh private ``redis-server`` (no persistence), the decay landmark pinned to the stream's first
click before the first batch (a batch of 1 and a batch of 2,000 would otherwise start from
different landmarks), and the worker's own code: :class:`BatchProcessor` on :class:`RedisState`,
vectors off (they never touch a neighbour row).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from driftrec.keys import Keys
from driftrec.models.decay import SCORE_SCALE, DecayPolicy, EventWeights
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams.processor import BatchProcessor, RawRecord
from driftrec.streams.redis_state import RedisState
from tools.chaos.scale import redis_cpu_s
from tools.chaos.stack import PrivateRedis

__all__ = ["Rows", "RowsCompared", "live_clicks", "private_redis", "apply_in_batches", "read_rows", "compare",
           "one_view", "run_sizes", "redis_cost"]

logger = logging.getLogger(__name__)

#: Stream start (event time, 2026-09-21): fixed, so that every run of a measurement sees the same clicks.
START = 1_790_000_000.0
PARTITIONS = 4

Rows = dict[str, list[tuple[str, float]]]  # item -> neighbours, best first (ZREVRANGE order)


def live_clicks(n: int, *, seed: int = 7, shoppers: int = 10_000, users: int = 50_000, items: int = 10_000,
                categories: int = 20) -> list[RawRecord]:
    """``n`` clicks as ``driftrec simulate`` makes them (its defaults: ~``shoppers`` interleaved
    sessions, 2,000 clicks/s of event time), in stream order, over :data:`PARTITIONS` partitions
    by user as the publisher's key puts them (a stable hash instead of Kafka's murmur2: only
    "one shopper, one partition" matters here, since a batch is planned in (partition, offset)
    order and that keeps each shopper's clicks in order whatever the batch size)."""
    sim = ShopSimulator.live(rate=2000.0, shoppers=shoppers, n_users=users, n_items=items, n_categories=categories,
                             seed=seed, start=START)
    next_offset = [0] * PARTITIONS
    out: list[RawRecord] = []
    for e in itertools.islice(sim.events(n), n):
        part = zlib.crc32(str(e["user_id"]).encode()) % PARTITIONS
        out.append(RawRecord("clicks", part, next_offset[part], orjson.dumps(e)))
        next_offset[part] += 1
    return out


@contextmanager
def private_redis(config: Sequence[str] = ()) -> Iterator[str]:
    """A :class:`PrivateRedis` of this process's own on a free port, without persistence, with
    ``config`` (``name value ...``, e.g. ``zset-max-listpack-entries 256``); its URL."""
    with tempfile.TemporaryDirectory(prefix="nbr-redis-") as home:
        server = PrivateRedis(Path(home), persist=False, config=config)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def first_click_time(raws: Sequence[RawRecord]) -> float:
    return min(float(orjson.loads(r.value or b"{}")["timestamp"]) for r in raws)


async def apply_in_batches(s: Settings, raws: Sequence[RawRecord], batch: int, *, landmark: float,
                           state_kwargs: dict[str, Any] | None = None) -> float:
    """Apply ``raws`` in order, ``batch`` records per :meth:`BatchProcessor.process`, on ``s.redis``
    with the landmark pinned at ``landmark``; returns the seconds it took. ``state_kwargs``
    override :class:`RedisState`'s arguments (the bounds under test)."""
    keys = Keys(s.key_prefix)
    sync = redis.Redis.from_url(s.redis)
    sync.hset(keys.meta, mapping={"landmark": repr(float(landmark)), "score_scale": repr(SCORE_SCALE)})
    sync.close()
    client = aioredis.Redis.from_url(s.redis, socket_timeout=60)
    kwargs: dict[str, Any] = {"window": s.cooc_window, "history_len": s.history_len,
                              "neighbours_k": s.neighbours_cut, "trending_k": s.trending_k}
    kwargs.update(state_kwargs or {})
    state = RedisState(client, keys, "clicks", **kwargs)

    async def sink(dead: Any) -> None:
        raise AssertionError(f"no dead letters expected: {dead[:3]}")

    proc = BatchProcessor(s.model_copy(update={"clicks_topic": "clicks"}), state, sink, None)
    started = time.perf_counter()
    try:
        for i in range(0, len(raws), batch):
            out = await proc.process(raws[i:i + batch])
            assert not out.dead and out.applied + out.skipped == len(raws[i:i + batch]), out
    finally:
        await client.aclose()
    return time.perf_counter() - started


def read_rows(url: str, keys: Keys) -> Rows:
    """Every item's whole neighbour row as stored, best first."""
    client = redis.Redis.from_url(url, decode_responses=True)
    names = sorted(client.scan_iter(match=keys.item_nbrs("*"), count=2000))
    rows: Rows = {}
    for i in range(0, len(names), 1000):
        pipe = client.pipeline(transaction=False)
        for name in names[i:i + 1000]:
            pipe.zrevrange(name, 0, -1, withscores=True)
        for name, row in zip(names[i:i + 1000], pipe.execute(), strict=True):
            rows[name] = [(m, float(v)) for m, v in row]
    client.close()
    return rows


def one_view(s: Settings) -> float:
    """The stored score one view adds at the landmark (a click at the landmark's own time)."""
    w = EventWeights(s.event_weights).weight("view")
    return DecayPolicy(s.half_life_s).increment(w, 0.0, 0.0)


@dataclass
class RowsCompared:
    """Two runs' rows, each cut to its first ``k`` (the reader reads the first ``neighbours_read``)."""

    k: int
    rows: int  # items with a row in either run
    identical: int  # rows the same in both: the same members in the same order with the same scores
    max_diff_views: float  # largest |score a - score b| of a member in either cut row, in views
    # (a member cut from a row counts with score 0 there: the evidence it lost)
    rows_longer_than_k: int  # rows (in run a) that hold more than k members: the ones a cut can change

    @property
    def fraction(self) -> float:
        return self.identical / self.rows if self.rows else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction_identical": round(self.fraction, 6)}


def compare(a: Rows, b: Rows, k: int, view: float) -> RowsCompared:
    """How far the first ``k`` of each row of ``a`` is from the first ``k`` of ``b``'s."""
    identical, worst, longer = 0, 0.0, 0
    names = set(a) | set(b)
    for name in names:
        ra, rb = a.get(name, []), b.get(name, [])
        longer += len(ra) > k
        if ra[:k] == rb[:k]:
            identical += 1
            continue
        full_a, full_b = dict(ra), dict(rb)
        for member in {m for m, _ in ra[:k]} | {m for m, _ in rb[:k]}:
            worst = max(worst, abs(full_a.get(member, 0.0) - full_b.get(member, 0.0)) / view)
    return RowsCompared(k, len(names), identical, worst, longer)


def redis_cost(url: str, keys: Keys) -> dict[str, float]:
    """Redis' CPU seconds so far, its dataset bytes, and the bytes of every neighbour row (``MEMORY USAGE``)."""
    client = redis.Redis.from_url(url)
    names = list(client.scan_iter(match=keys.item_nbrs("*"), count=2000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    row_bytes = sum(pipe.execute()) if names else 0
    out = {"redis_cpu_s": redis_cpu_s(client),
           "used_memory_dataset": float(client.info("memory")["used_memory_dataset"]),
           "nbr_rows": float(len(names)), "nbr_row_bytes": float(row_bytes)}
    client.close()
    return out


def run_sizes(s: Settings, raws: Sequence[RawRecord], sizes: Sequence[int],
              state_kwargs: dict[str, Any] | None = None, redis_config: Sequence[str] = (),
              ) -> tuple[dict[int, Rows], dict[int, dict[str, float]]]:
    """Each batch size on a fresh private Redis: the rows each left, and what each run cost
    (``seconds``, Redis CPU seconds, dataset and neighbour-row bytes: :func:`redis_cost`)."""
    landmark = first_click_time(raws)
    rows: dict[int, Rows] = {}
    costs: dict[int, dict[str, float]] = {}
    keys = Keys(s.key_prefix)
    for size in sizes:
        with private_redis(redis_config) as url:
            run = s.model_copy(update={"redis_url": url})
            cpu0 = redis_cost(url, keys)["redis_cpu_s"]
            seconds = asyncio.run(apply_in_batches(run, raws, size, landmark=landmark, state_kwargs=state_kwargs))
            cost = redis_cost(url, keys)
            cost["redis_cpu_s"] -= cpu0
            costs[size] = {"seconds": seconds, **cost}
            rows[size] = read_rows(url, keys)
    return rows, costs
