"""A forgotten user's share of the shared aggregates: their own events planned alone, negated.

Popularity, trending and co-occurrence are sums over events, and co-occurrence only pairs an
event with earlier events *of the same user* (per-user windows). So the part of those sums one
user put in is exactly what :func:`driftrec.models.online.plan_batch` produces for that user's events
alone, starting from an empty history, at the current landmark (forward-decay scores are relative
to the landmark, and a rescale multiplies every stored score alike, so the share planned at
today's landmark equals what is stored). A ``forget_user`` tombstone empties the user's history,
so the user's events split into segments at their tombstones; each tombstone takes away the
segment that ends with it, once (the batch that applies the tombstone carries the negated share,
behind the same offset guard).

:class:`ForgettingState` is :class:`driftrec.models.online.InMemoryState` with a per-user event log, so it
subtracts on forget as the worker does (the worker reads the log back from Kafka instead).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any

from driftrec.events import TOMBSTONE_TYPE
from driftrec.models.decay import DecayPolicy, EventWeights
from driftrec.models.online import FORGET_RESIDUE, BatchDelta, EventView, InMemoryState, plan_batch

__all__ = ["events_to_forget", "forget_share", "subtract_share", "ForgettingState"]

logger = logging.getLogger(__name__)

_ORDER = attrgetter("partition", "offset")


def events_to_forget(
    log: Iterable[EventView], tombstones: Collection[tuple[int, int]]
) -> tuple[list[EventView], set[str]]:
    """The events whose share the tombstones at ``tombstones`` take away.

    Parameters
    ----------
    log : Iterable[EventView]
        Events (tombstones included) of the forgotten users, read from the start of their
        partition up to and including their newest tombstone in ``tombstones``; repeats of a
        position count once. Events of users with no tombstone in ``tombstones`` are ignored.
    tombstones : Collection[tuple[int, int]]
        ``(partition, offset)`` of the tombstones being applied now (not those applied before:
        their segments were subtracted then).

    Returns
    -------
    tuple[list[EventView], set[str]]
        The events of every segment that ends at one of ``tombstones``, each segment closed by
        its tombstone (so a planner empties the history between segments), in ``(partition,
        offset)`` order; and the users whose first such segment starts at the beginning of
        ``log`` (no earlier tombstone seen): if the log was trimmed by retention, part of their
        share is gone from it.
    """
    wanted = set(tombstones)
    by_pos: dict[tuple[int, int], EventView] = {}
    for e in log:
        by_pos.setdefault((e.partition, e.offset), e)
    victims = {e.user for pos, e in by_pos.items() if pos in wanted and e.type == TOMBSTONE_TYPE}
    segment: dict[str, list[EventView]] = {}
    opened_at_start = set(victims)  # no tombstone seen yet: the segment starts where the log does
    out: list[EventView] = []
    from_start: set[str] = set()
    for e in sorted((e for e in by_pos.values() if e.user in victims), key=_ORDER):
        user = e.user
        if e.type != TOMBSTONE_TYPE:
            segment.setdefault(user, []).append(e)
            continue
        if (e.partition, e.offset) in wanted:
            out.extend(segment.get(user, ()))
            out.append(e)
            if user in opened_at_start:
                from_start.add(user)
        opened_at_start.discard(user)
        segment[user] = []  # events before an earlier tombstone were subtracted by it
    out.sort(key=_ORDER)
    return out, from_start


def forget_share(
    events: Sequence[EventView],
    policy: DecayPolicy,
    weights: EventWeights,
    landmark: float,
    *,
    window: int,
    window_s: float,
    history_len: int,
) -> BatchDelta:
    """What ``events`` added to popularity, trending and co-occurrence, at ``landmark``.

    :func:`driftrec.models.online.plan_batch` of the events alone: empty histories (a segment starts
    after a tombstone or at the user's first event), no offset guard (they were applied before,
    or are in the batch being planned). Events too far past ``landmark`` to have been applied
    at it are left out (logged): they never reached the store.

    Parameters
    ----------
    events : Sequence[EventView]
        From :func:`events_to_forget`.
    policy, weights : DecayPolicy, EventWeights
        Decay and event weights, as the batch uses.
    landmark : float
        The batch's landmark.
    window, window_s, history_len : int, float, int
        As for :func:`driftrec.models.online.plan_batch`.

    Returns
    -------
    BatchDelta
        The share; only ``pop``, ``trend`` and ``cooc`` matter to :func:`subtract_share`.
    """
    usable = [e for e in events if e.type == TOMBSTONE_TYPE or not policy.needs_rescale(e.t, landmark)]
    if len(usable) != len(events):
        logger.error("%d events to forget are too far past landmark %s to have been applied; "
                     "left out", len(events) - len(usable), landmark)
    return plan_batch(usable, {}, {}, policy, weights, landmark,
                      window=window, window_s=window_s, history_len=history_len)


def _net(target: dict[str, float], share: Mapping[str, float]) -> None:
    for key, s in share.items():
        net = target.get(key, 0.0) - s
        # What is left of an increment the share cancels is rounding (the same events summed
        # in another order): 0.0, so the store treats it as a subtraction and never adds a
        # member with a ghost score.
        target[key] = 0.0 if abs(net) <= FORGET_RESIDUE * s else net


def subtract_share(delta: BatchDelta, share: BatchDelta) -> None:
    """Add the negated ``share`` to ``delta``'s popularity, trending and co-occurrence, in place.

    A net increment ``<= 0`` is a subtraction for the store (:meth:`InMemoryState.apply`,
    ``apply_batch.lua``): a member that is not there is skipped (pruned by a top-K bound, or a
    share of events in this very batch), and one left at ``<= FORGET_RESIDUE × |increment|``
    is removed. Events of the user inside the batch before the tombstone are both in ``delta``
    and in ``share``, so they net out.

    Every item in the share also lists the batch's forgotten users in ``delta.index_gone``: they
    leave that item's session index (``P:{i:<item>}:us``) before the batch's own clicks go in.
    (The share's per-user rows end empty at the closing tombstone, so the items come from its
    popularity: with several users forgotten in one batch, each leaves the rows of the others'
    items too, where removing a non-member changes nothing.)
    """
    if share.landmark != delta.landmark:
        raise ValueError("the share was planned at another landmark than the batch")
    _net(delta.pop, share.pop)
    for table, rows in ((delta.trend, share.trend), (delta.cooc, share.cooc)):
        for key, row in rows.items():
            _net(table.setdefault(key, {}), row)
    if delta.forgotten:
        for item in share.pop:
            delta.index_gone.setdefault(item, set()).update(delta.forgotten)


class ForgettingState(InMemoryState):
    """:class:`InMemoryState` that subtracts a forgotten user's share, as the worker does.

    Keeps every applied event per user (the worker reads them back from Kafka instead), so it
    is a reference for tests, not for long streams.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: dict[str, dict[tuple[int, int], EventView]] = {}
        self._planned: tuple[BatchDelta, Sequence[EventView]] | None = None

    def plan(self, events: Sequence[EventView]) -> BatchDelta:
        """:meth:`InMemoryState.plan`, plus the negated share of every user it forgets."""
        delta = super().plan(events)
        self._planned = (delta, events)
        if not delta.forgotten:
            return delta
        guard = self.offsets
        fresh = {(e.partition, e.offset) for e in events
                 if e.type == TOMBSTONE_TYPE and e.offset > guard.get(e.partition, -1)}
        users = {e.user for e in events if (e.partition, e.offset) in fresh}
        log = [e for u in users for e in self.log.get(u, {}).values()]
        log += [e for e in events if e.user in users]
        todo, _ = events_to_forget(log, fresh)
        share = forget_share(todo, self.policy, self.weights, delta.landmark, window=self.window,
                             window_s=self.window_s, history_len=self.history_len)
        subtract_share(delta, share)
        return delta

    def apply(self, delta: BatchDelta) -> bool:
        """:meth:`InMemoryState.apply`; the planned events join the log when it applies."""
        planned = self._planned
        ok = super().apply(delta)
        if ok and planned is not None and planned[0] is delta:
            for e in planned[1]:
                self.log.setdefault(e.user, {}).setdefault((e.partition, e.offset), e)
            self._planned = None
        return ok
