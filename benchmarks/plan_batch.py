"""Throughput of models.online.plan_batch (pure Python, no I/O) on synthetic clicks.

Usage: python benchmarks/plan_batch.py [--events 200000] [--batch 2000] [--window 10]
"""

from __future__ import annotations

import argparse
import itertools
import random
import time

from driftrec.models.decay import DecayPolicy, EventWeights
from driftrec.models.online import EventView, InMemoryState, plan_batch
from driftrec.settings import Settings


def synthetic(n: int, users: int, items: int, seed: int) -> list[EventView]:
    rng = random.Random(seed)
    types = ["view"] * 90 + ["add_to_cart"] * 8 + ["purchase"] * 2
    t0 = 1.7e9
    # Zipf-like popularity (exponent 0.8) over the catalogue: a long tail, as in shop logs.
    cum = list(itertools.accumulate(1.0 / (r + 1) ** 0.8 for r in range(items)))
    picks = rng.choices(range(items), cum_weights=cum, k=n)
    out = []
    for off, item in enumerate(picks):
        out.append(EventView(
            user=f"u{rng.randrange(users)}", item=f"i{item}", type=rng.choice(types),
            t=t0 + off * 0.05, category=f"c{item % 50}", offset=off // 4, partition=off % 4,
        ))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=20_000)
    args = ap.parse_args()
    s = Settings()
    events = synthetic(args.events, args.users, args.items, seed=7)
    policy, weights = DecayPolicy(s.half_life_s), EventWeights(s.event_weights)
    landmark = events[0].t

    # 1) plan_batch alone, with histories carried between batches the way the store would.
    state = InMemoryState.from_settings(s, window=args.window, landmark=landmark)
    plan_s = plan_cpu = 0.0
    pairs = 0
    for i in range(0, len(events), args.batch):
        batch = events[i : i + args.batch]
        hists = {u: state.history(u) for u in {e.user for e in batch}}
        started, cpu = time.perf_counter(), time.process_time()
        delta = plan_batch(batch, hists, state.offsets, policy, weights, state.landmark,
                           window=args.window, window_s=s.cooc_window_s, history_len=s.history_len)
        plan_s += time.perf_counter() - started
        plan_cpu += time.process_time() - cpu
        pairs += sum(len(r) for r in delta.cooc.values())
        state.apply(delta)
    # CPU time is reported too: on a shared machine wall time also counts other processes.
    print(f"plan_batch: {len(events)} events, wall {plan_s:.2f}s = {len(events) / plan_s:,.0f} events/s, "
          f"CPU {plan_cpu:.2f}s = {len(events) / plan_cpu:,.0f} events/s "
          f"(batch {args.batch}, window {args.window}, {pairs:,} aggregated cooc entries)")

    # 2) the whole in-memory reference (plan + apply with pruning), as the evaluation uses it.
    state = InMemoryState.from_settings(s, window=args.window, landmark=landmark)
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(events), args.batch):
        state.process(events[i : i + args.batch])
    total, total_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"InMemoryState.process (plan + apply + pruning): wall {len(events) / total:,.0f} events/s, "
          f"CPU {len(events) / total_cpu:,.0f} events/s")


if __name__ == "__main__":
    main()
