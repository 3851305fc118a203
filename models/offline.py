"""Offline evaluation protocol (Microsoft Recommenders' splits and ranking metrics) with numpy only.

Definitions follow ``recommenders/evaluation/python_evaluation.py`` (recommenders-team/recommenders):

* relevance is binary: a recommended item is a hit if it is in the user's test set;
* averages run over the users that have test items (MS's "common users"), users with no hit
  counting 0;
* ``precision@k = hits / k`` (even when fewer than ``k`` items were recommended),
  ``recall@k = hits / |test|``;
* ``ndcg@k = DCG / IDCG`` with gain 1 and discount ``1 / log(1 + rank)``; IDCG puts the first
  ``min(|test|, k)`` test items at ranks ``1..``. MS's default discount is ``ln``, this module
  uses ``log2``; the base cancels in the ratio, so the values are identical;
* ``map_at_k`` is MS's current ``map_at_k``: ``Σ_hits (hits so far / rank) / min(|test|, k)``;
* ``map`` divides the same sum by ``|test|`` — MS's ``map`` and what its ``map_at_k`` computed
  before the ``min(., k)`` change, i.e. what the MovieLens benchmark table reports as MAP.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from driftrec.errors import ModelError

if TYPE_CHECKING:
    from driftrec.models.batch.base import BatchModel

__all__ = [
    "catalogue_coverage",
    "encode_ids",
    "evaluate_model",
    "evaluate_recommendations",
    "load_ratings_table",
    "popularity_bias",
    "ranking_metrics",
    "stratified_split",
    "time_split",
    "to_csr",
]

logger = logging.getLogger(__name__)


# --- loading ---------------------------------------------------------------------------------
def load_ratings_table(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a MovieLens ratings file in either common layout.

    Detected from the first line: ``ratings.csv`` of ml-latest(-small)/ml-25m
    (``userId,movieId,rating,timestamp`` with a header) or ML-100k's ``u.data`` (tab-separated
    ``user item rating timestamp``, no header). ML-1M's ``::``-separated ``ratings.dat`` also works.

    Returns
    -------
    (users, items, ratings, timestamps)
        int64, int64, float32 and int64 arrays, one entry per rating, in file order.

    Raises
    ------
    ModelError
        If the file is missing, empty or not one of these layouts.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
            text = first + fh.read()
    except OSError as exc:
        raise ModelError(f"cannot read ratings file {path}: {exc}") from exc
    if not first.strip():
        raise ModelError(f"ratings file {path} is empty")
    if "\t" in first:
        sep = "\t"
    elif "::" in first:
        sep = "::"
    elif "," in first:
        sep = ","
    else:
        raise ModelError(f"{path}: unknown layout (expected tab, comma or '::' separated)")
    lines = text.splitlines()
    head = first.strip().split(sep)
    has_header = not head[0].strip().lstrip("-").isdigit()
    body = [ln for ln in lines[1 if has_header else 0 :] if ln.strip()]
    try:
        table = np.array([ln.split(sep)[:4] for ln in body], dtype=np.float64)
    except ValueError as exc:
        raise ModelError(f"{path}: non-numeric or ragged rows ({exc})") from exc
    if table.ndim != 2 or table.shape[1] != 4:
        raise ModelError(f"{path}: expected 4 columns user,item,rating,timestamp")
    users, items = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
    logger.info(
        "read %d ratings from %s (%s-separated)", len(users), path, "tab" if sep == "\t" else sep
    )
    return users, items, table[:, 2].astype(np.float32), table[:, 3].astype(np.int64)


def encode_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map raw ids to dense codes ``0..n-1``; returns ``(codes, uniques)`` (sorted uniques)."""
    uniques, codes = np.unique(np.asarray(values), return_inverse=True)
    return codes.astype(np.int64), uniques


