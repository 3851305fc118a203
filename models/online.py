"""One micro-batch of clicks as aggregated increments, and an in-memory store that applies them."""

from __future__ import annotations

import heapq
import logging
import math
from bisect import insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

from driftrec.events import TOMBSTONE_TYPE
from driftrec.models.cooccurrence import similarity, top_k
from driftrec.models.decay import SCORE_SCALE, DecayPolicy, EventWeights, quantise
from driftrec.userstate import pack_clicks

__all__ = ["EventView", "BatchDelta", "plan_batch", "merge_user_items", "InMemoryState", "FORGET_RESIDUE"]

logger = logging.getLogger(__name__)

History = list[tuple[str, float]]
_ORDER = attrgetter("partition", "offset")
# Redis orders a ZSET by (score, member); histories and pruning follow the same order everywhere.
_hist_key = itemgetter(1, 0)
#: A decayed score a subtraction leaves at or below this fraction of what it took away is
#: rounding, not evidence: the member goes (``apply_batch.lua`` uses the same rule).
FORGET_RESIDUE = 1e-9


@dataclass(slots=True)
class EventView:
    """The fields of a validated click the maths needs, plus where it sits in Kafka."""

    user: str
    item: str
    type: str
    t: float
    category: str | None
    offset: int
    partition: int


@dataclass(slots=True)
class BatchDelta:
    """Everything one micro-batch adds, aggregated per key.

    Decayed values are forward scores relative to ``landmark`` (see :class:`DecayPolicy`);
    apply them with ``ZINCRBY``. ``hist`` values are event times; apply them with ``ZADD GT``
    and then trim to the history length. A user in ``forgotten`` sent a ``forget_user``
    tombstone: delete that user's keys first, then apply the increments listed for the user
    (they come from events after the tombstone). :func:`plan_batch` leaves the item-level
    aggregates the user added before; the worker adds their negated share to ``pop``, ``trend``
    and ``cooc`` (:func:`driftrec.models.forget.subtract_share`), so an increment ``<= 0`` there is a
    subtraction (see :meth:`InMemoryState.apply`).
    """

    landmark: float = 0.0
    pop: dict[str, float] = field(default_factory=dict)
    trend: dict[str, dict[str, float]] = field(default_factory=dict)
    cooc: dict[str, dict[str, float]] = field(default_factory=dict)
    user_items: dict[str, dict[str, float]] = field(default_factory=dict)
    user_cats: dict[str, dict[str, float]] = field(default_factory=dict)
    hist: dict[str, dict[str, float]] = field(default_factory=dict)
    item_cat: dict[str, str] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    #: The applied offsets the plan started from, for the partitions in ``offsets``.
    base_offsets: dict[int, int] = field(default_factory=dict)
    #: Largest event time applied; 0.0 when nothing was (event times are >= 0).
    last_event_time: float = 0.0
    applied: int = 0
    skipped: int = 0
    forgotten: set[str] = field(default_factory=set)
    #: Events with no weight for their type, with the reason; their offsets still count.
    rejected: list[tuple[EventView, str]] = field(default_factory=list)
    #: item -> users to take out of its session index (the items a forgotten user clicked, from
    #: their share: :func:`driftrec.models.forget.subtract_share`); removed before ``hist`` is added.
    index_gone: dict[str, set[str]] = field(default_factory=dict)


def _start_history(given: Iterable[tuple[str, float]] | None, keep: int) -> tuple[History, dict[str, float]]:
    if not given:
        return [], {}
    if type(given) is list:
        # A loaded HASH (the usual case, per shopper and batch): one float time per item, so
        # the newest `keep` by (time, item) come straight from one sort.
        h = sorted(given, key=_hist_key)[-keep:]
        latest = dict(h)
        if len(latest) == len(h) and all(type(t) is float for t in latest.values()) and (
                len(given) <= keep or len({i for i, _ in given}) == len(given)):
            return h, latest
    latest = {}
    for item, t in given:
        t = float(t)
        if t > latest.get(item, -math.inf):
            latest[item] = t
    h = sorted(latest.items(), key=_hist_key)[-keep:]
    return h, dict(h)


