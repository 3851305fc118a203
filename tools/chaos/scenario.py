"""One chaos run: steady clicks, a worker killed and restarted, Redis and Kafka taken down, a
reader polled throughout; at the end the Redis state against the oracle and the lag recovery.

Used by ``benchmarks/chaos.py`` (100,000 events, every fault) and by the short integration test.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
import redis

from driftrec.kafka_admin import ensure_topics
from driftrec.keys import Keys
from driftrec.models.factors import fold_in
from driftrec.models.online import InMemoryState
from driftrec.redis_conn import async_client, sync_client
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from tools.chaos.procs import Child, wait_http
from tools.chaos.stack import free_port
from tools.chaos.state import (
    build_oracle,
    compare,
    duplicate_ids,
    last_offsets,
    read_redis,
    read_topic,
    views_of,
)
from tools.chaos.traffic import PublishStats, ReaderPoller, Row, publish_steady, wait_zero_lag

__all__ = ["Fault", "ChaosConfig", "Services", "run_chaos", "run_settings", "sim_rows", "publish_model",
           "check_vectors"]

logger = logging.getLogger(__name__)


class Services(Protocol):
    """What a run may break: the settings of its Kafka and Redis, and how to stop and start them."""

    settings: Settings

    def kill9_redis(self) -> None: ...
    def start_redis(self) -> None: ...
    def stop_kafka(self) -> None: ...
    def start_kafka(self) -> None: ...


@dataclass(frozen=True)
class Fault:
    """``worker_kill9`` / ``redis_kill9`` / ``redis_rollback`` fire at a share ``at`` of the events
    applied, ``kafka_stop`` at a share of the events published; ``hold_s`` is how long the service
    stays down (for ``redis_rollback``: how many applied batches the AOF loses)."""

    kind: str
    at: float
    hold_s: float = 0.0


@dataclass
class ChaosConfig:
    events: int = 100_000
    rate: float = 1000.0
    users: int = 2000
    items: int = 5000
    categories: int = 20
    seed: int = 7
    faults: tuple[Fault, ...] = (Fault("worker_kill9", 0.3), Fault("redis_kill9", 0.5, 1.0),
                                 Fault("worker_kill9", 0.7), Fault("kafka_stop", 0.85, 30.0))
    poll_rate: float = 20.0
    model: bool = True
    settings_update: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 900.0
    lag_timeout_s: float = 300.0


def run_settings(base: Settings, tag: str | None = None, **update: Any) -> Settings:
    """``base`` with a topic, group, key prefix and ports of this run alone."""
    tag = tag or uuid.uuid4().hex[:8]
    s = base.model_copy(update={
        "clicks_topic": f"chaos-{tag}.clicks", "dead_letter_topic": f"chaos-{tag}.dlq",
        "consumer_group": f"chaos-{tag}", "key_prefix": f"chaos{tag}", "worker_web_port": free_port(),
        "worker_metrics_port": free_port(), "reader_port": free_port(), **update})
    ensure_topics(s.bootstrap, {s.clicks_topic: s.topic_partitions, s.dead_letter_topic: 1})
    return s


def sim_rows(cfg: ChaosConfig) -> tuple[ShopSimulator, list[Row]]:
    sim = ShopSimulator(n_users=cfg.users, n_items=cfg.items, n_categories=cfg.categories, seed=cfg.seed)
    rows: list[Row] = [(e["user_id"].encode(), orjson.dumps(e)) for e in sim.events(cfg.events)]
    return sim, rows


def publish_model(client: redis.Redis, keys: Keys, sim: ShopSimulator, share: float = 0.8,
                  factors: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Random item factors for ``share`` of the items as live version ``v1`` (users get folded in)."""
    from driftrec.modelformat import pack_factors

    rng = np.random.default_rng(seed)
    items = list(sim.item_ids)[: int(len(sim.item_ids) * share)]
    Y = rng.normal(0, 0.3, (len(items), factors))
    for part, blob in pack_factors(items, Y, alpha=2.0, regularization=0.5).items():
        client.set(keys.model_blob("v1", part), blob)
    client.set(keys.model_current, "v1")
    return items, np.asarray(np.load(io.BytesIO(pack_factors(items, Y, alpha=2.0, regularization=0.5)[
        "item_factors"])), dtype=np.float64)


def check_vectors(snap: Any, oracle: InMemoryState, model_items: list[str], Y: np.ndarray,
                  history_len: int) -> dict[str, Any]:
    """Users whose weights never hit the cap: stored fold-in vector vs the fold-in of the oracle's weights."""
    index = {i: j for j, i in enumerate(model_items)}
    YtY = Y.T @ Y
    checked = bad = 0
    worst = 0.0
    for user, hist in oracle.hist.items():
        if len(oracle.user_items.get(user, {})) >= history_len or user not in snap.user_vec:
            continue
        rows = [(index[i], 2.0 * w) for i, w in oracle.user_weights(user, now=max(hist.values())).items() if i in index]
        if not rows:
            continue
        want = fold_in(Y, YtY, [j for j, _ in rows], [c for _, c in rows], 0.5)
        vec, model = snap.user_vec[user]
        got = np.frombuffer(vec, dtype="<f4").astype(np.float64)
        checked += 1
        err = float(np.max(np.abs(got - want) / (np.abs(want) + 1e-3)))
        worst = max(worst, err)
        if model != "v1" or not np.allclose(got, want, rtol=2e-4, atol=2e-5):
            bad += 1
    return {"users_checked": checked, "users_differing": bad, "worst_rel_err": worst}


