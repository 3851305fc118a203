"""Incremental item-item co-occurrence and the shrunk cosine-like similarity built on it."""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from driftrec.models.decay import DecayPolicy

__all__ = [
    "window_partners",
    "cooccurrence_increments",
    "similarity",
    "similarity_array",
    "top_k",
]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


def window_partners(
    history: Sequence[tuple[str, float]],
    item: str,
    t: float,
    window: int,
    window_s: float,
) -> list[str]:
    """Items a new event co-occurs with.

    The candidates are the last ``window`` entries of the user's history (the item itself is
    skipped, not replaced by an older entry); of those, the ones whose event time is within
    ``window_s`` of ``t`` (either side, so a late event still pairs with its true neighbours).

    Parameters
    ----------
    history : Sequence[tuple[str, float]]
        ``(item, event_time)`` with distinct items, ordered by ``(event_time, item)``, most
        recent last — the order of the Redis history ZSET.
    item, t : str, float
        The new event's item and event time.
    window : int
        How many of the most recent history entries are candidates.
    window_s : float
        Largest event-time gap, in seconds, between the two events of a pair.

    Returns
    -------
    list[str]
        Partner items, most recent first.
    """
    partners: list[str] = []
    if len(history) > window:
        history = history[len(history) - window :]
    for other, t_other in reversed(history):
        if t - t_other > window_s:
            break  # the history is time-ordered: every older entry is further away still
        if other != item and t_other - t <= window_s:
            partners.append(other)
    return partners


def cooccurrence_increments(
    history: Sequence[tuple[str, float]],
    item: str,
    t: float,
    weight: float,
    policy: DecayPolicy,
    landmark: float,
    *,
    window: int,
    window_s: float,
) -> list[tuple[str, str, float]]:
    """Co-occurrence increments that one event adds, in both directions.

    Every pair gets the new event's weight, forward-decayed at the new event's time and stored
    in fixed point: :meth:`DecayPolicy.increment`, ``round(S weight exp(λ (t − L)))``. The earlier event's weight is not used on purpose: the history
    ZSET stores only item → time, and the later action is the one that carries the intent
    (viewing A and then buying B is strong evidence for A–B; viewing B after buying A is the
    shop's usual browsing). The pair's strength therefore never exceeds the popularity increment
    of the same event, which keeps ``cooc(a, b) <= pop(a) + pop(b)``.

    Parameters
    ----------
    history : Sequence[tuple[str, float]]
        The user's history before this event, as in :func:`window_partners`.
    item, t, weight : str, float, float
        The new event.
    policy : DecayPolicy
        Decay in use; ``landmark`` is the global forward-decay landmark.
    window, window_s : int, float
        See :func:`window_partners`.

    Returns
    -------
    list[tuple[str, str, float]]
        ``(a, b, increment)`` for ``a → b`` and ``b → a`` of every pair.
    """
    inc = policy.increment(weight, t, landmark)
    out: list[tuple[str, str, float]] = []
    for other in window_partners(history, item, t, window, window_s):
        out.append((item, other, inc))
        out.append((other, item, inc))
    return out


def similarity(cooc_ab: float, norm_a: float, norm_b: float, shrinkage: float) -> float:
    """Shrunk cosine-like similarity ``cooc / (sqrt(norm_a * norm_b) + shrinkage)``.

    ``norm_a`` is item a's (decayed, weighted) popularity. The shrinkage term pulls pairs seen
    only a few times towards zero, so two rare items clicked together once rank below a pair
    with a lower ratio but far more evidence (Koren, 2008, §2.2 uses the same idea).

    All three inputs must be read at the same ``now`` (:meth:`DecayPolicy.value_at`): the ratio
    does not depend on the time base, but the shrinkage is in read-time units. Returns 0 when
    the denominator is 0.
    """
    # sqrt(a) * sqrt(b) rather than sqrt(a * b): the product of two stored forward scores can
    # overflow float64 even when each one is representable.
    den = math.sqrt(norm_a) * math.sqrt(norm_b) + shrinkage
    return cooc_ab / den if den > 0 else 0.0


def similarity_array(
    cooc: npt.ArrayLike,
    norm_a: npt.ArrayLike,
    norm_b: npt.ArrayLike,
    shrinkage: float,
) -> npt.NDArray[np.float64]:
    """Vectorised :func:`similarity`; the arguments broadcast against each other."""
    c = np.asarray(cooc, dtype=np.float64)
    den = np.sqrt(np.asarray(norm_a, dtype=np.float64)) * np.sqrt(
        np.asarray(norm_b, dtype=np.float64)
    ) + shrinkage
    c, den = np.broadcast_arrays(c, den)
    out = np.zeros(c.shape, dtype=np.float64)
    np.divide(c, den, out=out, where=den > 0)
    return out


def top_k(scores: Mapping[K, float], k: int) -> list[tuple[K, float]]:
    """The ``k`` highest-scoring entries, best first.

    Ties are broken the way Redis ``ZREVRANGE`` does (larger member first), so the in-memory
    state and the Redis store return the same list.
    """
    if k <= 0:
        return []
    return heapq.nlargest(k, scores.items(), key=lambda kv: (kv[1], kv[0]))