def to_csr(
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    shape: tuple[int, int],
    weights: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Users x items CSR; without ``weights`` every (user, item) pair is a binary 1."""
    data = (
        np.ones(len(user_idx), np.float32) if weights is None else np.asarray(weights, np.float32)
    )
    m = sp.csr_matrix((data, (user_idx, item_idx)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    if weights is None:
        m.data[:] = 1.0
    return m


# --- splitting -------------------------------------------------------------------------------
def _first_fraction(user_idx: np.ndarray, order_key: np.ndarray, ratio: float) -> np.ndarray:
    """Train mask: within each user, rows ranked by ``order_key``; the first round(ratio·n) train."""
    user_idx = np.asarray(user_idx)
    order = np.lexsort((np.arange(user_idx.size), order_key, user_idx))
    sorted_users = user_idx[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, sorted_users.size])
    pos = np.arange(sorted_users.size) - np.repeat(starts, counts)
    # np.round halves to even like Python's round(), which MS's split uses.
    n_train = np.round(ratio * counts).astype(np.int64)
    mask = np.empty(user_idx.size, dtype=bool)
    mask[order] = pos < np.repeat(n_train, counts)
    return mask


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise ModelError(f"split ratio must lie in (0, 1), got {ratio}")


def stratified_split(user_idx: np.ndarray, ratio: float = 0.75, seed: int = 42) -> np.ndarray:
    """Per-user random split (``python_stratified_split`` semantics).

    Each user's interactions are shuffled and the first ``round(ratio · n_u)`` go to train,
    the rest to test, so every user keeps about ``ratio`` of their history in train. One seeded
    generator draws all users' shuffles (MS re-seeds each user's shuffle with the same seed;
    that correlates users with equal counts and is not copied).

    Returns
    -------
    np.ndarray
        Boolean train mask over the rows; test is ``~mask``.
    """
    _check_ratio(ratio)
    keys = np.random.default_rng(seed).random(len(user_idx))
    return _first_fraction(user_idx, keys, ratio)


def time_split(
    user_idx: np.ndarray, timestamps: np.ndarray, ratio: float = 0.75, *, by: str = "user"
) -> np.ndarray:
    """Chronological split.

    ``by="user"``: each user's earliest ``round(ratio · n_u)`` interactions train, the rest
    test (ties broken by row order). ``by="global"``: one cut in time; the earliest
    ``round(ratio · N)`` rows overall train, so test users may be cold.

    Returns
    -------
    np.ndarray
        Boolean train mask.
    """
    _check_ratio(ratio)
    ts = np.asarray(timestamps)
    if by == "user":
        return _first_fraction(user_idx, ts, ratio)
    if by == "global":
        order = np.argsort(ts, kind="stable")
        mask = np.zeros(ts.size, dtype=bool)
        mask[order[: int(round(ratio * ts.size))]] = True
        return mask
    raise ModelError(f"time_split by must be 'user' or 'global', got {by!r}")


# --- metrics ---------------------------------------------------------------------------------
def ranking_metrics(recommended: np.ndarray, truth: sp.csr_matrix, k: int = 10) -> dict[str, float]:
    """Precision, recall, nDCG and MAP at ``k`` with MS Recommenders' definitions.

    Parameters
    ----------
    recommended : np.ndarray
        ``(users, >= k)`` item indices, best first; ``-1`` marks an empty slot.
    truth : csr_matrix
        ``(users, n_items)`` test interactions, row ``u`` aligned with ``recommended[u]``.
        Users with an empty row are left out of every average.
    k : int
        Cut-off.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``ndcg``, ``map_at_k``, ``map`` and ``users`` (the number
        averaged over).
    """
    rec = np.asarray(recommended)[:, :k]
    t = sp.csr_matrix(truth)
    if rec.shape[0] != t.shape[0]:
        raise ModelError(f"recommended has {rec.shape[0]} rows, truth {t.shape[0]}")
    n_true = np.diff(t.indptr)
    keep = n_true > 0
    rec, t, n_true = rec[keep], t[keep], n_true[keep]
    users = rec.shape[0]
    if users == 0:
        return {
            "precision": 0.0,
            "recall": 0.0,
            "ndcg": 0.0,
            "map_at_k": 0.0,
            "map": 0.0,
            "users": 0,
        }
    valid = rec >= 0
    row = np.repeat(np.arange(users), rec.shape[1])
    hits = np.asarray(t[row, np.where(valid, rec, 0).ravel()]).reshape(rec.shape) > 0
    hits &= valid
    n_hits = hits.sum(axis=1)
    ranks = np.arange(1, rec.shape[1] + 1)
    discount = 1.0 / np.log2(1.0 + np.arange(1, k + 1))
    dcg = (hits * discount[: rec.shape[1]]).sum(axis=1)
    idcg = np.cumsum(discount)[np.minimum(n_true, k) - 1]
    ap_sum = (np.cumsum(hits, axis=1) / ranks * hits).sum(axis=1)
    return {
        "precision": float((n_hits / k).mean()),
        "recall": float((n_hits / n_true).mean()),
        "ndcg": float((dcg / idcg).mean()),
        "map_at_k": float((ap_sum / np.minimum(n_true, k)).mean()),
        "map": float((ap_sum / n_true).mean()),
        "users": int(users),
    }


def catalogue_coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one recommendation list."""
    rec = np.asarray(recommended)
    return float(np.unique(rec[rec >= 0]).size / n_items) if n_items else 0.0


def popularity_bias(recommended: np.ndarray, train: sp.csr_matrix) -> dict[str, float]:
    """How mainstream the recommendations are, against training popularity.

    ``p(i)`` is the share of training users who interacted with ``i`` (MS's
    ``historical_item_novelty``). Returns ``mean_popularity`` (mean ``p(i)`` over all
    recommended slots) and ``novelty`` (mean ``-log2 p(i)``; items unseen in training count as
    seen once so the value stays finite).
    """
    rec = np.asarray(recommended)
    rec = rec[rec >= 0]
    t = sp.csr_matrix(train)
    n_users = max(int((np.diff(t.indptr) > 0).sum()), 1)
    counts = np.bincount(t.indices, minlength=t.shape[1]).astype(np.float64)
    if rec.size == 0:
        return {"mean_popularity": 0.0, "novelty": 0.0}
    p = counts[rec] / n_users
    novelty = -np.log2(np.maximum(counts[rec], 1.0) / n_users)
    return {"mean_popularity": float(p.mean()), "novelty": float(novelty.mean())}


def evaluate_recommendations(
    recommended: np.ndarray, test: sp.csr_matrix, train: sp.csr_matrix, k: int = 10
) -> dict[str, float]:
    """All offline numbers for aligned recommendation lists and test rows."""
    out: dict[str, float] = dict(ranking_metrics(recommended, test, k))
    out["coverage"] = catalogue_coverage(np.asarray(recommended)[:, :k], train.shape[1])
    out.update(popularity_bias(np.asarray(recommended)[:, :k], train))
    return out


def evaluate_model(
    model: BatchModel, train: sp.csr_matrix, test: sp.csr_matrix, k: int = 10
) -> dict[str, float]:
    """Recommend ``k`` unseen items to every user with test items and score the lists.

    ``model`` must have been fitted on ``train`` (same row and column indices); training
    items are excluded from each user's list, as in MS Recommenders' ``remove_seen``.
    """
    test = sp.csr_matrix(test)
    train = sp.csr_matrix(train)
    if test.shape != train.shape:
        raise ModelError(f"train {train.shape} and test {test.shape} differ in shape")
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    recs, _ = model.recommend(users, k, exclude=train[users])
    return evaluate_recommendations(recs, test[users], train, k)
