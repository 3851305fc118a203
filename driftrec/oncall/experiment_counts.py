"""Experiment counters kept by the exporter: clicks on an experiment's answers, credited per variant.

The reader counts answers per variant (``answers|<v>``) in ``P:{x}:exp:<name>`` as it records
them; the exporter adds, for every attributed click of type ``t`` on an experiment's answer:

=========================== ==========================================================================
field                       meaning
=========================== ==========================================================================
``clicks|<v>|<t>``          clicks of type ``t`` on items credited to variant ``v``
``clicked|<v>|<t>``         answers in which ``v`` got at least one click of type ``t`` (the A/B rate's
                            numerator: answers, not clicks, so each answer is one Bernoulli trial)
``wins|<v>`` / ``ties``     interleaved answers whose ``view`` clicks went more to ``v`` / evenly
=========================== ==========================================================================

Per answer, ``#c|<v>|<t>`` in the served record ``P:{r:R}`` counts its clicks so far, so a second
click on one answer moves ``clicked`` and ``wins`` correctly. Counts live in Redis, so they
survive an exporter restart and every exporter reports the same figures; one exporter should
write them (the clicks topic is read by the exporter's own consumer group, each click once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from driftrec.experiments import counts_key
from driftrec.keys import Keys
from driftrec.models.experiments import outcome

if TYPE_CHECKING:
    from driftrec.oncall.attribution import Credit

__all__ = ["ExperimentCounter", "WIN_TYPE"]

logger = logging.getLogger(__name__)

#: The click type whose split decides an interleaved answer (a click on a shown item).
WIN_TYPE = "view"
_TEAMS = "#teams"


def _leader(counts: dict[str, int], names: Sequence[str]) -> str | None:
    """``wins|<name>`` field, ``ties`` or None (no click yet) for one interleaved answer."""
    if len(names) == 1:
        return f"wins|{names[0]}" if counts.get(names[0], 0) else None
    result = outcome(counts.get(names[0], 0), counts.get(names[1], 0))
    return {"a": f"wins|{names[0]}", "b": f"wins|{names[1]}", "tie": "ties", "none": None}[result]


class ExperimentCounter:
    """Turns a batch of credits (and the served records they were read from) into HINCRBYs."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def commands(self, credits: Sequence[Credit], rows: Sequence[dict[str, str]]) -> list[list[Any]]:
        cmds: list[list[Any]] = []
        # Clicks of one answer within a batch see each other through this per-answer state.
        state: dict[str, dict[str, int]] = {}
        for credit, row in zip(credits, rows, strict=True):
            exp, variant = credit.experiment, credit.variant
            if exp is None or variant is None or credit.source is None or row.get("#fallback"):
                continue  # not an experiment's answer, an item it did not show, or the default served
            rid, kind = credit.click.request_id, credit.click.type
            seen = state.get(rid)
            if seen is None:
                seen = state[rid] = {f: int(v) for f, v in row.items() if f.startswith("#c|")}
            key, served = counts_key(self.keys.prefix, exp), self.keys.served(rid)
            field = f"#c|{variant}|{kind}"
            cmds.append(["HINCRBY", key, f"clicks|{variant}|{kind}", 1])
            if not seen.get(field):
                cmds.append(["HINCRBY", key, f"clicked|{variant}|{kind}", 1])
            teams = row.get(_TEAMS)
            before: str | None = None
            names: list[str] = []
            if teams is not None and kind == WIN_TYPE:
                names = sorted({v for _, v in _team_names(teams)})
                before = _leader(_views(seen), names)
            seen[field] = seen.get(field, 0) + 1
            cmds.append(["HINCRBY", served, field, 1])
            if names:
                after = _leader(_views(seen), names)
                if after != before:
                    if before is not None:
                        cmds.append(["HINCRBY", key, before, -1])
                    if after is not None:
                        cmds.append(["HINCRBY", key, after, 1])
        return cmds


def _views(seen: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f, v in seen.items():
        _, variant, kind = f.split("|", 2)
        if kind == WIN_TYPE:
            out[variant] = out.get(variant, 0) + v
    return out


def _team_names(teams: str) -> list[tuple[str, str]]:
    try:
        data = orjson.loads(teams)
    except orjson.JSONDecodeError:
        return []
    return [(str(k), str(v)) for k, v in data.items()] if isinstance(data, dict) else []
