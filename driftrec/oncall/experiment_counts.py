"""Experiment counts kept by the exporter: clicks on an experiment's answers, credited per variant.

The shopper is the unit an experiment randomises, so the statistics count shoppers: the A/A runs
of ``benchmarks/experiments.py`` measured answer-level tests on simulated traffic (a shopper gets
~9 answers, some over 100) flagging 15 % of identical splits at the 5 % level and the answer
split as broken in 40 % of them. The readers add each answer's shopper to the variant's set
(``shoppers:<v>``) and count answers; the exporter, for each attributed click of type ``t`` on an
experiment's answer, writes (``driftrec.experiments`` builds the keys):

============================== =======================================================================
key / field                    meaning
============================== =======================================================================
``clicks|<v>|<t>`` (counts)    clicks of type ``t`` on items credited to variant ``v``
``clicked:<v>:<t>`` (SET)      ``v``'s shoppers with at least one such click: the A/B rate's numerator
``prefs`` (HASH)               ``<shopper>|<v>``: views credited to ``v`` in the shopper's interleaved
                               answers
``wins|<v>`` / ``ties``        interleaved shoppers whose views went more to ``v`` / evenly (kept up
                               to date with each click from the ``prefs`` counts)
============================== =======================================================================

Counts live in Redis, so they survive an exporter restart and every exporter reports the same
figures; one exporter writes them (its own consumer group reads each click once).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from driftrec.experiments import clicked_key, counts_key, preferences_key
from driftrec.keys import Keys
from driftrec.models.experiments import outcome

if TYPE_CHECKING:
    from driftrec.oncall.attribution import Credit

__all__ = ["ExperimentCounter", "WIN_TYPE", "Execute"]

logger = logging.getLogger(__name__)

#: The click type whose split decides an interleaving preference (a click on a shown item).
WIN_TYPE = "view"
Execute = Callable[[Sequence[Sequence[Any]]], Awaitable[list[Any]]]


def _leader(mine: int, theirs: int, me: str, other: str) -> str | None:
    """``wins|<variant>``, ``ties`` or None (no view yet) for one shopper's interleaved views."""
    return {"a": f"wins|{me}", "b": f"wins|{other}", "tie": "ties", "none": None}[outcome(mine, theirs)]


def _teams(row: dict[str, str]) -> list[str]:
    raw = row.get("#teams")
    if raw is None:
        return []
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return sorted({str(v) for v in data.values()}) if isinstance(data, dict) else []


class ExperimentCounter:
    """Turns a batch of credits (and the served records they were read from) into Redis updates."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    async def count(self, credits: Sequence[Credit], rows: Sequence[dict[str, str]], execute: Execute) -> None:
        """Update the counts for ``credits``; ``execute`` runs one pipeline and returns its replies."""
        prefix = self.keys.prefix
        first: list[list[Any]] = []
        # (index of the HINCRBY in ``first``, experiment, variant, the other variant)
        follow: list[tuple[int, str, str, str]] = []
        for credit, row in zip(credits, rows, strict=True):
            exp, variant = credit.experiment, credit.variant
            if exp is None or variant is None or credit.source is None or row.get("#fallback"):
                continue  # not an experiment's answer, an item it did not show, or the default served
            user = row.get("#user") or credit.click.user_id
            kind = credit.click.type
            first.append(["HINCRBY", counts_key(prefix, exp), f"clicks|{variant}|{kind}", 1])
            if not user:
                continue
            first.append(["SADD", clicked_key(prefix, exp, variant, kind), user])
            names = _teams(row)
            if kind == WIN_TYPE and len(names) == 2 and variant in names:
                other = names[1 - names.index(variant)]
                prefs = preferences_key(prefix, exp)
                follow.append((len(first), exp, variant, other))
                # In one pipeline, in click order: each pair reads the state its click made.
                first.append(["HINCRBY", prefs, f"{user}|{variant}", 1])
                first.append(["HGET", prefs, f"{user}|{other}"])
        if not first:
            return
        replies = await execute(first)
        second: list[list[Any]] = []
        for i, exp, variant, other in follow:
            mine, theirs = int(replies[i]), int(replies[i + 1] or 0)
            before, after = _leader(mine - 1, theirs, variant, other), _leader(mine, theirs, variant, other)
            if before != after:
                key = counts_key(prefix, exp)
                if before is not None:
                    second.append(["HINCRBY", key, before, -1])
                if after is not None:
                    second.append(["HINCRBY", key, after, 1])
        if second:
            await execute(second)
