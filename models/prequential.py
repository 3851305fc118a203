"""Prequential (test-then-train) evaluation: score each event against the state before it, then apply it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from driftrec.models.online import EventView

__all__ = [
    "Recommender",
    "hit_metrics",
    "event_views",
    "scored_mask",
    "PrequentialResult",
    "run_prequential",
]

logger = logging.getLogger(__name__)


class Recommender(Protocol):
    """What the loop needs from a method: a top-``n`` list, and a way to learn from events."""

    def recommend(self, user: str, n: int, exclude: Set[str], now: float) -> list[str]:
        """Best ``n`` items for ``user`` at event time ``now``; nothing from ``exclude``."""
        ...

    def update(self, events: Sequence[EventView]) -> None:
        """Learn from one micro-batch of events (in stream order)."""
        ...


def hit_metrics(ranked: Sequence[str], target: str, k: int = 10) -> tuple[float, float, float]:
    """HR@k, NDCG@k and reciprocal rank (MRR@k) of one held-out item.

    With a single relevant item the ideal DCG is 1, so ``NDCG@k = 1 / log2(rank + 1)`` when the
    item is at 1-based ``rank <= k`` and 0 otherwise; the reciprocal rank is ``1 / rank`` under
    the same cut-off (0 for a miss), so MRR here is MRR@k.

    Parameters
    ----------
    ranked : Sequence[str]
        The recommended items, best first; only the first ``k`` count.
    target : str
        The item the user interacted with next.
    k : int
        Cut-off.

    Returns
    -------
    tuple[float, float, float]
        ``(hit, ndcg, reciprocal_rank)``.
    """
    rank = _rank(ranked, target, k)
    if rank == 0:
        return 0.0, 0.0, 0.0
    return 1.0, 1.0 / math.log2(rank + 1), 1.0 / rank


def _rank(ranked: Sequence[str], target: str, k: int) -> int:
    for pos, item in enumerate(ranked[:k], start=1):
        if item == target:
            return pos
    return 0


def event_views(events: Iterable[Mapping[str, Any]], partition: int = 0) -> list[EventView]:
    """Event dicts (a data-set loader's output, already time-sorted) as :class:`EventView`.

    The offset is the position in the stream, so applying the list in order is exactly what a
    single-partition worker would do.
    """
    return [
        EventView(user=str(e["user_id"]), item=str(e["item_id"]), type=str(e["type"]),
                  t=float(e["timestamp"]), category=e.get("category"), offset=i, partition=partition)
        for i, e in enumerate(events)
    ]


def scored_mask(
    events: Sequence[EventView],
    start: int | None = None,
    *,
    window_s: float | None = None,
    max_windows: int | None = None,
) -> npt.NDArray[np.bool_]:
    """Which events are scored: the first interaction of a user with an item, at or after ``start``.

    Repeats of a (user, item) pair are applied but never scored. ``start`` defaults to half the
    stream (the first half warms up). To bound the cost of expensive methods the scored part can
    be thinned to whole time windows: the windows of ``window_s`` seconds (aligned to multiples
    of ``window_s``) that hold a scorable event are listed in time order and ``max_windows`` of
    them, evenly spaced, are kept. Which events are scored depends only on the log, never on a
    method, so every method is scored on the same events.
    """
    n = len(events)
    start = n // 2 if start is None else start
    mask = np.zeros(n, dtype=bool)
    seen: set[tuple[str, str]] = set()
    for i, e in enumerate(events):
        pair = (e.user, e.item)
        if pair in seen:
            continue
        seen.add(pair)
        mask[i] = i >= start
    if window_s is not None and max_windows is not None:
        idx = np.flatnonzero(mask)
        win = np.floor(np.array([events[int(i)].t for i in idx], dtype=np.float64) / window_s)
        distinct = np.unique(win)
        if distinct.size > max_windows:
            picks = np.linspace(0, distinct.size - 1, max_windows).round().astype(int)
            keep = np.isin(win, distinct[np.unique(picks)])
            mask[:] = False
            mask[idx[keep]] = True
    return mask


@dataclass
class PrequentialResult:
    """Per scored event: its position, time, and the 1-based rank each method gave it (0: miss)."""

    methods: list[str]
    k: int
    index: npt.NDArray[np.int64]
    times: npt.NDArray[np.float64]
    ranks: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    applied: int = 0
    batch_size: int = 1

    @property
    def scored(self) -> int:
        return int(self.index.size)

    def hr(self, method: str) -> float:
        r = self.ranks[method]
        return float((r > 0).mean()) if r.size else 0.0

    def ndcg(self, method: str) -> float:
        r = self.ranks[method]
        return float((1.0 / np.log2(np.maximum(r, 1) + 1.0) * (r > 0)).mean()) if r.size else 0.0

    def mrr(self, method: str) -> float:
        r = self.ranks[method]
        return float(np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0).mean()) if r.size else 0.0

    def summary(self) -> dict[str, dict[str, float]]:
        return {m: {"hr10": self.hr(m), "ndcg10": self.ndcg(m), "mrr10": self.mrr(m)} for m in self.methods}

    def windows(self, n_windows: int) -> tuple[npt.NDArray[np.float64], dict[str, npt.NDArray[np.float64]]]:
        """HR@k in ``n_windows`` consecutive slices of equal event count: (mid times, HR per method)."""
        parts = np.array_split(np.arange(self.scored), max(1, min(n_windows, self.scored)))
        mids = np.array([float(np.median(self.times[p])) for p in parts if p.size])
        return mids, {m: np.array([float((self.ranks[m][p] > 0).mean()) for p in parts if p.size])
                      for m in self.methods}


def run_prequential(
    events: Sequence[EventView],
    methods: Mapping[str, Recommender],
    scored: npt.NDArray[np.bool_] | Sequence[bool],
    *,
    k: int = 10,
    batch_size: int = 1,
    bulk_size: int | None = 1000,
    progress: Callable[[int], Any] | None = None,
) -> PrequentialResult:
    """Replay ``events`` in order; score each marked event before any method has seen it.

    The stream is cut into micro-batches of ``batch_size`` consecutive events, as the worker
    takes them. For every marked event of a batch each method is asked for its top-``k`` for the
    event's user at the event's time, excluding the items the user interacted with in the
    batches already applied (what the store's history knows); then every method is updated with
    the whole batch. With ``batch_size=1`` each event is scored against exactly the events
    before it; with more, also without the earlier events of its own batch (the worker's lag).

    A stretch of events none of which is scored is applied in batches of up to ``bulk_size``
    (a busy worker's batches) and the next batch starts at the next scored event: no answer is
    asked for inside such a stretch, and only the store's top-K pruning can tell the
    difference, exactly as it can between two runs of the worker that cut the stream
    differently. ``bulk_size=None`` cuts the whole stream into batches of ``batch_size``.

    Parameters
    ----------
    events : Sequence[EventView]
        The stream, time-ordered.
    methods : Mapping[str, Recommender]
        Name to method; all are scored on the same events and fed the same batches.
    scored : array of bool
        One flag per event (:func:`scored_mask`).
    k : int
        List length and metric cut-off.
    batch_size : int
        Events per micro-batch around scored events.
    bulk_size : int or None
        Events per micro-batch in stretches without a scored event.
    progress : callable, optional
        Called with the number of events just applied (e.g. ``tqdm.update``).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    flags = np.asarray(scored, dtype=bool)
    if flags.shape != (len(events),):
        raise ValueError("scored must hold one flag per event")
    names = list(methods)
    index = np.flatnonzero(flags)
    ranks = {m: np.zeros(index.size, dtype=np.int64) for m in names}
    seen: dict[str, set[str]] = {}
    empty: frozenset[str] = frozenset()
    pos = 0
    nxt = 0  # position in ``index`` of the next scored event at or after ``lo``
    lo, total = 0, len(events)
    while lo < total:
        while nxt < index.size and index[nxt] < lo:
            nxt += 1
        upcoming = int(index[nxt]) if nxt < index.size else total
        if bulk_size is not None and upcoming > lo:
            hi = min(upcoming, lo + bulk_size)
        else:
            hi = min(lo + batch_size, total)
        batch = events[lo:hi]
        for off, e in enumerate(batch):
            if not flags[lo + off]:
                continue
            exclude = seen.get(e.user, empty)
            for m in names:
                ranks[m][pos] = _rank(methods[m].recommend(e.user, k, exclude, e.t), e.item, k)
            pos += 1
        for m in names:
            methods[m].update(batch)
        for e in batch:
            seen.setdefault(e.user, set()).add(e.item)
        if progress is not None:
            progress(len(batch))
        lo = hi
    times = np.array([events[int(i)].t for i in index], dtype=np.float64)
    return PrequentialResult(methods=names, k=k, index=index.astype(np.int64), times=times,
                             ranks=ranks, applied=len(events), batch_size=batch_size)
