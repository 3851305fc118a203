"""Poison flood: fuzzed bad events mixed into good traffic; the worker must neither crash nor let
them touch the state, and every one must reach the dead-letter topic with its reason."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from driftrec.keys import Keys
from driftrec.redis_conn import sync_client
from driftrec.settings import Settings
from driftrec.streams.agents import REASON_HEADER, SOURCE_HEADER
from tools.chaos.fuzz import bad_events
from tools.chaos.procs import Child
from tools.chaos.scenario import ChaosConfig, run_settings, sim_rows
from tools.chaos.state import (
    build_oracle,
    compare,
    last_offsets,
    read_redis,
    read_topic,
    views_of,
)
from tools.chaos.traffic import PublishStats, Row, publish_steady

__all__ = ["run_poison"]

logger = logging.getLogger(__name__)


def run_poison(base: Settings, logs: Path, *, good: int = 20_000, bad: int = 10_000, rate: float = 3000.0,
               seed: int = 3, timeout_s: float = 600.0, users: int = 500, items: int = 2000) -> dict[str, Any]:
    """Publish ``good`` simulator events with ``bad`` fuzzed ones at random places; check the outcome."""
    s = run_settings(base)
    cfg = ChaosConfig(events=good, users=users, items=items, categories=10, seed=seed)
    _, good_rows = sim_rows(cfg)
    poison = list(bad_events(bad, seed, dict(s.event_weights)))
    rng = random.Random(seed)
    rows: list[Row] = list(good_rows)
    is_bad = [False] * len(rows)
    for ev in poison:  # insert at random places, keeping the good events' order
        at = rng.randrange(len(rows) + 1)
        rows.insert(at, (ev.key, ev.value))
        is_bad.insert(at, True)
    families = Counter(ev.family for ev in poison)
    worker = Child(s, ["worker"], logs / "poison-worker.log").start()
    stats = PublishStats()
    client = sync_client(s.redis)
    keys = Keys(s.key_prefix)
    started = time.monotonic()
    try:
        asyncio.run(publish_steady(s, rows, rate, stats=stats))
        ends: dict[int, int] = {}
        for p, o in stats.positions:
            ends[p] = max(ends.get(p, -1), o)
        while True:  # until every partition's stored offset reached the end (dead letters move it too)
            raw: dict[bytes, bytes] = client.hgetall(keys.offsets)  # type: ignore[assignment]
            stored = {int(k.decode().rsplit(":", 1)[1]): int(v) for k, v in raw.items()}
            if all(stored.get(p, -1) >= o for p, o in ends.items()):
                break
            if not worker.check():
                worker.start()
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"worker did not reach the end: {stored} < {ends}\n{worker.tail()}")
            time.sleep(0.2)
        crashed = not worker.check()
    finally:
        worker.stop()
    seconds = time.monotonic() - started
    bad_pos = {f"{s.clicks_topic}:{p}:{o}" for (p, o), b in zip(stats.positions, is_bad, strict=True) if b}
    dlq = read_topic(s, s.dead_letter_topic, 1)
    by_source: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    without_reason = 0
    for rec in dlq:
        h = dict(rec.headers)
        by_source[h.get(SOURCE_HEADER, b"").decode()] += 1
        reason = h.get(REASON_HEADER, b"").decode()
        if not reason:
            without_reason += 1
        reasons[re.sub(r"\d+", "N", reason.split(":", 1)[0])] += 1  # the field, or the kind of problem
    records = read_topic(s, s.clicks_topic)
    views, _ = views_of(records, s.event_types)
    snap = read_redis(client, keys)
    oracle = build_oracle(s, views, float(snap.meta.get("landmark", min(v.t for v in views))))
    cmp = compare(snap, oracle, s, last_offsets=last_offsets(records))
    client.close()
    good_in_dlq = sum(1 for src in by_source if src not in bad_pos)
    return {
        "good_events": good, "bad_events": bad, "bad_families": dict(families), "seconds": round(seconds, 2),
        "worker_crashes": len(worker.unexpected_exits) + int(crashed),
        "worker_tracebacks_in_log": worker.count_in_log("Traceback"),
        "dead_letters": len(dlq), "bad_events_in_dlq": len(bad_pos & set(by_source)),
        "bad_events_missing_from_dlq": len(bad_pos - set(by_source)),
        "dead_letters_without_reason": without_reason,
        "dead_letters_sent_twice": sum(n - 1 for n in by_source.values() if n > 1),
        "good_events_in_dlq": good_in_dlq, "dlq_reasons_by_field": dict(reasons.most_common()),
        "good_state_equal_to_oracle": cmp.equal and snap.applied == good, "comparison": cmp.as_dict(),
        "applied_events_counter": snap.applied,
    }
