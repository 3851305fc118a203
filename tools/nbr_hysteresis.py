"""Issue 22, in memory: neighbour rows cut to K only once they pass H, against batch boundaries.

Usage: python tools/nbr_hysteresis.py [CLICKS]   (default 100,000)

The same simulator clicks (``driftrec simulate``'s interleaved shoppers, 4 partitions by shopper,
event times 2,000 a second, the decay landmark pinned at the first) go through the in-memory
oracle (:class:`driftrec.models.online.InMemoryState`, the worker's maths) in batches of 1 and of
2,000. After each batch, every neighbour row the batch touched that holds more than H members is
cut to its K strongest (H = K: today's cut after every batch). Printed per (K, H): the share of
served rows (the first 20 by score) identical between the two runs, the largest score difference
on the others in views, and the rows' members at the end (2,000-click batches).
"""

from __future__ import annotations

import itertools
import sys
import zlib

from driftrec.models.decay import SCORE_SCALE
from driftrec.models.online import EventView, InMemoryState, _keep_top
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator

START = 1_790_000_000.0
CUTS = [(50, 50), (50, 75), (50, 100), (64, 128), (50, 150), (100, 200), (128, 128), (128, 256)]

Rows = dict[str, dict[str, float]]


def clicks(n: int) -> list[EventView]:
    sim = ShopSimulator.live(rate=2000.0, shoppers=10_000, n_users=50_000, n_items=10_000, n_categories=20, seed=7)
    offsets = [0] * 4
    out = []
    for j, e in enumerate(itertools.islice(iter(sim), n)):
        p = zlib.crc32(str(e["user_id"]).encode()) % 4
        out.append(EventView(e["user_id"], e["item_id"], e["type"], START + j / 2000.0, e.get("category"),
                             offsets[p], p))
        offsets[p] += 1
    return out


def run(s: Settings, views: list[EventView], batch: int, cut_to: int, past: int) -> Rows:
    state = InMemoryState.from_settings(s, user_items_k=s.history_len, landmark=START, neighbours_k=None)
    for i in range(0, len(views), batch):
        delta = state.process(views[i:i + batch])
        for key in delta.cooc:
            row = state.cooc.get(key)
            if row is not None and len(row) > past:
                _keep_top(row, cut_to)
    return state.cooc


def served(rows: Rows, k: int = 20) -> dict[str, list[tuple[str, float]]]:
    return {i: sorted(r.items(), key=lambda kv: (-kv[1], kv[0]))[:k] for i, r in rows.items()}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    s = Settings(kafka_bootstrap_servers="unused:1")
    views = clicks(n)
    view = s.event_weights.get("view", 1.0) * SCORE_SCALE
    for cut_to, past in CUTS:
        a, b = run(s, views, 1, cut_to, past), run(s, views, 2000, cut_to, past)
        sa, sb = served(a), served(b)
        keys = set(sa) | set(sb)
        differ = [i for i in keys if sa.get(i) != sb.get(i)]
        worst = max((abs(a.get(i, {}).get(m, 0.0) - b.get(i, {}).get(m, 0.0)) / view
                     for i in differ for m, _ in sa.get(i, []) + sb.get(i, [])), default=0.0)
        sizes = [len(r) for r in b.values()]
        print(f"cut to {cut_to} past {past}: served rows identical {1 - len(differ) / len(keys):.4%} of {len(keys)}, "
              f"up to {worst:.0f} views apart; members mean {sum(sizes) / len(sizes):.1f}, max {max(sizes)}, "
              f"rows past 50: {sum(x > 50 for x in sizes)}", flush=True)


if __name__ == "__main__":
    main()