class _Watch:
    """Reads the applied counter, and supervises the worker: one that exits on its own (say, it
    could not reach the broker at start-up) is started again 2 s later, as systemd would."""

    def __init__(self, settings: Settings, worker: Child) -> None:
        self.client = async_client(settings.redis, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.meta = Keys(settings.key_prefix).meta
        self.worker = worker
        self.applied = 0

    async def supervise(self) -> None:
        while True:
            if not self.worker.check():
                logger.error("worker exited on its own; starting it again:\n%s", self.worker.tail(1500))
                await asyncio.sleep(2.0)
                self.worker.start()
            await asyncio.sleep(0.25)

    async def poll(self, wait_s: float = 0.0) -> int | None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.applied = int(await self.client.hget(self.meta, "applied_events") or 0)
                return self.applied
            except (redis.RedisError, OSError):
                if time.monotonic() >= deadline:
                    return None
                await asyncio.sleep(0.1)


async def _inject(f: Fault, services: Services, worker: Child, watch: _Watch, t0: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": f.kind, "at_share": f.at, "t_s": round(time.monotonic() - t0, 2),
                           "applied_before": await watch.poll()}
    if f.kind == "worker_kill9":
        worker.kill9()
        worker.start()
    elif f.kind == "redis_kill9":
        await asyncio.to_thread(services.kill9_redis)
        await asyncio.sleep(f.hold_s)
        await asyncio.to_thread(services.start_redis)
        rec["applied_after_restart"] = await watch.poll(wait_s=10.0)
        # Reads just before the kill are a lower bound of what Redis had acknowledged.
        if rec["applied_before"] is not None and rec["applied_after_restart"] is not None:
            rec["applied_lost_by_restart"] = max(0, rec["applied_before"] - rec["applied_after_restart"])
    elif f.kind == "redis_rollback":  # an OS crash: the last second of the AOF never hit the disk
        await asyncio.to_thread(services.kill9_redis)
        rec["aof_bytes_dropped"] = await asyncio.to_thread(services.drop_aof_tail, int(f.hold_s))  # type: ignore[attr-defined]
        await asyncio.to_thread(services.start_redis)
        rec["applied_after_restart"] = await watch.poll(wait_s=10.0)
        if rec["applied_before"] is not None and rec["applied_after_restart"] is not None:
            rec["applied_lost_by_restart"] = max(0, rec["applied_before"] - rec["applied_after_restart"])
    elif f.kind == "kafka_stop":
        began = time.monotonic()
        await asyncio.to_thread(services.stop_kafka)
        rec["stopped_after_s"] = round(time.monotonic() - began, 2)
        await asyncio.sleep(max(0.0, f.hold_s - (time.monotonic() - began)))
        await asyncio.to_thread(services.start_kafka)
        rec["down_s"] = round(time.monotonic() - began, 2)
    else:
        raise ValueError(f"unknown fault {f.kind!r}")
    rec["end_t_s"] = round(time.monotonic() - t0, 2)
    logger.info("fault %s", rec)
    return rec


async def _drive(cfg: ChaosConfig, services: Services, s: Settings, rows: list[Row], n_valid: int,
                 worker: Child, stats: PublishStats, on_tick: Callable[[], None] | None) -> dict[str, Any]:
    watch = _Watch(s, worker)
    supervisor = asyncio.create_task(watch.supervise())
    try:
        return await _drive_supervised(cfg, services, s, rows, n_valid, worker, stats, on_tick, watch)
    finally:
        supervisor.cancel()


async def _drive_supervised(cfg: ChaosConfig, services: Services, s: Settings, rows: list[Row], n_valid: int,
                            worker: Child, stats: PublishStats, on_tick: Callable[[], None] | None,
                            watch: _Watch) -> dict[str, Any]:
    t0 = time.monotonic()
    pub = asyncio.create_task(publish_steady(s, rows, cfg.rate, stats=stats))
    pending = sorted(cfg.faults, key=lambda f: f.at)
    done: list[dict[str, Any]] = []
    deadline = t0 + cfg.timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"faults left when the run timed out: {pending}")
        if pub.done() and pub.exception():
            raise pub.exception()  # type: ignore[misc]
        applied = await watch.poll()
        f = pending[0]
        progress = stats.sent / len(rows) if f.kind == "kafka_stop" else (applied or 0) / n_valid
        if progress >= f.at:
            done.append(await _inject(pending.pop(0), services, worker, watch, t0))
        if on_tick is not None:
            on_tick()
        await asyncio.sleep(0.1)
    await pub
    last_fault_end = t0 + max((d["end_t_s"] for d in done), default=0.0)
    ends: dict[int, int] = {}
    for p, o in stats.positions:
        if p >= 0:
            ends[p] = max(ends.get(p, 0), o + 1)
    waited, last_lag = await wait_zero_lag(s.bootstrap, s.consumer_group, s.clicks_topic,
                                           timeout_s=cfg.lag_timeout_s, expect_end=ends)
    zero_at = time.monotonic() if waited is not None else None
    # Zero lag is Kafka's view; Redis may still be reading back what a rollback lost (the worker
    # heals between batches, streams/agents.py), so wait for its counter too before comparing.
    # Rows Kafka acknowledged are in the topic for sure (a failed send may be there too).
    caught_up_at, give_up = None, time.monotonic() + cfg.lag_timeout_s
    while time.monotonic() < give_up:
        if (await watch.poll() or 0) >= min(n_valid, stats.acked):
            caught_up_at = time.monotonic()
            break
        await asyncio.sleep(0.2)
    return {"faults": done, "publish_seconds": round(stats.seconds, 2),
            "seconds_to_zero_lag": round(zero_at - last_fault_end, 2) if zero_at else None,
            "seconds_to_redis_caught_up": round(caught_up_at - last_fault_end, 2) if caught_up_at else None,
            "lag_left_at_timeout": None if waited is not None else last_lag,
            "run_seconds": round(time.monotonic() - t0, 2), "t0": t0}