def plan_batch(
    events: Sequence[EventView],
    histories: Mapping[str, Sequence[tuple[str, float]]],
    applied_offsets: Mapping[int, int],
    policy: DecayPolicy,
    weights: EventWeights,
    landmark: float,
    *,
    window: int,
    window_s: float,
    history_len: int,
) -> BatchDelta:
    """Aggregate one micro-batch into the increments it adds.

    Events are taken in ``(partition, offset)`` order; one whose offset is at or below
    ``applied_offsets[partition]`` (or a repeat within the batch) was already applied and is
    skipped, which makes replays effectively-once. Each user's history is updated as the batch
    goes, so later events of the batch co-occur with earlier ones exactly as if every event had
    been its own batch. The history follows the Redis ZSET: item → latest time (``ZADD GT``),
    ordered by ``(time, item)``, bounded to ``history_len``.

    Only the newest ``min(window, history_len)`` entries of a history can ever be a partner, and
    those depend only on the previous newest entries and the new event (a re-click moves the
    item to the end; an entry deeper down stays deeper down), so the working history keeps just
    that many. ``delta.hist`` still lists every item the batch touched; the store trims.

    Parameters
    ----------
    events : Sequence[EventView]
        The batch, in any order.
    histories : Mapping[str, Sequence[tuple[str, float]]]
        Stored history per user, ``(item, time)``, in any order; the newest ``window`` entries
        suffice (Redis: ``ZRANGE hist -window -1 WITHSCORES``). Not modified.
    applied_offsets : Mapping[int, int]
        Last applied offset per partition.
    policy, weights : DecayPolicy, EventWeights
        Decay and event weights.
    landmark : float
        The stored forward-decay landmark. It must not need moving for any event of the batch
        (check :meth:`DecayPolicy.needs_rescale` with the batch's latest time first).
    window, window_s : int, float
        Co-occurrence window (:func:`driftrec.models.cooccurrence.window_partners`).
    history_len : int
        Entries kept in a user's history.

    Raises
    ------
    ValueError
        When an event is too far past ``landmark`` (its forward factor could overflow).
    """
    delta = BatchDelta(landmark=landmark)
    pop, trend, cooc = delta.pop, delta.trend, delta.cooc
    user_items, user_cats, hist_out = delta.user_items, delta.user_cats, delta.hist
    item_cat, offsets, base = delta.item_cat, delta.offsets, delta.base_offsets
    rate, max_exp, exp, floor = policy.rate, policy.max_exponent, math.exp, math.floor
    wmap = dict(weights.weights)
    guard = dict(applied_offsets)
    keep = min(window, history_len)
    hists: dict[str, History] = {}
    latest: dict[str, dict[str, float]] = {}  # user -> item -> time in the working history
    last, applied, skipped = delta.last_event_time, 0, 0
    cooc_get = cooc.get

    for e in sorted(events, key=_ORDER):
        part, off = e.partition, e.offset
        done = guard.get(part, -1)
        if off <= done:
            skipped += 1
            continue
        if part not in base:
            base[part] = done
        guard[part] = offsets[part] = off
        user, typ = e.user, e.type
        if typ == TOMBSTONE_TYPE:
            delta.forgotten.add(user)
            hists[user], latest[user] = [], {}
            user_items.pop(user, None)
            user_cats.pop(user, None)
            hist_out.pop(user, None)
            applied += 1
            continue
        w = wmap.get(typ)
        if w is None:
            delta.rejected.append((e, f"type: no weight for event type {typ!r}"))
            continue
        t = e.t
        x = rate * (t - landmark)
        if x > max_exp:
            raise ValueError(
                f"event at t={t} is too far past landmark {landmark}; move the landmark first"
            )
        # policy.increment inlined: a whole number of 1/SCORE_SCALE units (see models.decay).
        inc = float(floor(SCORE_SCALE * w * exp(x) + 0.5))
        item = e.item

        pop[item] = pop.get(item, 0.0) + inc
        row = user_items.get(user)
        if row is None:
            row = user_items[user] = {}
        row[item] = row.get(item, 0.0) + inc
        cat = e.category
        if cat is not None:
            item_cat[item] = cat
            row = trend.get(cat)
            if row is None:
                row = trend[cat] = {}
            row[item] = row.get(item, 0.0) + inc
            row = user_cats.get(user)
            if row is None:
                row = user_cats[user] = {}
            row[cat] = row.get(cat, 0.0) + inc

        h = hists.get(user)
        if h is None:
            h, latest[user] = _start_history(histories.get(user), keep)
            hists[user] = h
        # window_partners inlined (the hot loop): h holds at most `keep` <= window entries,
        # time-ordered, so the scan stops at the first partner too old. Same pairs, same order.
        row = None
        for other, t_other in reversed(h):
            if t - t_other > window_s:
                break
            if other == item or t_other - t > window_s:
                continue
            if row is None:
                row = cooc_get(item)
                if row is None:
                    row = cooc[item] = {}
            row[other] = row.get(other, 0.0) + inc
            orow = cooc_get(other)
            if orow is None:
                cooc[other] = {item: inc}  # 0.0 + inc is inc
            else:
                orow[item] = orow.get(item, 0.0) + inc

        row = hist_out.get(user)
        if row is None:
            row = hist_out[user] = {}
        if t > row.get(item, -math.inf):
            row[item] = t
        times = latest[user]
        old = times.get(item)
        if old is None or t > old:  # ZADD GT: an older repeat leaves the entry where it is
            if old is not None:
                h.remove((item, old))
            times[item] = t
            if not h or t > h[-1][1] or (t == h[-1][1] and item > h[-1][0]):
                h.append((item, t))
            else:
                insort(h, (item, t), key=_hist_key)
            if len(h) > keep:
                del times[h.pop(0)[0]]
        if t > last:
            last = t
        applied += 1

    delta.last_event_time, delta.applied, delta.skipped = last, applied, skipped
    return delta


