"""Where an overlapped micro-batch's time goes: the batch processor alone, step by step.

Usage: python benchmarks/processor_split.py [--events 150000] [--model] [--rounds 2] [--apply-split]
                                            [--out benchmarks/results/processor_split.json]

Feeds the write-path benchmark's simulator clicks (5,000 users, 10,000 items, seed 7; ``--model``
publishes item factors first, for the fold-in mode, else ISGD vectors) to
:meth:`driftrec.streams.processor.BatchProcessor.feed` in ``batch_max_events`` slices across 4 partitions,
as the worker does, against a private ``redis-server`` (flushed before each round). Each step is
timed by wrapping it (wall time, µs per event): ``parse`` (decoding and validation), ``load`` (the
load script's round trip and the decoding of its reply, ISGD partner loads included),
``load_item_vecs`` (those partner loads alone), ``plan``, ``prepare_apply`` (payload and carry),
and ``apply_round_trip`` (from sending a batch's apply to reading its reply: the next batch's plan
and prepare run inside it). Also the process' CPU and Redis' CPU (``INFO cpu``) per event: when the
wall time per event is above both, part of the work is still not overlapped.

``--apply-split`` also splits the apply script's Redis time (``apply_split`` in the JSON): the
commands it runs inside (``INFO commandstats`` of the last round, µs per event), what the payloads
hold (bytes, ops and sorted-set pairs per event), and the server time of partial scripts run over
the last round's real payloads: ``cmsgpack.unpack`` alone, then also walking the ``z`` ops and
building their member and argument tables as the script does, then also one ``ZMSCORE`` call per
``z`` op on a one-member scratch key (the cost of the call itself, not of the lookups).

``--plan-ceiling`` asks what a free ``plan_batch`` would give (``plan_ceiling`` in the JSON): each
round runs twice on a flushed Redis, first recording every batch's ``plan_batch`` result (and its
time), then replaying those results instead of computing them; everything else is the same code
on the same inputs. The replayed round's events/s against the plain rounds' median is the ceiling
of making the pair arithmetic cost nothing (a native ``plan_batch``, say); the recorded round's
own numbers include the copies it makes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import itertools
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from write_path import publish_random_model  # noqa: E402

from driftrec.keys import Keys  # noqa: E402
from driftrec.settings import Settings  # noqa: E402
from driftrec.simulator import ShopSimulator  # noqa: E402
from driftrec.streams.processor import BatchProcessor, RawRecord  # noqa: E402
from driftrec.streams.published import FactorCache  # noqa: E402
from driftrec.streams.redis_state import RedisState  # noqa: E402
from tools import benchinfo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


#: The write-path benchmark's shop, which the processor-alone benchmarks replay.
SHOP = {"users": 5000, "items": 10_000, "categories": 20, "seed": 7}


def shop_clicks(n: int) -> tuple[list[bytes], list[str]]:
    """The first ``n`` clicks of :data:`SHOP` as JSON, and its catalogue."""
    sim = ShopSimulator(n_users=SHOP["users"], n_items=SHOP["items"], n_categories=SHOP["categories"],
                        seed=SHOP["seed"])
    return [orjson.dumps(e) for e in itertools.islice(sim.events(n), n)], list(sim.item_ids)


def replay_parser(doc: str | None, events: int = 100_000, rounds: int = 3) -> argparse.ArgumentParser:
    """The options of the benchmarks that run the processor alone on :data:`SHOP`."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=events)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--model", action="store_true", help="publish item factors first (fold-in mode)")
    ap.add_argument("--out", type=Path)
    return ap


def split_settings(port: int = 1, **overrides: Any) -> Settings:
    """The settings :func:`one_round` runs with: no Kafka, Redis on ``port``, keys under ``split``."""
    return Settings(kafka_bootstrap_servers="127.0.0.1:1", redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="split",
                    **overrides)


def replay_setup(doc: str | None) -> tuple[argparse.Namespace, list[bytes], list[str], Settings, Keys]:
    """Parsed :func:`replay_parser` options, the clicks and catalogue of :data:`SHOP`, and the
    settings and keys of :func:`one_round`: what a benchmark replaying one round's batches needs."""
    args = replay_parser(doc).parse_args()
    rows, items = shop_clicks(args.events)
    settings = split_settings()
    return args, rows, items, settings, Keys(settings.key_prefix)


def replay_head(args: argparse.Namespace, payloads: list[bytes], real: dict[str, Any]) -> dict[str, Any]:
    """The first fields of a replaying benchmark's result: mode, size and the recorded round's rates."""
    return {"vectors": "fold-in" if args.model else "isgd", "events": args.events, "batches": len(payloads),
            "real_run": {k: real[k] for k in ("events_per_s", "python_cpu_us_per_event", "redis_cpu_us_per_event")}}


@contextlib.contextmanager
def private_redis(prefix: str) -> Iterator[int]:
    """A private ``redis-server`` (no persistence) for the ``with`` block; yields its port."""
    import reader as bench  # benchmarks/reader.py

    port = bench.free_port()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    proc = bench.private_redis(port, work)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


