"""Online experiments, measured offline: the A/A false-positive rate, and how many shoppers (and
answers) an A/B split and team-draft interleaving each need to detect a known lift at power 0.8.

``python benchmarks/experiments.py`` writes ``benchmarks/results/experiments.json``.

A/A: the traffic is the built-in shop simulator's (``driftrec.simulator.ShopSimulator``): every
``view`` asks the reader for an answer, so heavy shoppers get many answers, as on a site. The
simulator does not model clicks on recommendations, so each shopper gets a click propensity
drawn once (Beta(2, 18), mean 10 %; some shoppers click far more than others); an answer is
clicked with its shopper's propensity, a click goes on to the cart with probability 0.3 and the
cart to a purchase with 0.3, whatever the variant. Each of 200 runs is a fresh experiment name (so
a fresh split of the same shoppers, by the reader's hash) and fresh clicks; every click goes
through the exporter's code (``attribute`` -> ``ExperimentCounter``) and the figures through
``summarise``, as live. A run is a false positive when the control-vs-treatment view rate (per
shopper) differs at p < 0.05; the answer-level test first built is computed on the same clicks.

Power (``ClickModel``): position-based clicks on 10-item lists; position ``p`` is looked at with
probability ``1 / (p + 1)``; an item of ranking A is clicked, when looked at, with probability
``base x m``, an item of B with ``base x (1 + lift) x m``, ``m`` the shopper's propensity (Gamma,
mean 1); each shopper gets as many answers as a shopper of the simulator's traffic. A/B shows one
ranking per shopper and compares the shoppers with a click (``two_proportions``, as the exporter);
interleaving shows team-draft merges of both (``team_draft``) and counts the shoppers whose views
went more to each ranking (``sign_test``). For each method the smallest number of shoppers whose
power (share of simulated experiments with p < 0.05 and the right sign) reaches 0.8 is found by
bisection over a doubling grid.

``--real-stack``: the A/A runs again, on Kafka + Redis + worker + reader + exporter started as the
integration tests start them: 200 experiments one after another (the product runs one at a time)
over the same simulated traffic, answers from the reader over HTTP, clicks through Kafka, the
figures from the exporter (``tools/experiments_live.py``; ``aa_real_stack`` in the JSON).

``--latency``: the reader with no experiment, an A/B split and an interleaving running
(``benchmarks/reader.py``'s set-up), vegeta open loop at 250 and 500 req/s, the cases alternating
within each round (``latency`` in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import RESULTS, ROOT, commit, machine

from driftrec.experiments import clicked_key, counts_key, parse_experiment, shoppers_key
from driftrec.keys import Keys
from driftrec.models.abstats import sample_ratio_check, sign_test, two_proportions
from driftrec.models.experiments import assign, team_draft
from driftrec.oncall.attribution import Click, attribute
from driftrec.oncall.experiment_counts import ExperimentCounter
from driftrec.oncall.experiment_stats import summarise
from driftrec.simulator import ShopSimulator

logger = logging.getLogger(__name__)

TYPES = ["add_to_cart", "purchase", "view"]
KEYS = Keys("bench")


# --- A/A ----------------------------------------------------------------------------------------
class Db:
    """The Redis commands the reader and the exporter send for experiments, on dicts and sets."""

    def __init__(self) -> None:
        self.h: dict[str, dict[str, int]] = {}
        self.sets: dict[str, set[str]] = {}

    def run(self, cmds: Any) -> list[Any]:
        out: list[Any] = []
        for op, key, *args in cmds:
            if op == "HINCRBY":
                h = self.h.setdefault(key, {})
                h[args[0]] = h.get(args[0], 0) + int(args[1])
                out.append(h[args[0]])
            elif op == "HGET":
                out.append(self.h.get(key, {}).get(args[0]))
            elif op == "SADD":
                self.sets.setdefault(key, set()).add(args[0])
                out.append(1)
            else:
                raise AssertionError(op)
        return out

    async def execute(self, cmds: Any) -> list[Any]:
        return self.run(cmds)

    def counts(self, exp: Any) -> dict[str, int]:
        """What ``read_experiments`` reads: the counter hash and the sizes of the shopper sets."""
        counts = dict(self.h.get(counts_key(KEYS.prefix, exp.name), {}))
        for v in exp.variants:
            counts[f"shoppers|{v.name}"] = len(self.sets.get(shoppers_key(KEYS.prefix, exp.name, v.name), ()))
            for t in TYPES:
                counts[f"shoppers_clicked|{v.name}|{t}"] = len(
                    self.sets.get(clicked_key(KEYS.prefix, exp.name, v.name, t), ()))
        return counts


def simulator_answers(n_events: int, seed: int) -> list[str]:
    """The shopper of every answer: one per simulated ``view``, in stream order."""
    sim = ShopSimulator(n_users=20_000, n_items=5_000, seed=seed)
    return [e["user_id"] for e in sim.events(n_events) if e["type"] == "view"]


def aa_run(run: int, users: list[str], propensity: dict[str, float], rng: np.random.Generator) -> dict[str, Any]:
    """One A/A experiment through the reader's and the exporter's counting code."""
    name = f"aa-{run}"
    exp = parse_experiment({"variants": [{"name": "control", "share": 0.5}, {"name": "treat", "share": 0.5}]}, name)
    variant_of = {u: ("control", "treat")[assign(name, u, (0.5, 0.5))] for u in propensity}
    db = Db()
    p = np.fromiter((propensity[u] for u in users), dtype=np.float64, count=len(users))
    u_click, u_cart, u_buy = rng.random(len(users)), rng.random(len(users)), rng.random(len(users))
    counter = ExperimentCounter(KEYS)
    credits, rows = [], []
    answer_clicked = {"control": 0, "treat": 0}
    ckey = counts_key(KEYS.prefix, name)
    for k, user in enumerate(users):
        v = variant_of[user]
        # What the reader's recorder sends with the answer (online/experiments.py).
        db.run([("HINCRBY", ckey, f"answers|{v}", 1), ("SADD", shoppers_key(KEYS.prefix, name, v), user)])
        if u_click[k] >= p[k]:
            continue
        answer_clicked[v] += 1
        served = {"#strategy": "blend", "#experiment": name, "#variant": v, "#user": user, "item": "item_item"}
        kinds = ["view"]
        if u_cart[k] < 0.3:
            kinds.append("add_to_cart")
            if u_buy[k] < 0.3:
                kinds.append("purchase")
        for kind in kinds:
            credits.append(attribute(Click(f"r{k}", "item", kind, user), served))
            rows.append(served)
    asyncio.run(counter.count(credits, rows, db.execute))
    counts = db.counts(exp)
    s = summarise(exp, counts, TYPES, now=0)
    (view,) = [c for c in s["comparisons"] if c["type"] == "view"]
    # The answer-level test these figures replaced, on the same clicks, for comparison.
    answers = [counts["answers|control"], counts["answers|treat"]]
    old = two_proportions(answer_clicked["control"], answers[0], answer_clicked["treat"], answers[1])
    return {"p_value": view["p_value"], "srm_mismatch": s["srm"]["mismatch"],
            "answer_level_p_value": old.p_value, "answer_level_srm": sample_ratio_check(answers, (0.5, 0.5)).mismatch}


def aa(runs: int, n_events: int, seed: int) -> dict[str, Any]:
    users = simulator_answers(n_events, seed)
    rng = np.random.default_rng(seed)
    distinct = sorted(set(users))
    propensity = dict(zip(distinct, rng.beta(2.0, 18.0, len(distinct)).tolist(), strict=True))
    started = time.perf_counter()
    results = [aa_run(r, users, propensity, rng) for r in range(runs)]
    p = np.array([r["p_value"] for r in results])
    fp = int((p < 0.05).sum())
    old = np.array([r["answer_level_p_value"] for r in results])
    old_fp = int((old < 0.05).sum())
    per_user = np.bincount(np.unique(users, return_inverse=True)[1])
    return {
        "runs": runs, "answers_per_run": len(users), "shoppers": len(distinct),
        "answers_per_shopper": {"mean": round(float(per_user.mean()), 2), "max": int(per_user.max())},
        "click_propensity": "per shopper, Beta(2, 18): mean 0.1",
        "unit": "shopper (rate = shoppers with a view click / shoppers served)",
        "false_positives_at_0.05": fp, "false_positive_rate": fp / runs,
        "false_positive_rate_ci95": _binomial_ci(fp, runs),
        "srm_flags_at_0.001": sum(r["srm_mismatch"] for r in results),
        "p_value_deciles": [round(float(x), 3) for x in np.quantile(p, np.linspace(0.1, 0.9, 9))],
        "answer_level": {"what": "the same runs tested per answer (answers clicked / answers served), as "
                                 "first built: answers of one shopper are not independent",
                         "false_positive_rate": old_fp / runs, "false_positive_rate_ci95": _binomial_ci(old_fp, runs),
                         "srm_flags_at_0.001": sum(r["answer_level_srm"] for r in results)},
        "seconds": round(time.perf_counter() - started, 1),
    }


def _binomial_ci(k: int, n: int) -> list[float]:
    from scipy import stats

    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    return [round(ci.low, 4), round(ci.high, 4)]


# --- power: A/B vs interleaving -----------------------------------------------------------------
class ClickModel:
    """Position-based clicks on 10-item lists by shoppers of varying propensity.

    Position ``p`` is looked at with probability ``1 / (p + 1)``; a looked-at item of ranking A is
    clicked with probability ``base x m``, one of B with ``base x (1 + lift) x m``, where ``m`` is
    the shopper's propensity (Gamma, mean 1, shape ``shape``). A shopper gets a number of answers
    drawn from the simulator's answers per shopper. The rankings share ``overlap`` of their items,
    at the same ranks (both strategies agree on them); a shared item is clicked like one of A.
    """

    def __init__(self, base: float, lift: float, overlap: float, answers_per_shopper: np.ndarray,
                 length: int = 10, shape: float = 1.0) -> None:
        self.base, self.lift, self.length, self.shape = base, lift, length, shape
        self.look = 1.0 / (np.arange(length) + 1.0)
        self.per_shopper = answers_per_shopper
        shared = int(round(overlap * length))
        a = [f"a{k}" for k in range(length)]
        b = [f"b{k}" for k in range(length)]
        for k in np.linspace(0, length - 1, shared).round().astype(int).tolist() if shared else []:
            b[k] = a[k]
        self.a, self.b = a, b
        better = {x: base * (1 + lift) for x in b if x not in a}
        # Every distinct team-draft merge of the two lists (the coin flips decide which): the
        # attractiveness of each position, and which team gets its clicks.
        patterns = {tuple(team_draft(a, b, length, seed)) for seed in range(2048)}
        self.attract = np.array([[better.get(x, base) for x, _ in pat] for pat in patterns])
        self.team = np.array([[t for _, t in pat] for pat in patterns])

    def shoppers(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return rng.gamma(self.shape, 1.0 / self.shape, n), rng.choice(self.per_shopper, n)

    def ab_power(self, n_shoppers: int, reps: int, rng: np.random.Generator) -> float:
        hits = 0
        for _ in range(reps):
            m, k = self.shoppers(n_shoppers, rng)
            arm = rng.random(n_shoppers) < 0.5  # True: B
            q = self.base * np.where(arm, 1 + self.lift, 1.0)[:, None] * m[:, None] * self.look[None, :]
            p_answer = 1.0 - np.prod(1.0 - np.minimum(q, 1.0), axis=1)
            clicked = rng.random(n_shoppers) < 1.0 - (1.0 - p_answer) ** k
            c = two_proportions(int(clicked[~arm].sum()), int((~arm).sum()), int(clicked[arm].sum()), int(arm.sum()))
            hits += c.p_value < 0.05 and c.diff.estimate > 0
        return hits / reps

    def interleave_power(self, n_shoppers: int, reps: int, rng: np.random.Generator) -> float:
        hits = 0
        for _ in range(reps):
            m, k = self.shoppers(n_shoppers, rng)
            owner = np.repeat(np.arange(n_shoppers), k)
            pat = rng.integers(0, len(self.team), len(owner))
            q = np.minimum(self.attract[pat] * m[owner][:, None] * self.look[None, :], 1.0)
            click = rng.random(q.shape) < q
            to_b = (click & (self.team[pat] == 1)).sum(axis=1)
            to_a = (click & (self.team[pat] == 0)).sum(axis=1)
            views_a = np.bincount(owner, to_a, n_shoppers)
            views_b = np.bincount(owner, to_b, n_shoppers)
            wins_a, wins_b = int((views_a > views_b).sum()), int((views_b > views_a).sum())
            hits += sign_test(wins_a, wins_b) < 0.05 and wins_b > wins_a
        return hits / reps


def shoppers_needed(power_at: Any, target: float = 0.8, start: int = 100, limit: int = 5_000_000) -> dict[str, Any]:
    """Smallest shopper count (to ~5 %) whose simulated power reaches ``target``."""
    lo, hi = 0, start
    curve: list[tuple[int, float]] = []
    while True:
        pw = power_at(hi)
        curve.append((hi, pw))
        if pw >= target or hi >= limit:
            break
        lo, hi = hi, hi * 2
    while hi - lo > max(10, hi // 20):
        mid = (lo + hi) // 2
        pw = power_at(mid)
        curve.append((mid, pw))
        if pw >= target:
            hi = mid
        else:
            lo = mid
    return {"shoppers": hi, "curve": sorted(curve)}


def latency(rounds: int, seconds: float, rates: tuple[int, ...]) -> dict[str, Any]:
    """The reader's latency with no experiment, an A/B split and an interleaving running, open loop.

    ``benchmarks/reader.py``'s set-up (a private Redis filled with 10,000 items and 50,000 shoppers,
    one ``driftrec serve``); vegeta (``benchmarks/system.py``'s runner) offers each rate open loop
    on random shoppers' recommendations. Cases and rates alternate within each round, the case
    order rotating from round to round, each case defined through the admin endpoint just before
    its window: whatever else loads the machine meanwhile hits every case alike. Per rate, the
    ratio of each experiment's p99 to the no-experiment p99 of the same round, and their median.
    """
    import os
    import random
    import shutil
    import signal
    import subprocess
    import tempfile
    import urllib.error
    import urllib.request

    import reader as rb  # benchmarks/reader.py
    import redis
    import system as sb  # benchmarks/system.py: vegeta, CpuMeter, metric_total

    cases: dict[str, dict[str, Any] | None] = {
        "none": None,
        "ab": {"variants": [{"name": "control", "share": 0.5},
                            {"name": "tf", "share": 0.5, "weights": {"tf": 1.0, "item_item": 0.5}}]},
        "interleave": {"method": "interleave", "variants": [{"name": "blend"}, {"name": "tf", "weights": {"tf": 1.0}}]},
    }
    vegeta = sb.vegeta_bin()
    work = Path(tempfile.mkdtemp(prefix="driftrec-explat-"))
    rport, hport = rb.free_port(), rb.free_port()
    redis_proc = rb.private_redis(rport, work)
    reader = None
    try:
        r = redis.Redis(port=rport)
        rb.wait_redis(r)
        data = rb.populate(r, 10_000, 50_000)
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{rport}/0", "DRIFTREC_KEY_PREFIX": rb.PREFIX,
               "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "DRIFTREC_API_KEYS": '["bench"]'}
        reader = subprocess.Popen([sys.executable, "-m", "driftrec.cli", "serve", "--port", str(hport)], cwd=ROOT,
                                  env=env, stdout=open(work / "reader.log", "wb"), stderr=subprocess.STDOUT)
        rb.wait_ready(hport, rb.VERSION, 60, reader)
        rng = random.Random(7)
        targets = work / "targets.txt"
        targets.write_text("".join(f"GET http://127.0.0.1:{hport}/v1/recommendations/u{rng.randrange(50_000)}?n=10\n"
                                   for _ in range(20_000)))
        base = f"http://127.0.0.1:{hport}/v1/experiments/bench"
        metrics_url = f"http://127.0.0.1:{hport}/metrics"

        def define(body: dict[str, Any] | None) -> None:
            method, data_ = ("PUT", json.dumps(body).encode()) if body else ("DELETE", None)
            req = urllib.request.Request(base, data=data_, method=method, headers={"X-API-Key": "bench"})
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except urllib.error.HTTPError as exc:
                if not (method == "DELETE" and exc.code == 404):
                    raise

        for body in cases.values():  # warm every path (the interleaving's second blend included)
            define(None)
            define(body)
            sb.vegeta(vegeta, targets, 100, 3.0, work)
        names = list(cases)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {str(x): {k: [] for k in cases} for x in rates}
        for rnd in range(rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for rate in rates:
                for name in order:
                    define(None)
                    define(cases[name])
                    shed0 = sb.metric_total(metrics_url, "driftrec_reader_shed_answers")
                    cmds0, rcpu0 = int(r.info("stats")["total_commands_processed"]), rb.redis_cpu_seconds(rport)
                    meter = sb.CpuMeter({"reader": reader.pid})
                    one = sb.vegeta(vegeta, targets, rate, seconds, work)
                    one["redis_commands_per_request"] = round(
                        (int(r.info("stats")["total_commands_processed"]) - cmds0) / max(one["requests"], 1), 2)
                    one["redis_cpu_ms_per_request"] = round(
                        (rb.redis_cpu_seconds(rport) - rcpu0) * 1000 / max(one["requests"], 1), 3)
                    one["cpu"] = meter.read()
                    one["reader_cpu_ms_per_request"] = round(
                        one["cpu"].get("reader_cpu_pct", 0.0) * seconds * 10 / max(one["requests"], 1), 3)
                    one["shed_answers"] = int(sb.metric_total(metrics_url, "driftrec_reader_shed_answers") - shed0)
                    # A shed answer costs next to nothing: per ranked answer compares the cases' work.
                    one["reader_cpu_ms_per_ranked_answer"] = round(
                        one["cpu"].get("reader_cpu_pct", 0.0) * seconds * 10
                        / max(one["requests"] - one["shed_answers"], 1), 3)
                    one["round"] = rnd
                    logger.info("round %d %d/s %s: p50 %.1f p99 %.1f ms, shed %d, %s", rnd, rate, name, one["p50_ms"],
                                one["p99_ms"], one["shed_answers"], one["cpu"])
                    runs[str(rate)][name].append(one)
        define(None)
        keys = ("p50_ms", "p99_ms", "max_ms", "reader_cpu_ms_per_request", "reader_cpu_ms_per_ranked_answer",
                "redis_commands_per_request", "redis_cpu_ms_per_request", "shed_answers", "success")
        median = {at: {name: {k: float(np.median([x[k] for x in rs])) for k in keys} for name, rs in by.items()}
                  for at, by in runs.items()}
        ratio: dict[str, dict[str, Any]] = {}
        for at, by in runs.items():
            ratio[at] = {}
            for name in ("ab", "interleave"):
                per_round = [round(x["p99_ms"] / b["p99_ms"], 3) for x, b in zip(by[name], by["none"], strict=True)]
                cpu = [round(x["reader_cpu_ms_per_ranked_answer"] / b["reader_cpu_ms_per_ranked_answer"], 3)
                       for x, b in zip(by[name], by["none"], strict=True)]
                ratio[at][name] = {"p99_over_none_per_round": per_round,
                                   "p99_over_none_median": float(np.median(per_round)),
                                   "reader_cpu_per_ranked_answer_over_none_per_round": cpu,
                                   "reader_cpu_per_ranked_answer_over_none_median": float(np.median(cpu))}
        return {
            "what": f"GET /v1/recommendations/{{random of 50,000 shoppers}}?n=10, vegeta open loop at {list(rates)} "
                    f"req/s, {seconds:g} s per window; {rounds} rounds, in each every rate and case, the case "
                    "order rotating per round; medians over rounds, and per-round ratios to no experiment",
            "target": "p99 <= 5 ms at >= 2000 req/s per reader process (issue 23; not met without experiments "
                      "either): what is checked here is that an experiment does not make it worse",
            "data": data, "cases": cases, "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "median": median, "ratio": ratio, "runs": runs,
        }
    finally:
        if reader is not None:
            reader.send_signal(signal.SIGTERM)
            try:
                reader.wait(10)
            except subprocess.TimeoutExpired:
                reader.kill()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def ranking_cpu(rounds: int, users_per_round: int = 400) -> dict[str, Any]:
    """The reader's CPU per ranked answer in process (no HTTP, no load generator): no experiment,
    an A/B variant, an interleaved answer, and an interleaved answer ranked by two separate blends
    (as before ``blend_each`` shared their work). ``benchmarks/reader.py``'s data; the cases
    alternate within each round (order rotating) on the same shoppers; ``time.process_time``."""
    import random
    import shutil
    import tempfile

    import reader as rb  # benchmarks/reader.py
    import redis

    import driftrec.online.recommender as recmod
    from driftrec.models.blend import blend, blend_each
    from driftrec.online.app import create_app, create_store
    from driftrec.online.experiments import Pick
    from driftrec.settings import load_settings

    def unshared(c: Any, n: int, ws: Any, **kw: Any) -> list[Any]:
        return [blend(c, n, weights=w, **kw) for w in ws]

    async def measure(port: int) -> dict[str, list[float]]:
        s = load_settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix=rb.PREFIX,
                          kafka_bootstrap_servers="127.0.0.1:9")
        app = create_app(s, create_store(s))
        async with app.router.lifespan_context(app):
            await app.state.snapshot.refresh()
            rec, reg = app.state.recommender, app.state.experiments
            lives = {}
            for name, body in (("ab", {"variants": [{"name": "control", "share": 0.5}, {
                                   "name": "tf", "share": 0.5, "weights": {"tf": 1.0, "item_item": 0.5}}]}),
                               ("il", {"method": "interleave", "variants": [{"name": "blend"}, {
                                   "name": "tf", "weights": {"tf": 1.0}}]})):
                reg.stored = {name: parse_experiment(body, name)}
                reg._compile()
                lives[name] = reg.active[0]
            reg.stored = {}
            reg._compile()
            rng = random.Random(3)
            out: dict[str, list[float]] = {"none": [], "ab": [], "interleave": [], "interleave_unshared_blends": []}

            async def one(case: str, user: str) -> None:
                if case == "none":
                    await rec.for_user(user, 10)
                elif case == "ab":
                    await reg.rank(Pick(lives["ab"], 1), user, 10, "r", exclude=(), category=None, context=())
                else:
                    await reg.rank(Pick(lives["il"], -1), user, 10, "r" + user, exclude=(), category=None, context=())

            await rec.for_user("u0", 10)
            await app.state.models.wait()  # the published model loaded, as in steady state
            for u in range(200):  # warm the row caches
                await one("interleave", f"u{u}")
            names = list(out)
            try:
                for rnd in range(rounds):
                    users = [f"u{rng.randrange(50_000)}" for _ in range(users_per_round)]
                    for case in names[rnd % len(names):] + names[:rnd % len(names)]:
                        recmod.blend_each = unshared if case == "interleave_unshared_blends" else blend_each
                        t0 = time.process_time()
                        for user in users:
                            await one(case, user)
                        out[case].append(round((time.process_time() - t0) * 1000 / len(users), 3))
            finally:
                recmod.blend_each = blend_each
            return out

    work = Path(tempfile.mkdtemp(prefix="driftrec-rankcpu-"))
    port = rb.free_port()
    proc = rb.private_redis(port, work)
    try:
        r = redis.Redis(port=port)
        rb.wait_redis(r)
        rb.populate(r, 10_000, 50_000)
        runs = asyncio.run(measure(port))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    median = {k: float(np.median(v)) for k, v in runs.items()}
    return {"what": f"process CPU per ranked answer (ms), in process, {rounds} rounds of {users_per_round} random "
                    "shoppers per case, cases alternating (order rotating); the recorder's write is not included",
            "runs": runs, "median": median,
            "over_none_median": {k: round(float(np.median([x / b for x, b in zip(v, runs["none"], strict=True)])), 3)
                                 for k, v in runs.items() if k != "none"}}


# --- A/A on the real stack ----------------------------------------------------------------------
def real_stack(runs: int, n_events: int, margins: tuple[float, ...], seed: int) -> dict[str, Any]:
    """``runs`` A/A experiments, then one A/B per margin, on Kafka + Redis + worker + reader +
    exporter started as the integration tests start them (``tests/integration/services.py``).

    The product runs one experiment at a time, so the runs are sequential over the same
    simulated traffic (``tools/experiments_live.py``): each a fresh name, hence a fresh split of
    the same shoppers by the reader's hash, with fresh click draws; the figures are the exporter's
    (``/api/state``), read once it has credited every published click.
    """
    import tempfile
    import uuid

    from scipy import stats

    from driftrec.kafka_admin import ensure_topics
    from tests.integration.services import free_port, provide_services
    from tools.experiments_live import Run, live_stack, run_sequential, shop, wait_attribution_ready

    events, traffic, propensity = shop(n_events, seed)
    per_shopper = np.bincount(np.unique(traffic, return_inverse=True)[1])
    plan = [Run(f"aa-{k}") for k in range(runs)] + [Run(f"ab-{m:g}", margin=m) for m in margins]
    key, tag = "bench-admin", uuid.uuid4().hex[:8]
    started = time.perf_counter()
    with provide_services() as base:
        s = base.model_copy(update={
            "clicks_topic": f"b-{tag}.clicks", "dead_letter_topic": f"b-{tag}.dlq", "consumer_group": f"g-{tag}",
            "key_prefix": f"bench{tag}", "worker_web_port": free_port(), "worker_metrics_port": free_port(),
            "reader_port": free_port(), "exporter_port": free_port(), "lag_interval_s": 1.0,
            "canary_interval_s": 60.0, "api_keys": (key,), "allow_anonymous_writes": False})
        ensure_topics(s.bootstrap, {s.clicks_topic: s.topic_partitions, s.dead_letter_topic: 1})
        with live_stack(s, events, Path(tempfile.mkdtemp(prefix="driftrec-aa-"))) as (reader, exporter, _):
            asyncio.run(wait_attribution_ready(s, exporter))

            def progress(k: int, r: Any) -> None:
                if k % 20 == 0 or k >= runs:
                    logger.info("run %d %s: %d answers, %d shed, %d clicks, %.0f s", k, r.name, r.answers, r.shed,
                                len(r.clicks), time.perf_counter() - started)

            results = asyncio.run(run_sequential(s, reader, exporter, key, plan, traffic, propensity, seed=seed,
                                                 concurrency=8, settle_timeout=300, progress=progress))
    aa_runs, ab_runs = results[:runs], results[runs:]
    p = np.array([r.view()["p_value"] for r in aa_runs])
    fp = int((p < 0.05).sum())
    # The same runs tested per answer (answers with a view click / answers), from the exporter's counts.
    answer_p = []
    for r in aa_runs:
        (c, t) = r.figures["variants"]
        answer_p.append(two_proportions(c["types"]["view"]["clicks"], c["answers"],
                                        t["types"]["view"]["clicks"], t["answers"]).p_value)
    ap = np.array(answer_p)
    agree = [float(np.mean([a.variant_of[u] == b.variant_of[u] for u in set(a.variant_of) & set(b.variant_of)]))
             for a, b in zip(aa_runs, aa_runs[1:], strict=False)]
    return {
        "what": "A/A experiments run one after another on the real stack (Kafka, Redis, worker, reader, "
                "exporter): answers from the reader over HTTP, clicks through Kafka, figures from the "
                "exporter's /api/state; false positives of its shopper-level view-rate test at the 5 % level",
        "design": "one experiment at a time (the product's rule): run k is defined with start=now, serves "
                  "the traffic, and is stopped when run k+1 starts; each run's name salts the reader's "
                  "hash, so every run is a fresh split of the same shoppers, with fresh click draws",
        "traffic_per_run": {"answers": len(traffic), "shoppers": len(propensity),
                            "answers_per_shopper": {"mean": round(float(per_shopper.mean()), 2),
                                                    "max": int(per_shopper.max())},
                            "simulated_clicks_before": n_events,
                            "click_model": "answer clicked (view of its first item) with the shopper's propensity "
                                           "Beta(2, 18); cart 0.3, purchase 0.3 of that"},
        "runs": runs, "false_positives_at_0.05": fp, "false_positive_rate": fp / runs,
        "false_positive_rate_ci95": _binomial_ci(fp, runs), "target": "2-8 % (issue 26)",
        "srm_flags_at_0.001": sum(r.figures["srm"]["mismatch"] for r in aa_runs),
        "p_value_uniform_ks_p": round(float(stats.kstest(p, "uniform").pvalue), 4),
        "p_value_deciles": [round(float(x), 3) for x in np.quantile(p, np.linspace(0.1, 0.9, 9))],
        "split_agreement_between_consecutive_runs": round(float(np.mean(agree)), 4),
        "answer_level": {"what": "the same runs tested per answer (view clicks / answers), from the exporter's "
                                 "counts: answers of one shopper are not independent",
                         "false_positive_rate": float((ap < 0.05).mean()),
                         "false_positive_rate_ci95": _binomial_ci(int((ap < 0.05).sum()), runs)},
        "clicks_published": sum(len(r.clicks) for r in results),
        "answers_served": sum(r.answers for r in results),
        "shed": sum(r.shed for r in results), "empty_or_degraded": sum(r.skipped for r in results),
        "ab_with_margin": [{"margin": r.margin, "what": f"treatment answers clicked {1 + r.margin:g}x as often",
                            "diff": r.view()["diff"], "p_value": r.view()["p_value"],
                            "significant": r.view()["significant"], "right_sign": r.view()["diff"]["estimate"] > 0,
                            "srm_mismatch": r.figures["srm"]["mismatch"]} for r in ab_runs],
        "p_values": [round(float(x), 4) for x in p],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="A/A runs")
    ap.add_argument("--events", type=int, default=60_000, help="simulated clicks per A/A run")
    ap.add_argument("--reps", type=int, default=400, help="simulated experiments per power estimate")
    ap.add_argument("--base", type=float, default=0.05, help="click probability of a looked-at item of A")
    ap.add_argument("--lift", type=float, default=0.10, help="relative lift of B's items")
    ap.add_argument("--overlap", type=float, default=0.3, help="share of the items both rankings hold")
    ap.add_argument("--out", type=Path, default=RESULTS / "experiments.json")
    ap.add_argument("--latency", action="store_true",
                    help="only measure the reader's latency with and without experiments (adds 'latency' to --out)")
    ap.add_argument("--real-stack", action="store_true",
                    help="only run the A/A experiments on the real stack (adds 'aa_real_stack' to --out)")
    ap.add_argument("--real-stack-events", type=int, default=2000,
                    help="simulated clicks whose views are each run's traffic")
    ap.add_argument("--latency-rounds", type=int, default=3)
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    ap.add_argument("--latency-rates", default="250,500", help="offered rates, req/s")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.real_stack:
        result = real_stack(args.runs, args.real_stack_events, (0.5, 1.0), seed=11)
        body = json.loads(args.out.read_text()) if args.out.exists() else {}  # read now: others may have written
        body["aa_real_stack"] = result
        body["aa_real_stack"].update(commit=commit(), machine=machine(["numpy", "scipy"]),
                                     command=f"python benchmarks/experiments.py --real-stack --runs {args.runs}")
        args.out.write_text(json.dumps(body, indent=2) + "\n")
        print(json.dumps({k: v for k, v in body["aa_real_stack"].items() if k != "p_values"}, indent=2))
        return
    if args.latency:
        rates = tuple(int(x) for x in args.latency_rates.split(","))
        result = latency(args.latency_rounds, args.latency_seconds, rates)
        result["ranking_cpu"] = ranking_cpu(8)
        logger.info("ranking CPU per answer: %s", result["ranking_cpu"]["median"])
        body = json.loads(args.out.read_text()) if args.out.exists() else {}
        body["latency"] = result
        body["latency"].update(commit=commit(), machine=machine(),
                               command=f"python benchmarks/experiments.py --latency --latency-rounds "
                                       f"{args.latency_rounds} --latency-seconds {args.latency_seconds:g} "
                                       f"--latency-rates {args.latency_rates}")
        args.out.write_text(json.dumps(body, indent=2) + "\n")
        print(json.dumps({"median": body["latency"]["median"], "ratio": body["latency"]["ratio"],
                          "ranking_cpu": body["latency"]["ranking_cpu"]["median"]}, indent=2))
        return

    logger.info("A/A: %d runs on %d simulated clicks", args.runs, args.events)
    aa_result = aa(args.runs, args.events, seed=11)
    logger.info("A/A false-positive rate %.3f", aa_result["false_positive_rate"])
    rng = np.random.default_rng(5)
    users = simulator_answers(args.events, seed=11)
    per_shopper = np.bincount(np.unique(users, return_inverse=True)[1])
    model = ClickModel(args.base, args.lift, args.overlap, per_shopper)
    mean_answers = float(per_shopper.mean())
    logger.info("power, A/B")
    ab = shoppers_needed(lambda n: model.ab_power(n, args.reps, rng))
    ab["answers"] = int(round(ab["shoppers"] * mean_answers))
    logger.info("A/B needs %d shoppers; power, interleaving", ab["shoppers"])
    il = shoppers_needed(lambda n: model.interleave_power(n, args.reps // 2, rng), start=25)
    il["answers"] = int(round(il["shoppers"] * mean_answers))
    logger.info("interleaving needs %d shoppers", il["shoppers"])
    result = {
        "what": "A/A false-positive rate of the exporter's A/B test on simulator traffic; answers needed by "
                "an A/B split and by team-draft interleaving to detect a known lift at power 0.8",
        "command": "python benchmarks/experiments.py",
        "commit": commit(), "machine": machine(["numpy", "scipy"]),
        "aa": aa_result,
        "power": {"model": "position-based clicks, 10 items, position p looked at with 1/(p+1), item of A "
                           f"clicked with {args.base} x m when looked at, item of B with {args.base} x (1 + "
                           f"{args.lift}) x m, m the shopper's propensity (Gamma, mean 1, shape 1); answers per "
                           f"shopper as the simulator's (mean {mean_answers:.2f}); {args.overlap:.0%} of the items in "
                           "both rankings; alpha 0.05, two-sided, right sign; A/B: shoppers with a click per arm "
                           "(two-proportion z-test), interleaving: shoppers preferring each variant (sign test)",
                  "target_power": 0.8, "reps_ab": args.reps, "reps_interleaving": args.reps // 2,
                  "ab": ab, "interleaving": il,
                  "ratio_ab_over_interleaving": round(ab["shoppers"] / il["shoppers"], 1)},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"aa_false_positive_rate": aa_result["false_positive_rate"],
                      "aa_answer_level_false_positive_rate": aa_result["answer_level"]["false_positive_rate"],
                      "ab_shoppers": ab["shoppers"], "ab_answers": ab["answers"],
                      "interleaving_shoppers": il["shoppers"], "interleaving_answers": il["answers"]}, indent=2))


if __name__ == "__main__":
    main()
