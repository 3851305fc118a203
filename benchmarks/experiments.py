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
bisection over a doubling grid. ``--latency`` measures the reader with no experiment, an A/B split
and an interleaving running (``benchmarks/reader.py``'s set-up).
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


def latency(rounds: int, seconds: int, concurrency: int) -> dict[str, Any]:
    """The reader's latency with no experiment, an A/B split and an interleaving running.

    ``benchmarks/reader.py``'s set-up (a private Redis filled with 10,000 items and 50,000 shoppers,
    one ``driftrec serve``, wrk closed-loop on random shoppers' recommendations); the three cases
    alternate ``rounds`` times on the same reader, each defined through the admin endpoint.
    """
    import os
    import shutil
    import signal
    import subprocess
    import tempfile
    import urllib.error
    import urllib.request

    import reader as rb  # benchmarks/reader.py
    import redis

    cases: dict[str, dict[str, Any] | None] = {
        "none": None,
        "ab": {"variants": [{"name": "control", "share": 0.5},
                            {"name": "tf", "share": 0.5, "weights": {"tf": 1.0, "item_item": 0.5}}]},
        "interleave": {"method": "interleave", "variants": [{"name": "blend"}, {"name": "tf", "weights": {"tf": 1.0}}]},
    }
    wrk = rb.ensure_wrk()
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
        script = work / "recs.lua"
        script.write_text(rb.WRK_LUA)
        base = f"http://127.0.0.1:{hport}/v1/experiments/bench"

        def define(body: dict[str, Any] | None) -> None:
            method, data_ = ("PUT", json.dumps(body).encode()) if body else ("DELETE", None)
            req = urllib.request.Request(base, data=data_, method=method, headers={"X-API-Key": "bench"})
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except urllib.error.HTTPError as exc:
                if not (method == "DELETE" and exc.code == 404):
                    raise

        rb.run_wrk(wrk, hport, concurrency, 3, script, 50_000)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
        for rnd in range(rounds):
            for name, body in cases.items():
                define(None)
                define(body)
                cpu0 = rb.cpu_seconds(reader.pid)
                one = rb.run_wrk(wrk, hport, concurrency, seconds, script, 50_000)
                one["reader_cpu_ms_per_request"] = round((rb.cpu_seconds(reader.pid) - cpu0) * 1000 / max(one["n"], 1), 3)
                logger.info("round %d %s: %s", rnd, name, one)
                runs[name].append(one)
        define(None)
        keys = ("req_per_s", "p50_ms", "p99_ms", "reader_cpu_ms_per_request")
        load = round(os.getloadavg()[0], 2)
        return {
            "what": "GET /v1/recommendations/{random of 50,000 shoppers}?n=10, wrk -t1 closed loop, "
                    f"c={concurrency}, {rounds} alternating rounds of {seconds} s per case, medians",
            "target": "p99 <= 5 ms at >= 2000 req/s per reader process (benchmarks/reader.py)",
            "data": data, "cases": {k: v for k, v in cases.items()}, "load_average_after": load,
            "median": {name: {k: float(np.median([x[k] for x in rs])) for k in keys} for name, rs in runs.items()},
            "runs": runs,
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
    ap.add_argument("--latency-rounds", type=int, default=3)
    ap.add_argument("--latency-seconds", type=int, default=10)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.latency:
        body = json.loads(args.out.read_text()) if args.out.exists() else {}
        body["latency"] = latency(args.latency_rounds, args.latency_seconds, 8)
        body["latency"]["commit"] = commit()
        body["latency"]["command"] = "python benchmarks/experiments.py --latency"
        args.out.write_text(json.dumps(body, indent=2) + "\n")
        print(json.dumps(body["latency"]["median"], indent=2))
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