class Timer:
    """Wall time and calls per wrapped step."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def add(self, name: str, started: float) -> None:
        self.seconds[name] += time.perf_counter() - started
        self.calls[name] += 1

    def wrap_async(self, obj: Any, attr: str, name: str) -> None:
        f = getattr(obj, attr)

        async def timed(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return await f(*a, **k)
            finally:
                self.add(name, started)
        setattr(obj, attr, timed)

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        f = getattr(obj, attr)

        def timed(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                self.add(name, started)
        setattr(obj, attr, timed)

    def wrap_send_apply(self, state: RedisState) -> None:
        send: Callable[..., Any] = state.send_apply

        async def timed(prepared: Any) -> asyncio.Future[int]:
            pending = await send(prepared)
            started = time.perf_counter()

            async def reply() -> int:
                try:
                    return await pending
                finally:
                    self.add("apply_round_trip", started)
            return asyncio.ensure_future(reply())
        state.send_apply = timed  # type: ignore[method-assign]


def _partial_script(per_z_op: str) -> str:
    """A script that decodes the payload and, for each ``z`` op, builds its member and argument
    tables as apply_ops.lua does, then runs ``per_z_op`` (Lua; ``members``/``m`` in scope)."""
    return f"""local p = cmsgpack.unpack(ARGV[1])
for _, op in ipairs(p.ops) do
  local kv = op[4]
  if op[2] == 'z' and #kv > 0 then
    local members, m = {{}}, 0
    for x = 1, #kv, 2 do m = m + 1; members[m] = kv[x] end
    local args, a = {{}}, 0
    for y = 1, m do args[a + 1] = kv[2 * y]; args[a + 2] = members[y]; a = a + 2 end
    {per_z_op}
  end
