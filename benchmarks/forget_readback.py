"""What forgetting a user costs the worker: reading their partition back from Kafka.

Usage: python benchmarks/forget_readback.py [--events 200000] [--users 5000]

Publishes ``--events`` simulator clicks (keyed by user) to a fresh one-partition topic plus a
``forget_user`` tombstone for the busiest user at the end, then times, in one run:

1. ``read_log`` of the whole partition with the victim's key filter (what ``streams/forget.py``
   does per batch with tombstones);
2. ``Forgetter.subtract``: that read, parsing the victim's records and planning their negated share
   (cache cleared first, so it reads again);
3. a plain read of every record without a filter, for scale.

Uses KAFKA_BOOTSTRAP_SERVERS / REDIS_URL when both are set, else the embedded local stack.
Writes ``benchmarks/results/forget_readback.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.write_path import _git_commit, _machine, publish, services  # noqa: E402
from driftrec.events import TOMBSTONE_TYPE, fast_validate  # noqa: E402
from driftrec.kafka_admin import ensure_topics  # noqa: E402
from driftrec.models.online import BatchDelta, EventView  # noqa: E402
from driftrec.settings import Settings  # noqa: E402
from driftrec.simulator import ShopSimulator  # noqa: E402
from driftrec.streams.forget import Forgetter  # noqa: E402
from driftrec.streams.gapfill import read_log  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


async def measure(s: Settings, events: list[dict[str, Any]], victim: str) -> dict[str, Any]:
    rows = await publish(s, events)
    end = max(o for _, o, _ in rows)
    out: dict[str, Any] = {"records_in_partition": end + 1}

    t0 = time.perf_counter()
    got, _ = await read_log(s.bootstrap, s.clicks_topic, {0: (None, end + 1)}, keys={0: {victim.encode()}})
    out["filtered_read_s"] = time.perf_counter() - t0
    out["victim_records"] = len(got)

    forgetter = Forgetter(s)
    tomb = EventView(victim, "", TOMBSTONE_TYPE, float(events[-1]["timestamp"]), None, end, 0)
    delta = BatchDelta(landmark=float(events[0]["timestamp"]), forgotten={victim})

    def parse(raw: list[tuple[int, int, bytes | None]]) -> list[EventView]:
        views = []
        for p, o, v in raw:
            e = fast_validate(v, s.event_types)
            views.append(EventView(e.user_id, e.item_id, e.type, e.timestamp, e.category, o, p))
        return views

    t0 = time.perf_counter()
    await forgetter.subtract([tomb], delta, {0: end - 1}, parse)
    out["subtract_s"] = time.perf_counter() - t0
    out["items_subtracted"] = len(delta.pop)

    t0 = time.perf_counter()
    everything, _ = await read_log(s.bootstrap, s.clicks_topic, {0: (None, end + 1)})
    out["unfiltered_read_s"] = time.perf_counter() - t0
    assert len(everything) == end + 1
    out["filtered_records_per_s"] = (end + 1) / out["filtered_read_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=RESULTS / "forget_readback.json")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    events = list(ShopSimulator(n_users=args.users, n_items=10_000, n_categories=20, seed=7).events(args.events))
    counts: dict[str, int] = {}
    for e in events:
        counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
    victim = max(counts, key=lambda u: (counts[u], u))
    events.append({"event_id": "forget-bench", "user_id": victim, "item_id": "", "type": TOMBSTONE_TYPE,
                   "timestamp": events[-1]["timestamp"]})
    with services() as base:
        s = base.model_copy(update={"clicks_topic": f"forget-bench-{uuid.uuid4().hex[:8]}", "topic_partitions": 1})
        ensure_topics(s.bootstrap, {s.clicks_topic: 1})
        result = asyncio.run(measure(s, events, victim))
    machine["load_avg_at_end"] = os.getloadavg()
    result.update(events=args.events, users=args.users, victim=victim, machine=machine, commit=_git_commit())
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
