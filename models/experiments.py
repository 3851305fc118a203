"""Online experiments' maths: sticky variant assignment and team-draft interleaving (no I/O).

Assignment hashes ``(experiment, user_id)`` with BLAKE2b, so every reader process gives one
shopper the same variant with no state to share, and two experiments split the same shoppers
independently of each other. Team-draft interleaving (Radlinski, Kurup and Joachims, *How does
clickthrough data reflect retrieval quality?*, CIKM 2008) merges two rankings into one list and
remembers which ranking ("team") contributed each item, so a click is credited to exactly one
variant.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
from collections.abc import Sequence
from itertools import accumulate

__all__ = ["unit_hash", "assign", "team_draft", "interleave_seed", "outcome"]

logger = logging.getLogger(__name__)

_SCALE = float(1 << 64)


def unit_hash(experiment: str, user_id: str) -> float:
    """A uniform number in ``[0, 1)`` fixed by ``(experiment, user_id)``.

    The two strings are separated by a NUL (neither may contain one), so ``("ab", "c")`` and
    ``("a", "bc")`` hash apart.
    """
    digest = hashlib.blake2b(f"{experiment}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def assign(experiment: str, user_id: str, shares: Sequence[float]) -> int:
    """Index of the variant ``user_id`` sees in ``experiment``.

    Parameters
    ----------
    experiment : str
        The experiment's name (the hash's salt: another experiment splits shoppers afresh).
    user_id : str
        The shopper.
    shares : sequence of float
        Traffic share of each variant, summing to 1 (validated where experiments are defined).

    Returns
    -------
    int
        ``i`` such that ``cumsum(shares)[i-1] <= h < cumsum(shares)[i]`` for ``h = unit_hash(...)``.
    """
    h = unit_hash(experiment, user_id)
    bounds = list(accumulate(shares))
    # Rounding can leave the last bound a hair under 1: the last variant takes that sliver.
    return min(bisect.bisect_right(bounds, h), len(shares) - 1)


def interleave_seed(experiment: str, user_id: str, request_id: str) -> int:
    """Seed of one answer's coin flips: fixed by the answer, different between answers."""
    digest = hashlib.blake2b(f"{experiment}\x00{user_id}\x00{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def team_draft(a: Sequence[str], b: Sequence[str], n: int, seed: int) -> list[tuple[str, int]]:
    """Team-draft interleaving of rankings ``a`` (team 0) and ``b`` (team 1), cut to ``n`` items.

    Each round, the team that has picked fewer items picks next (a coin flip breaks a tie); a
    team picks its highest-ranked item not yet in the list. When one ranking has nothing left
    to offer, the other fills the list.

    Parameters
    ----------
    a, b : sequence of str
        The two variants' rankings, best first (duplicates within one ranking are ignored).
    n : int
        Length of the merged list.
    seed : int
        Seed of the coin flips (:func:`interleave_seed`), so one answer is reproducible.

    Returns
    -------
    list of (item, team)
        The merged list, each item with the team (0 or 1) credited with it.
    """
    rng = random.Random(seed)
    rankings = (a, b)
    pos = [0, 0]
    picked = [0, 0]
    out: list[tuple[str, int]] = []
    seen: set[str] = set()

    def next_of(team: int) -> str | None:
        r = rankings[team]
        while pos[team] < len(r) and r[pos[team]] in seen:
            pos[team] += 1
        return r[pos[team]] if pos[team] < len(r) else None

    while len(out) < n:
        if picked[0] < picked[1]:
            team = 0
        elif picked[1] < picked[0]:
            team = 1
        else:
            team = rng.randrange(2)
        item = next_of(team)
        if item is None:
            team = 1 - team
            item = next_of(team)
            if item is None:
                break
        out.append((item, team))
        seen.add(item)
        picked[team] += 1
    return out


def outcome(clicks_a: int, clicks_b: int) -> str:
    """One interleaved answer's result: ``"a"``, ``"b"``, ``"tie"`` (clicked, even) or ``"none"``."""
    if clicks_a > clicks_b:
        return "a"
    if clicks_b > clicks_a:
        return "b"
    return "tie" if clicks_a else "none"