end
return 1"""


#: Each one does what the one before does, and more (see the module docstring).
_PARTIAL_SCRIPTS = {
    "unpack": "local p = cmsgpack.unpack(ARGV[1]) return 1",
    "unpack_walk_z": _partial_script(""),
    "unpack_walk_zmscore_call": _partial_script("redis.call('ZMSCORE', KEYS[1], unpack(members, 1, m))"),
}


def apply_split(sync: redis.Redis, payloads: list[bytes], n: int, inside: dict[str, Any]) -> dict[str, Any]:
    """See the module docstring (``--apply-split``)."""
    kinds: collections.Counter[str] = collections.Counter()
    pairs = 0
    for raw in payloads:
        for op in msgpack.unpackb(raw, raw=True, strict_map_key=False)[b"ops"]:
            kinds[op[1].decode()] += 1
            if op[1] == b"z":
                pairs += len(op[3]) // 2
    scratch = "split:scratch"
    sync.zadd(scratch, {"x": 1.0})
    partial = {}
    for name, source in _PARTIAL_SCRIPTS.items():
        sha = sync.script_load(source)
        sync.config_resetstat()
        for raw in payloads:
            sync.evalsha(sha, 1, scratch, raw)
        partial[name] = round(sync.info("commandstats")["cmdstat_evalsha"]["usec"] / n, 2)
    return {
        "real_apply_usec_per_event_by_command": {k.removeprefix("cmdstat_"): round(v["usec"] / n, 2)
                                                 for k, v in inside.items() if v["usec"] / n >= 0.05},
        "payload_bytes_per_event": round(sum(map(len, payloads)) / n, 1),
        "ops_per_event": {k: round(v / n, 2) for k, v in kinds.items()},
        "z_pairs_per_event": round(pairs / n, 2),
        "partial_script_server_usec_per_event": partial,
    }


async def one_round(port: int, rows: list[bytes], item_ids: list[str], model: bool,
                    split: bool = False, record: list[bytes] | None = None,
                    record_loads: list[tuple[int, list[str], list[bytes]]] | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """One round on a flushed Redis; ``record`` receives every apply payload sent, in order;
    ``record_loads`` every load script call, as ``(applies sent before it, keys, args)``;
    ``overrides``: settings that differ from the defaults."""
    s = split_settings(port, **overrides)
    sync = redis.Redis(port=port)
    sync.flushall()
    keys = Keys(s.key_prefix)
    if model:
        publish_random_model(sync, s, item_ids)
    client = aioredis.Redis.from_url(s.redis)
    # A recorded round replays apply_batch.lua's payloads: one script per batch, as chunk cost 0 sends.
    recorded = split or record is not None or record_loads is not None
    state = RedisState(client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                       neighbours_k=s.neighbours_k, trending_k=s.trending_k,
                       chunk_cost=0 if recorded else s.apply_chunk_cost)

    async def sink(dead: Any) -> None:
        pass

    proc = BatchProcessor(s, state, sink, FactorCache(client, keys, s.fold_in_regularization))
    timer = Timer()
    timer.wrap(proc, "parse", "parse")
    timer.wrap_async(state, "load", "load")
    timer.wrap_async(state, "load_item_vecs", "load_item_vecs")
    timer.wrap_async(proc, "_plan", "plan")
    timer.wrap(state, "prepare_apply", "prepare_apply")
    timer.wrap_send_apply(state)
    payloads: list[bytes] = [] if record is None else record
    if recorded:
        send: Callable[..., Any] = state.send_apply

        async def keep(prepared: Any) -> Any:
            payloads.append(prepared.payload)
            return await send(prepared)
        state.send_apply = keep  # type: ignore[method-assign]
    if record_loads is not None:
        script = state._load

        async def load(keys: list[str], args: list[bytes]) -> Any:
            record_loads.append((len(payloads), keys, args))
            return await script(keys=keys, args=args)
        state._load = load  # type: ignore[assignment]
    # 4 partitions, offsets per partition, each batch a slice across them (the worker's view).
    raws = [RawRecord(s.clicks_topic, j % 4, j // 4, v) for j, v in enumerate(rows)]
    sync.config_resetstat()
    cpu0 = sync.info("cpu")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for i in range(0, len(raws), s.batch_max_events):
        await proc.feed(raws[i:i + s.batch_max_events], i)
    await proc.flush()
    took = time.perf_counter() - started
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu1 = sync.info("cpu")
    inside = sync.info("commandstats")
    applied = int(sync.hget(keys.meta, "applied_events") or 0)
    await client.aclose()
    n = len(raws)

    def us(seconds: float) -> float:
        return round(seconds / n * 1e6, 1)

    return {
        "events": n, "applied": applied, "events_per_s": round(n / took, 1), "wall_us_per_event": us(took),
        "python_cpu_us_per_event": us(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime),
        "redis_cpu_us_per_event": us(sum(cpu1[k] - cpu0[k] for k in ("used_cpu_sys", "used_cpu_user"))),
        "step_wall_us_per_event": {k: us(v) for k, v in timer.seconds.items()},
        "step_calls": dict(timer.calls),
        **({"apply_split": apply_split(sync, payloads, n, inside)} if split else {}),
    }


def plan_ceiling(port: int, rows: list[bytes], item_ids: list[str], model: bool) -> dict[str, Any]:
    """One recorded and one replayed round (see ``--plan-ceiling``)."""
    import driftrec.streams.processor as processor

    real = processor.plan_batch
    recorded: list[Any] = []
    spent = [0.0]

    def record(*a: Any, **k: Any) -> Any:
        started = time.perf_counter()
        delta = real(*a, **k)
        spent[0] += time.perf_counter() - started
        recorded.append(copy.deepcopy(delta))
        return delta

    served = iter(recorded)

    def replay(*a: Any, **k: Any) -> Any:
        return next(served)

    try:
        processor.plan_batch = record
        computed = asyncio.run(one_round(port, rows, item_ids, model))
        processor.plan_batch = replay
        free = asyncio.run(one_round(port, rows, item_ids, model))
    finally:
        processor.plan_batch = real
    keep = ("events_per_s", "python_cpu_us_per_event", "redis_cpu_us_per_event", "applied")
    return {"computed": {k: computed[k] for k in keep}, "replayed": {k: free[k] for k in keep},
            "plan_batch_us_per_event": round(spent[0] / len(rows) * 1e6, 1)}


def main() -> None:
    ap = replay_parser(__doc__, events=150_000, rounds=2)
    ap.add_argument("--apply-split", action="store_true", help="also split the apply script's Redis time")
    ap.add_argument("--plan-ceiling", action="store_true", help="also measure a round with plan_batch made free")
    args = ap.parse_args()
    machine = benchinfo.machine(["redis", "orjson", "numpy"])
    rows, items = shop_clicks(args.events)
    with private_redis("driftrec-split-") as port:
        rounds = [asyncio.run(one_round(port, rows, items, args.model,
                                        args.apply_split and r == args.rounds - 1)) for r in range(args.rounds)]
        ceilings = ([plan_ceiling(port, rows, items, args.model) for _ in range(args.rounds)]
                    if args.plan_ceiling else [])
    for r in [*rounds, *(c[k] for c in ceilings for k in ("computed", "replayed"))]:
        if r["applied"] != args.events:
            raise SystemExit(f"applied {r['applied']} of {args.events} events")
    out = args.out or RESULTS / ("processor_split_foldin.json" if args.model else "processor_split.json")
    if ceilings:  # the recorded rounds pay for the copies: compare the replayed ones with the plain rounds
        plain = statistics.median(r["events_per_s"] for r in rounds)
        for c in ceilings:
            c["replayed_over_plain_median"] = round(c["replayed"]["events_per_s"] / plain, 3)
    result = {"vectors": "fold-in" if args.model else "isgd", "events": args.events, "rounds": rounds,
              **({"plan_ceiling": ceilings} if ceilings else {}),
              "simulator": SHOP,
              "machine": machine, "commit": benchinfo.commit(),
              "command": "python benchmarks/processor_split.py" + (" --model" if args.model else "")
              + (" --apply-split" if args.apply_split else "") + (" --plan-ceiling" if args.plan_ceiling else "")}
    result["machine"]["load_avg_at_end"] = list(__import__("os").getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()
