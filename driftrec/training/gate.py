"""The publish gate: candidate and live model scored on the newest events the live model never saw.

Protocol (one gate run):

1. **Cut.** The newest ``gate_holdout_fraction`` of the log's events are the holdout; the cut
   moves later to the live model's ``trained_until`` (from its manifest) when that is later, so
   the live model is never scored on events it was trained on.
2. **Candidate.** The requested models are trained with the same recipe and seed on the events
   up to the cut, packed exactly as they would be published, and decoded with the reader's own
   loader (:func:`driftrec.online.model_cache.build_model`).
3. **Scoring.** Every holdout user with history before the cut is folded in as the reader does
   it: decayed weights at the cut, the ``history_len`` largest, ALS fold-in with the version's
   ``alpha``/``regularization`` (``vector`` source) and the TF forward pass (``tf`` source).
   Items of the user's history are never recommended and do not count as hits. Metrics at
   ``k``: hit rate (share of users with a hit) and nDCG with binary gains (the definition of
   :func:`driftrec.models.offline.ranking_metrics`).
4. **Decision.** Published when there is no live model (or it cannot be read), else when every
   source both versions have scores at least ``live − margin`` on ``gate_metric``. Too few
   holdout users (``gate_min_users``) keeps the live model: nothing new enough to judge on.

When the gate passes, the published model is the same recipe refitted on the whole log, so the
newest events (the holdout) are in it. Every decision is appended to ``P:{m}:gate_log``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from driftrec.models.batch.base import top_n
from driftrec.models.decay import DecayPolicy
from driftrec.models.foldin import fold_in_basis, fold_in_many
from driftrec.online.model_cache import PublishedModel
from driftrec.training.clicklog import ClickLog
from driftrec.training.matrix import build_interactions

__all__ = ["Holdout", "SourceScore", "GateDecision", "make_holdout", "evaluate", "decide", "ndcg_at_k"]

logger = logging.getLogger(__name__)

_CHUNK = 128  # users per dense (users x items) score block


@dataclass(frozen=True)
class Holdout:
    """The newest events, as per-user truth, and the state the reader would have at the cut."""

    cut: float
    train: ClickLog
    events: int
    users: list[str] = field(default_factory=list)
    #: Per user: (item, decayed weight at the cut), largest first, at most history_len.
    history: list[list[tuple[str, float]]] = field(default_factory=list)
    #: Per user: every item of the user's history before the cut (never recommended).
    seen: list[set[str]] = field(default_factory=list)
    #: Per user: holdout items not in ``seen``.
    truth: list[set[str]] = field(default_factory=list)


@dataclass(frozen=True)
class SourceScore:
    hr: float
    ndcg: float
    users: int

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    metric: str
    k: int
    margin: float
    candidate: dict[str, SourceScore]
    live: dict[str, SourceScore] | None

    def record(self) -> dict[str, Any]:
        """JSON-ready form (the gate log entry's core)."""
        return {
            "passed": self.passed, "reason": self.reason, "metric": self.metric, "k": self.k,
            "margin": self.margin, "candidate": {s: asdict(v) for s, v in self.candidate.items()},
            "live": None if self.live is None else {s: asdict(v) for s, v in self.live.items()},
        }


def make_holdout(log: ClickLog, policy: DecayPolicy, *, fraction: float, history_len: int,
                 not_before: float | None = None) -> Holdout:
    """Split the log in time and build each holdout user's reader state at the cut."""
    n = len(log)
    n_train = int(math.floor(n * (1.0 - fraction)))
    cut = float(np.sort(log.times)[n_train - 1]) if n_train > 0 else -math.inf
    if not_before is not None and not_before > cut:
        cut = float(not_before)
    train_mask = log.times <= cut  # ties at the cut are history, never truth
    train, test = log.select(train_mask), log.select(~train_mask)
    empty = Holdout(cut=cut, train=train, events=len(test))
    if not len(train) or not len(test):
        return empty
    data = build_interactions(train, policy)
    row_of = {u: r for r, u in enumerate(data.user_ids)}
    m = data.matrix
    truth_by_user: dict[str, set[str]] = {}
    for u, i in zip(test.users.tolist(), test.items.tolist(), strict=True):
        truth_by_user.setdefault(log.user_ids[u], set()).add(log.item_ids[i])
    out = Holdout(cut=cut, train=train, events=len(test))
    for user in sorted(truth_by_user):
        r = row_of.get(user)
        if r is None:
            continue  # a new user: nothing to fold in (the reader would answer from trending)
        lo, hi = m.indptr[r], m.indptr[r + 1]
        items = [data.item_ids[j] for j in m.indices[lo:hi].tolist()]
        weights = m.data[lo:hi].astype(np.float64).tolist()
        seen = set(items)
        truth = truth_by_user[user] - seen
        if not truth:
            continue
        pairs = sorted(zip(items, weights, strict=True), key=lambda p: (-p[1], p[0]))[:history_len]
        out.users.append(user)
        out.history.append(pairs)
        out.seen.append(seen)
        out.truth.append(truth)
    return out


def ndcg_at_k(recommended: list[list[str]], truth: list[set[str]], k: int) -> tuple[float, float]:
    """(hit rate, nDCG) at ``k`` with binary gains and ``1/log2(1 + rank)`` discounts."""
    if not truth:
        return 0.0, 0.0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    hits_any = 0
    total = 0.0
    for recs, t in zip(recommended, truth, strict=True):
        gains = np.fromiter((1.0 if x in t else 0.0 for x in recs[:k]), dtype=np.float64)
        if gains.any():
            hits_any += 1
        idcg = disc[: min(len(t), k)].sum()
        total += float(gains @ disc[: gains.size]) / float(idcg)
    return hits_any / len(truth), total / len(truth)


def _known(model: PublishedModel, pairs: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
    idx = model.item_index
    rows = [idx[i] for i, w in pairs if i in idx and w > 0]
    ws = [w for i, w in pairs if i in idx and w > 0]
    return rows, ws


def _rank(scores: npt.NDArray[np.float32], model: PublishedModel, seen: list[set[str]], k: int) -> list[list[str]]:
    idx = model.item_index
    for r, s in enumerate(seen):
        cols = [idx[i] for i in s if i in idx]
        scores[r, cols] = -np.inf
    top, _ = top_n(scores, k)
    ids = model.item_ids
    return [[ids[j] for j in row if j >= 0] for row in top.tolist()]


def evaluate(model: PublishedModel, holdout: Holdout, k: int) -> dict[str, SourceScore]:
    """Score each source of a published model on the holdout (see the module docstring)."""
    n = len(holdout.users)
    recs: dict[str, list[list[str]]] = {"vector": [[] for _ in range(n)]}
    if model.has_tf:
        recs["tf"] = [[] for _ in range(n)]
    # The worker's batched fold-in (low-rank, with the version's basis Zz), on its Y, alpha, reg.
    Y64 = model.Y.astype(np.float64)
    Yz = np.vstack([Y64, np.zeros((1, model.k))])
    Zz = fold_in_basis(Yz, model.YtY, model.reg)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        H: npt.NDArray[np.float32] | None = None
        active: list[int] = []
        fold_rows: list[npt.NDArray[np.intp]] = []
        fold_conf: list[npt.NDArray[np.float64]] = []
        for r in range(start, stop):
            rows, ws = _known(model, holdout.history[r])
            if not rows:
                continue  # no item the model knows: no personal answer (a miss)
            active.append(r - start)
            fold_rows.append(np.asarray(rows, dtype=np.intp))
            fold_conf.append(model.alpha * np.asarray(ws, dtype=np.float64))
            if model.has_tf:
                h = model.tf_hidden_state(holdout.history[r])
                if h is not None:
                    if H is None:
                        H = np.zeros((stop - start, h.shape[0]), dtype=np.float32)
                    H[r - start] = h
        if not active:
            continue
        act = np.asarray(active)
        # Many small solves: one BLAS thread each is ~3x faster than threads fighting.
        with threadpool_limits(1, "blas"):
            U = fold_in_many(Yz, model.YtY, fold_rows, fold_conf, model.reg, Zz).astype(np.float32)
        seen = [holdout.seen[start + a] for a in active]
        ranked = _rank(U @ model.Y.T, model, seen, k)
        for a, row in zip(active, ranked, strict=True):
            recs["vector"][start + a] = row
        if H is not None and model.tf_out is not None and model.tf_out_bias is not None:
            logits = H[act] @ model.tf_out.T + model.tf_out_bias
            for a, row in zip(active, _rank(logits, model, seen, k), strict=True):
                recs["tf"][start + a] = row
    out: dict[str, SourceScore] = {}
    for source, lists in recs.items():
        hr, ndcg = ndcg_at_k(lists, holdout.truth, k)
        out[source] = SourceScore(hr=hr, ndcg=ndcg, users=n)
    return out


def decide(candidate: Mapping[str, SourceScore], live: Mapping[str, SourceScore] | None, *,
           users: int, metric: str, k: int, margin: float, min_users: int,
           live_note: str | None = None) -> GateDecision:
    """Publish or keep the live model (rules in the module docstring)."""
    cand = dict(candidate)
    if live is None:
        reason = live_note or "no live model"
        return GateDecision(True, reason, metric, k, margin, cand, None)
    live_d = dict(live)
    if users < min_users:
        return GateDecision(False, f"holdout has {users} users with history (< {min_users}): "
                            "keeping the live model", metric, k, margin, cand, live_d)
    worse = []
    compared = []
    for source in sorted(set(cand) & set(live_d)):
        c, v = cand[source].get(metric), live_d[source].get(metric)
        compared.append(f"{source} {metric}@{k} {c:.4f} vs live {v:.4f}")
        if c < v - margin:
            worse.append(source)
    text = "; ".join(compared)
    if worse:
        return GateDecision(False, f"worse than live beyond margin {margin}: {text}", metric, k,
                            margin, cand, live_d)
    return GateDecision(True, f"not worse than live: {text}", metric, k, margin, cand, live_d)
