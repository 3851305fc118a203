"""Each experiment's figures from its counters: what the exporter exports and ``driftrec experiments`` prints.

:func:`read_experiments` reads the definitions (the settings' file and ``P:{x}:experiments``) and
their counters in one round trip; :func:`summarise` turns one experiment's counters into rates
with Wilson intervals, each variant against the first (control) with a two-proportion z-test,
the sample-ratio-mismatch check of the split and, for interleaving, the sign test of the wins
(``driftrec.models.abstats``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from driftrec.experiments import (
    Experiment,
    clicked_key,
    counts_key,
    decode_stored,
    definitions_key,
    load_experiments_file,
    shoppers_key,
)
from driftrec.models.abstats import sample_ratio_check, sign_test, two_proportions, wilson_interval

__all__ = ["read_experiments", "summarise", "ExperimentCollector", "ALPHA"]

logger = logging.getLogger(__name__)

#: Significance level at which a difference is called (and an interleaving preference named).
ALPHA = 0.05


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


async def read_experiments(client: aioredis.Redis, prefix: str, types: Sequence[str],
                           file: Path | None = None) -> list[tuple[Experiment, dict[str, int]]]:
    """Every defined experiment (file ones win a name clash) with its counts.

    The counts are the counter hash's fields plus ``shoppers|<v>`` and ``shoppers_clicked|<v>|<t>``,
    the sizes of the shopper sets, all read in one pipeline.
    """
    stored = await client.hgetall(definitions_key(prefix))
    defs = {e.name: e for e in decode_stored({_s(k): _s(v) for k, v in stored.items()})}
    if file is not None:
        defs.update({e.name: e for e in load_experiments_file(file)})
    exps = sorted(defs.values(), key=lambda e: (e.start_ts, e.name))
    if not exps:
        return []
    pipe = client.pipeline(transaction=False)
    layout: list[list[str]] = []
    for e in exps:
        pipe.hgetall(counts_key(prefix, e.name))
        fields = []
        for v in e.variants:
            pipe.scard(shoppers_key(prefix, e.name, v.name))
            fields.append(f"shoppers|{v.name}")
            for t in types:
                pipe.scard(clicked_key(prefix, e.name, v.name, t))
                fields.append(f"shoppers_clicked|{v.name}|{t}")
        layout.append(fields)
    replies = iter(await pipe.execute())
    out = []
    for e, fields in zip(exps, layout, strict=True):
        counts = {_s(k): int(v) for k, v in next(replies).items()}
        counts.update({f: int(next(replies)) for f in fields})
        out.append((e, counts))
    return out


def _interval(x: Any) -> dict[str, float]:
    return {k: round(v, 6) for k, v in asdict(x).items()}


def summarise(exp: Experiment, counts: Mapping[str, int], types: Sequence[str],
              now: float | None = None) -> dict[str, Any]:
    """One experiment's figures, as plain JSON-able data.

    Rates are per shopper, the unit the split randomises: a variant's rate of type ``t`` is its
    shoppers with a click of type ``t`` on its items over its shoppers served; answers and clicks
    are reported alongside. Each variant is compared with the first (the control).

    Parameters
    ----------
    exp : Experiment
        The definition (variants, shares, method).
    counts : mapping
        Its counts (:func:`read_experiments`; ``driftrec.oncall.experiment_counts``).
    types : sequence of str
        Click types to report (``Settings.event_weights``' keys: view, add_to_cart, purchase).
    """
    now = time.time() if now is None else now
    names = [v.name for v in exp.variants]
    variants: list[dict[str, Any]] = []
    for v in names:
        n = counts.get(f"shoppers|{v}", 0)
        per_type: dict[str, Any] = {}
        for t in types:
            clicked = counts.get(f"shoppers_clicked|{v}|{t}", 0)
            per_type[t] = {"clicks": counts.get(f"clicks|{v}|{t}", 0), "shoppers_clicked": clicked,
                           "rate": _interval(wilson_interval(clicked, n))}
        variants.append({"name": v, "shoppers": n, "answers": counts.get(f"answers|{v}", 0),
                         "fallback": counts.get(f"fallback|{v}", 0), "types": per_type})
    out: dict[str, Any] = {"name": exp.name, "method": exp.method, "status": exp.status(now),
                           "start": exp.start.isoformat() if exp.start else None,
                           "stop": exp.stop.isoformat() if exp.stop else None,
                           "shares": list(exp.shares), "variants": variants}
    if exp.method == "interleave":
        # Every answer shows both variants; the split to check is each answer's coin for the first pick.
        firsts = [counts.get(f"first|{v}", 0) for v in names]
        srm = sample_ratio_check(firsts, exp.shares)
        wins = {v: counts.get(f"wins|{v}", 0) for v in names}
        p = sign_test(wins[names[0]], wins[names[1]])
        preferred = None
        if p < ALPHA and wins[names[0]] != wins[names[1]] and not srm.mismatch:
            preferred = max(names, key=lambda v: wins[v])
        out["interleaving"] = {"answers": counts.get("answers|interleaved", 0), "wins": wins,
                               "ties": counts.get("ties", 0), "p_value": p, "preferred": preferred,
                               "fallback": counts.get("fallback|interleaved", 0)}
        out["srm"] = {"unit": "answers (first pick)", "observed": firsts, **asdict(srm)}
        out["comparisons"] = []
        return out
    shoppers = [v["shoppers"] for v in variants]
    srm = sample_ratio_check(shoppers, exp.shares)
    out["srm"] = {"unit": "shoppers", "observed": shoppers, **asdict(srm)}
    comparisons = []
    control = variants[0]
    for arm in variants[1:]:
        for t in types:
            c = two_proportions(control["types"][t]["shoppers_clicked"], control["shoppers"],
                                arm["types"][t]["shoppers_clicked"], arm["shoppers"])
            comparisons.append({"variant": arm["name"], "control": control["name"], "type": t,
                                "diff": _interval(c.diff), "z": round(c.z, 6), "p_value": c.p_value,
                                "significant": c.p_value < ALPHA and not srm.mismatch})
    out["comparisons"] = comparisons
    return out


class ExperimentCollector(Collector):
    """Prometheus series of the latest summaries (a stopped or deleted experiment's series go away)."""

    def __init__(self, latest: Callable[[], Sequence[dict[str, Any]]]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ev, evt = ["experiment", "variant"], ["experiment", "variant", "type"]
        answers = GaugeMetricFamily("driftrec_experiment_answers", "Answers served per experiment variant "
                                    "(counted by the readers as they record them).", labels=ev)
        fallback = GaugeMetricFamily("driftrec_experiment_fallback_answers", "Answers of a variant served "
                                     "with the default strategy because its model was not available.", labels=ev)
        clicks = GaugeMetricFamily("driftrec_experiment_clicks", "Clicks of a type on items a variant "
                                   "contributed to an experiment's answers.", labels=evt)
        shoppers = GaugeMetricFamily("driftrec_experiment_shoppers", "Shoppers served a variant (the unit "
                                     "the split randomises).", labels=ev)
        clicked = GaugeMetricFamily("driftrec_experiment_shoppers_clicked", "A variant's shoppers with at "
                                    "least one click of the type on its items.", labels=evt)
        rate = GaugeMetricFamily("driftrec_experiment_rate", "Shoppers clicked / shoppers served, with its "
                                 "95 % Wilson interval (bound: estimate, low, high).", labels=[*evt, "bound"])
        diff = GaugeMetricFamily("driftrec_experiment_difference", "Rate of the variant minus the control's, "
                                 "with its 95 % interval (bound: estimate, low, high).", labels=[*evt, "bound"])
        p_value = GaugeMetricFamily("driftrec_experiment_p_value", "Two-proportion z-test p-value of the "
                                    "variant against the control.", labels=evt)
        srm_p = GaugeMetricFamily("driftrec_experiment_srm_p_value", "Chi-square p-value of the observed "
                                  "split against the configured shares.", labels=["experiment"])
        srm = GaugeMetricFamily("driftrec_experiment_sample_ratio_mismatch", "1 when the split is broken "
                                "(SRM p-value below 0.001): no comparison can be trusted.", labels=["experiment"])
        wins = GaugeMetricFamily("driftrec_experiment_interleaving_wins", "Shoppers whose views in "
                                 "interleaved answers went more to the variant.", labels=ev)
        il_p = GaugeMetricFamily("driftrec_experiment_interleaving_p_value", "Sign-test p-value of the "
                                 "interleaving wins.", labels=["experiment"])
        il_answers = GaugeMetricFamily("driftrec_experiment_interleaved_answers", "Interleaved answers served.",
                                       labels=["experiment"])
        for s in self._latest():
            name = s["name"]
            for v in s["variants"]:
                answers.add_metric([name, v["name"]], v["answers"])
                shoppers.add_metric([name, v["name"]], v["shoppers"])
                fallback.add_metric([name, v["name"]], v["fallback"])
                for t, x in v["types"].items():
                    clicks.add_metric([name, v["name"], t], x["clicks"])
                    clicked.add_metric([name, v["name"], t], x["shoppers_clicked"])
                    for bound, value in x["rate"].items():
                        rate.add_metric([name, v["name"], t, bound], value)
            for c in s["comparisons"]:
                labels = [name, c["variant"], c["type"]]
                p_value.add_metric(labels, c["p_value"])
                for bound, value in c["diff"].items():
                    diff.add_metric([*labels, bound], value)
            srm_p.add_metric([name], s["srm"]["p_value"])
            srm.add_metric([name], 1.0 if s["srm"]["mismatch"] else 0.0)
            if "interleaving" in s:
                for v_name, w in s["interleaving"]["wins"].items():
                    wins.add_metric([name, v_name], w)
                il_p.add_metric([name], s["interleaving"]["p_value"])
                il_answers.add_metric([name], s["interleaving"]["answers"])
        yield from (answers, shoppers, fallback, clicks, clicked, rate, diff, p_value, srm_p, srm, wins, il_p,
                    il_answers)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render(summaries: Sequence[dict[str, Any]], types: Sequence[str]) -> list[Any]:
    """Rich tables for ``driftrec experiments``: the figures the exporter exports, per experiment."""
    from rich.table import Table

    out: list[Any] = []
    for s in summaries:
        srm = s["srm"]
        title = (f"{s['name']} ({s['method']}, {s['status']}; split check p={srm['p_value']:.3g}"
                 f"{' MISMATCH: the split is broken' if srm['mismatch'] else ''})")
        table = Table(title=title, title_justify="left")
        for col in ("variant", "shoppers", "answers", "type", "clicks", "shoppers clicked", "rate [95% CI]",
                    "vs control [95% CI]", "p"):
            table.add_column(col, justify="left" if col in ("variant", "type") else "right")
        comparisons = {(c["variant"], c["type"]): c for c in s["comparisons"]}
        for v in s["variants"]:
            first = True
            for t in types:
                x = v["types"][t]
                r = x["rate"]
                c = comparisons.get((v["name"], t))
                vs = p = ""
                if c is not None:
                    d = c["diff"]
                    vs = f"{100 * d['estimate']:+.2f} pp [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
                    p = f"{c['p_value']:.3g}{' *' if c['significant'] else ''}"
                answers = f"{v['answers']}" + (f" ({v['fallback']} fallback)" if v["fallback"] else "")
                table.add_row(v["name"] if first else "", str(v["shoppers"]) if first else "",
                              answers if first else "", t, str(x["clicks"]), str(x["shoppers_clicked"]),
                              f"{_pct(r['estimate'])} [{_pct(r['low'])}, {_pct(r['high'])}]", vs, p)
                first = False
        if "interleaving" in s:
            il = s["interleaving"]
            wins = ", ".join(f"{k} {w}" for k, w in il["wins"].items())
            table.caption = (f"{il['answers']} interleaved answers; shoppers preferring each: {wins}, "
                             f"ties {il['ties']}; sign test p={il['p_value']:.3g}"
                             f"; preferred: {il['preferred'] or 'none yet'}")
        out.append(table)
    return out