def _add(target: dict[str, float], inc: Mapping[str, float]) -> None:
    # Positive increments add (a missing member starts at 0). An increment <= 0 is a forgotten
    # user's share taken away: a missing member was pruned (or never stored) and stays missing,
    # and one left at rounding level (FORGET_RESIDUE of what was taken) goes.
    for key, value in inc.items():
        cur = target.get(key)
        if value > 0:
            target[key] = value if cur is None else cur + value
        elif cur is not None:
            left = cur + value
            if left <= FORGET_RESIDUE * -value:
                del target[key]
            else:
                target[key] = left


def _rescale_row(row: dict[str, float], f: float) -> None:
    for key, value in list(row.items()):
        x = quantise(value * f)
        if x > 0:
            row[key] = x
        else:
            del row[key]


def _keep_top(row: dict[str, Any], k: int | None, dropped: set[str] | None = None) -> None:
    # What ZREMRANGEBYRANK key 0 -(k+1) keeps: the k largest by (score, member).
    if k is not None and len(row) > k:
        for key, _ in heapq.nsmallest(len(row) - k, row.items(), key=_hist_key):
            del row[key]
            if dropped is not None:
                dropped.add(key)


def merge_user_items(
    times: Mapping[str, float],
    weights: Mapping[str, float],
    delta: BatchDelta,
    user: str,
    history_len: int,
    items_k: int | None = None,
    dropped: set[str] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """One user's history and weights after ``delta``, as :meth:`InMemoryState.apply` makes them.

    Parameters
    ----------
    times, weights : Mapping[str, float]
        The user's whole stored history (item → last event time) and forward weights before
        the batch. Not modified.
    delta : BatchDelta
        The planned batch; a user in ``delta.forgotten`` starts from nothing.
    user : str
        Whose entries to merge.
    history_len : int
        Newest entries kept in the history (by ``(time, item)``).
    items_k : int or None
        Strongest weights kept (by ``(weight, item)``); None keeps every one.
    dropped : set or None
        Receives the items a bound cut from either half. With the batch's own items of the
        user, these are all the entries whose values can differ from ``times`` / ``weights``.

    Returns
    -------
    tuple[dict[str, float], dict[str, float]]
        The new ``(times, weights)``. Bounds are applied only to a half the batch touched, as
        the store does.
    """
    forgotten = user in delta.forgotten
    new_times = {} if forgotten else dict(times)
    new_weights = {} if forgotten else dict(weights)
    inc = delta.user_items.get(user)
    if inc is not None:
        _add(new_weights, inc)
        _keep_top(new_weights, items_k, dropped)
    hist = delta.hist.get(user)
    if hist is not None:
        for item, t in hist.items():
            if t > new_times.get(item, -math.inf):
                new_times[item] = t
        _keep_top(new_times, history_len, dropped)
    return new_times, new_weights


class InMemoryState:
    """The store's contents held in dicts: the reference the Redis store must agree with.

    Holds raw forward scores relative to ``landmark``, like Redis. Bounds applied after every
    batch, as the worker's script does: ``history_len`` entries per history (latest times),
    ``neighbours_k`` neighbours per item and ``trending_k`` items per trending list, both pruned
    by raw decayed score, and optionally ``user_items_k`` / ``user_cats_k`` per user. Pruning
    forgets evidence, so with it the result can depend on how the stream was cut into batches;
    without it (bounds not reached) it does not.

    ``session_index_k`` > 0 keeps the session index: item -> user -> the user's last click of
    the item (event time, not decayed), the ``session_index_k`` latest by ``(time, user)``
    (``ZADD GT`` then a cut by rank, as ``apply_ops.lua``'s ``g`` op does), and each clicking
    user's click log (``click_logs``: the bytes of ``P:{u:U}:clk``, their history packed).
    """

    def __init__(
        self,
        policy: DecayPolicy,
        weights: EventWeights,
        *,
        window: int,
        window_s: float,
        history_len: int,
        neighbours_k: int,
        trending_k: int,
        user_items_k: int | None = None,
        user_cats_k: int | None = None,
        landmark: float = 0.0,
        session_index_k: int = 0,
    ) -> None:
        self.policy, self.weights = policy, weights
        self.window, self.window_s, self.history_len = window, window_s, history_len
        self.neighbours_k, self.trending_k = neighbours_k, trending_k
        self.user_items_k, self.user_cats_k = user_items_k, user_cats_k
        self.landmark = landmark
        self.session_index_k = session_index_k
        self.sessions: dict[str, dict[str, float]] = {}  # item -> user -> last click time
        self.click_logs: dict[str, bytes] = {}  # user -> packed history (userstate.pack_clicks)
        self.pop: dict[str, float] = {}
        self.trend: dict[str, dict[str, float]] = {}
        self.cooc: dict[str, dict[str, float]] = {}
        self.user_items: dict[str, dict[str, float]] = {}
        self.user_cats: dict[str, dict[str, float]] = {}
        self.hist: dict[str, dict[str, float]] = {}
        self.item_cat: dict[str, str] = {}
        self.offsets: dict[int, int] = {}
        self.last_event_time = 0.0
        self.applied = 0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> InMemoryState:
        """Build from a :class:`driftrec.settings.Settings`; keyword overrides win."""
        kwargs: dict[str, Any] = {
            "window": settings.cooc_window,
            "window_s": settings.cooc_window_s,
            "history_len": settings.history_len,
            "neighbours_k": settings.neighbours_cut,  # what the worker keeps (not what is served)
            "trending_k": settings.trending_k,
            "session_index_k": settings.session_index_k,
        }
        kwargs.update(overrides)
        return cls(DecayPolicy(settings.half_life_s), EventWeights(settings.event_weights), **kwargs)

    # --- writing ---------------------------------------------------------------------------
    def history(self, user: str) -> History:
        """The user's history, ``(item, time)`` ordered by ``(time, item)``, most recent last."""
        return sorted(self.hist.get(user, {}).items(), key=_hist_key)

    def plan(self, events: Sequence[EventView]) -> BatchDelta:
        """:func:`plan_batch` against this state, moving the landmark first when needed."""
        landmark = self.landmark
        if events:
            landmark = self.policy.next_landmark(max(e.t for e in events), landmark)
        keep = min(self.window, self.history_len)
        hists = {
            u: heapq.nlargest(keep, self.hist[u].items(), key=_hist_key)
            for u in {e.user for e in events}
            if u in self.hist
        }
        return plan_batch(
            events, hists, self.offsets,
            self.policy, self.weights, landmark,
            window=self.window, window_s=self.window_s, history_len=self.history_len,
        )

    def rescale(self, new_landmark: float) -> None:
        """Move the landmark: multiply every stored score by ``exp(−λ (L' − L))``.

        Sorted-set scores (popularity, trending, co-occurrence, category tastes) are rounded
        to whole units again and a member rounded to 0 goes, as ``rescale.lua`` does; the user
        item weights (raw doubles in Redis) are only multiplied.
        """
        f = self.policy.rescale_factor(self.landmark, new_landmark)
        _rescale_row(self.pop, f)
        for table in (self.trend, self.cooc, self.user_cats):
            for key in list(table):
                _rescale_row(table[key], f)
                if not table[key]:
                    del table[key]
        for row in self.user_items.values():
            for key in row:
                row[key] *= f
        self.landmark = new_landmark

    def apply(self, delta: BatchDelta) -> bool:
        """Apply a planned delta; False (nothing changed) if the offsets moved since planning."""
        for part in delta.offsets:
            if self.offsets.get(part, -1) != delta.base_offsets.get(part, -1):
                return False
        if delta.landmark < self.landmark:
            raise ValueError("delta was planned against an older landmark; plan it again")
        if delta.landmark != self.landmark:
            self.rescale(delta.landmark)
        for user in delta.forgotten:
            for table in (self.user_items, self.user_cats, self.hist, self.click_logs):
                table.pop(user, None)
        _add(self.pop, delta.pop)
        for table, inc, k in (
            (self.trend, delta.trend, self.trending_k),
            (self.cooc, delta.cooc, self.neighbours_k),
            (self.user_items, delta.user_items, self.user_items_k),
            (self.user_cats, delta.user_cats, self.user_cats_k),
        ):
            for key, row_inc in inc.items():
                row = table.setdefault(key, {})
                _add(row, row_inc)
                _keep_top(row, k)
                if not row:  # a subtraction emptied it: Redis has no empty sorted sets
                    del table[key]
        for user, times in delta.hist.items():
            row = self.hist.setdefault(user, {})
            for item, t in times.items():
                if t > row.get(item, -math.inf):
                    row[item] = t
            _keep_top(row, self.history_len)
        if self.session_index_k > 0:
            self._index_sessions(delta)
        self.item_cat.update(delta.item_cat)
        self.offsets.update(delta.offsets)
        self.last_event_time = max(self.last_event_time, delta.last_event_time)
        self.applied += delta.applied
        return True

    def _index_sessions(self, delta: BatchDelta) -> None:
        """The session index's share of :meth:`apply`: forgotten users out, then ``ZADD GT`` and the cut."""
        index, k = self.sessions, self.session_index_k
        for item, users in delta.index_gone.items():
            row = index.get(item)
            if row is None:
                continue
            for user in users:
                row.pop(user, None)
            if not row:
                del index[item]
        logs, hist = self.click_logs, self.hist
        for user in delta.hist:  # the click logs: as streams/session_index.py writes them
            logs[user] = pack_clicks(hist[user])
        touched: set[str] = set()
        for user, times in delta.hist.items():
            for item, t in times.items():
                row = index.get(item)
                if row is None:
                    row = index[item] = {}
                if t > row.get(user, -math.inf):
                    row[user] = t
                touched.add(item)
        for item in touched:
            _keep_top(index[item], k)

    def process(self, events: Sequence[EventView]) -> BatchDelta:
        """Plan and apply one batch; returns the delta."""
        delta = self.plan(events)
        self.apply(delta)
        return delta

    # --- reading (values at ``now``, default: the latest event time) -----------------------
    def value(self, stored: float, now: float | None = None) -> float:
        """A stored score read at ``now``."""
        when = self.last_event_time if now is None else now
        return self.policy.value_at(stored, self.landmark, when)

    def _read(self, scores: Mapping[str, float], n: int, now: float | None) -> list[tuple[str, float]]:
        return [(key, self.value(s, now)) for key, s in top_k(scores, n)]

    def popular(self, n: int, now: float | None = None) -> list[tuple[str, float]]:
        """Top ``n`` items by decayed weighted popularity."""
        return self._read(self.pop, n, now)

    def trending(self, category: str, n: int, now: float | None = None) -> list[tuple[str, float]]:
        """Top ``n`` items of one category's trending list."""
        return self._read(self.trend.get(category, {}), n, now)

    def neighbours(self, item: str, n: int, now: float | None = None) -> list[tuple[str, float]]:
        """Top ``n`` kept neighbours of ``item`` by decayed co-occurrence."""
        return self._read(self.cooc.get(item, {}), n, now)

    def similar_items(
        self, item: str, n: int, shrinkage: float, now: float | None = None
    ) -> list[tuple[str, float]]:
        """Top ``n`` kept neighbours of ``item`` by shrunk similarity (popularity as norm)."""
        row = self.cooc.get(item, {})
        norm_a = self.value(self.pop.get(item, 0.0), now)
        scores = {
            b: similarity(self.value(c, now), norm_a, self.value(self.pop.get(b, 0.0), now), shrinkage)
            for b, c in row.items()
        }
        return top_k(scores, n)

    def session_users(self, item: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` users who clicked ``item`` last, with that click's time, latest first
        (``ZREVRANGE`` of the item's session index)."""
        return heapq.nlargest(n, self.sessions.get(item, {}).items(), key=_hist_key)

    def user_weights(self, user: str, now: float | None = None) -> dict[str, float]:
        """The user's decayed item weights (the fold-in input)."""
        return {item: self.value(s, now) for item, s in self.user_items.get(user, {}).items()}