def run_chaos(services: Services, cfg: ChaosConfig, logs: Path) -> dict[str, Any]:
    """Run the scenario against ``services``; returns the result (see benchmarks/chaos.py)."""
    s = run_settings(services.settings, **cfg.settings_update)
    keys = Keys(s.key_prefix)
    sim, rows = sim_rows(cfg)
    client = sync_client(s.redis)
    model_items, Y = publish_model(client, keys, sim) if cfg.model else ([], np.zeros((0, 0)))
    worker = Child(s, ["worker"], logs / "chaos-worker.log").start()
    reader = Child(s, ["serve"], logs / "chaos-reader.log").start()
    stats = PublishStats()
    poller = ReaderPoller(f"http://127.0.0.1:{s.reader_port}", sim.user_ids[:500], rate=cfg.poll_rate)
    try:
        wait_http(f"http://127.0.0.1:{s.reader_port}/healthz", 60, reader)
        poller.start()
        def tick() -> None:
            reader.check()  # records an exit nobody asked for

        drive = asyncio.run(_drive(cfg, services, s, rows, len(rows), worker, stats, tick))
    finally:
        poller.stop()
        worker.stop()
        reader.stop()
    records = read_topic(s, s.clicks_topic)
    views, ids = views_of(records, s.event_types)
    snap = read_redis(client, keys)
    landmark = float(snap.meta.get("landmark", min(v.t for v in views)))
    oracle = build_oracle(s, views, landmark)
    cmp = compare(snap, oracle, s, last_offsets=last_offsets(records))
    vectors = check_vectors(snap, oracle, model_items, Y, s.history_len) if cfg.model else None
    client.close()
    published_ids = {orjson.loads(v)["event_id"] for _, v in rows if v is not None}
    in_topic = set(ids)
    result = {
        "events": cfg.events, "rate_per_s": cfg.rate,
        "events_in_topic": len(views), "duplicate_event_ids_in_topic": duplicate_ids(ids),
        "events_acked_by_kafka": stats.acked, "publish_failures": stats.failed,
        "published_but_missing_from_topic": len(published_ids - in_topic),
        "applied_events_counter": snap.applied,
        "lost_events": max(0, len(views) - snap.applied) + len(published_ids - in_topic),
        "double_applied_events": max(0, snap.applied - len(views)),
        "state_equal_to_oracle": cmp.equal and (vectors is None or vectors["users_differing"] == 0),
        "comparison": cmp.as_dict(), "fold_in_vectors": vectors,
        "reader": poller.summary(), "reader_5xx": poller.counts["5xx"],
        "worker_starts": worker.starts, "worker_unexpected_exits": worker.unexpected_exits,
        "reader_unexpected_exits": reader.unexpected_exits,
        **drive,
        "settings": {k: getattr(s, k) for k in ("batch_max_events", "topic_partitions", "history_len",
                                                 "neighbours_k", "trending_k", "cooc_window")},
        "simulator": {"users": cfg.users, "items": cfg.items, "categories": cfg.categories, "seed": cfg.seed},
        "config": {**asdict(cfg), "faults": [asdict(f) for f in cfg.faults]},
    }
    t0 = result.pop("t0")
    for f in result["faults"]:  # what the reader answered from the fault until 10 s after it ended
        f["reader_during"] = poller.outcomes_between(t0 + f["t_s"], t0 + f["end_t_s"] + 10.0)
    return result
