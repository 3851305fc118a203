"""Offline protocol: metrics against hand-computed cases, seeded stratified and time splits, loaders."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.batch.base import BatchModel
from driftrec.models.batch.popularity import PopularityModel
from driftrec.models.offline import (
    catalogue_coverage,
    encode_ids,
    evaluate_model,
    load_ratings_table,
    popularity_bias,
    ranking_metrics,
    stratified_split,
    time_split,
    to_csr,
)


def truth_matrix(rows: list[list[int]], n_items: int = 12) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), np.float32)
    for u, items in enumerate(rows):
        dense[u, items] = 1.0
    return sp.csr_matrix(dense)


# --- metrics: hand-computed ------------------------------------------------------------------
def test_ranking_metrics_hand_computed_k3() -> None:
    recs = np.array([[1, 5, 2], [4, 6, 8], [0, 9, -1], [1, 2, 3]])
    truth = truth_matrix([[1, 2, 3], [8], [7, 8, 9, 10, 11], []])
    m = ranking_metrics(recs, truth, k=3)
    # user 0: hits at ranks 1 and 3 of 3 test items; user 1: rank 3 of 1; user 2: rank 2 of 5;
    # user 3 has no test items and is left out.
    assert m["users"] == 3
    assert m["precision"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)
    assert m["recall"] == pytest.approx((2 / 3 + 1 / 1 + 1 / 5) / 3)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    ndcg = [(1 + 1 / math.log2(4)) / idcg3, (1 / math.log2(4)) / 1.0, (1 / math.log2(3)) / idcg3]
    assert m["ndcg"] == pytest.approx(sum(ndcg) / 3)
    ap_sums = [1 / 1 + 2 / 3, 1 / 3, 1 / 2]
    assert m["map_at_k"] == pytest.approx((ap_sums[0] / 3 + ap_sums[1] / 1 + ap_sums[2] / 3) / 3)
    assert m["map"] == pytest.approx((ap_sums[0] / 3 + ap_sums[1] / 1 + ap_sums[2] / 5) / 3)


def test_precision_divides_by_k_even_for_short_lists() -> None:
    m = ranking_metrics(np.array([[3, -1, -1, -1]]), truth_matrix([[3]]), k=4)
    assert m["precision"] == pytest.approx(1 / 4)
    assert m["recall"] == pytest.approx(1.0)
    assert m["ndcg"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx(1.0)


def test_perfect_lists_give_ndcg_one_and_misses_give_zero() -> None:
    truth = truth_matrix([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [2]])
    perfect = np.array([list(range(10)), [2, 0, 1, 3, 4, 5, 6, 7, 8, 9]])
    m = ranking_metrics(perfect, truth, k=10)
    assert m["ndcg"] == pytest.approx(1.0)
    assert m["precision"] == pytest.approx((10 / 10 + 1 / 10) / 2)
    assert m["recall"] == pytest.approx((10 / 12 + 1.0) / 2)
    assert m["map_at_k"] == pytest.approx(1.0)
    miss = ranking_metrics(np.array([[11] * 1 + [-1] * 9]), truth_matrix([[2]]), k=10)
    assert miss["precision"] == miss["ndcg"] == miss["map"] == 0.0


def test_metrics_agree_with_a_loop_port_of_the_ms_formulas() -> None:
    rng = np.random.default_rng(5)
    n_users, n_items, k = 40, 30, 10
    truth_rows = [
        list(rng.choice(n_items, rng.integers(1, 15), replace=False)) for _ in range(n_users)
    ]
    recs = np.array([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
    got = ranking_metrics(recs, truth_matrix(truth_rows, n_items), k=k)
    prec, rec, ndcg, mapk = [], [], [], []
    for items, ranked in zip(truth_rows, recs, strict=True):
        hit_ranks = [r + 1 for r, i in enumerate(ranked) if i in set(items)]
        prec.append(len(hit_ranks) / k)
        rec.append(len(hit_ranks) / len(items))
        dcg = sum(1 / math.log(1 + r) for r in hit_ranks)  # MS default: natural log
        idcg = sum(1 / math.log(1 + r) for r in range(1, min(len(items), k) + 1))
        ndcg.append(dcg / idcg)
        mapk.append(sum((j + 1) / r for j, r in enumerate(hit_ranks)) / min(len(items), k))
    assert got["precision"] == pytest.approx(np.mean(prec))
    assert got["recall"] == pytest.approx(np.mean(rec))
    assert got["ndcg"] == pytest.approx(np.mean(ndcg))
    assert got["map_at_k"] == pytest.approx(np.mean(mapk))


def test_coverage_and_popularity_bias() -> None:
    recs = np.array([[0, 1], [0, 2], [1, -1]])
    assert catalogue_coverage(recs, 10) == pytest.approx(3 / 10)
    # 4 training users: item 0 seen by 4, item 1 by 2, item 2 by 1.
    train = truth_matrix([[0, 1], [0, 1], [0], [0, 2]], n_items=10)
    bias = popularity_bias(recs, train)
    pops = [1.0, 0.5, 1.0, 0.25, 0.5]
    assert bias["mean_popularity"] == pytest.approx(np.mean(pops))
    assert bias["novelty"] == pytest.approx(np.mean([-math.log2(p) for p in pops]))


# --- evaluate_model ----------------------------------------------------------------------------
class FixedScores(BatchModel):
    """A stub model whose scores are a given dense matrix (to test the evaluation loop)."""

    name = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__()
        self.scores = scores.astype(np.float32)
        self.n_users, self.n_items = scores.shape

    def fit(self, interactions: sp.csr_matrix, *, seed: int = 0, progress: bool = False) -> Self:
        return self

    def _score_users(self, user_rows: np.ndarray) -> np.ndarray:
        return self.scores[user_rows]

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError

    def _export(self) -> dict[str, np.ndarray]:
        return {"scores": self.scores}

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls(np.asarray(arrays["scores"]))


def test_evaluate_model_excludes_train_items_and_skips_users_without_test() -> None:
    train = truth_matrix([[0, 1], [2], [3]], n_items=6)
    test = truth_matrix([[2, 3], [0], []], n_items=6)
    # Scores rank the train items first: if they were not excluded, precision would drop.
    scores = np.array([[9, 8, 7, 6, 0, 0], [0, 0, 9, 0, 0, 0], [0, 0, 0, 9, 0, 0]], float)
    m = evaluate_model(FixedScores(scores), train, test, k=2)
    assert m["users"] == 2
    assert m["precision"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert m["recall"] == pytest.approx(1.0)
    assert 0 < m["coverage"] <= 1


def test_evaluate_model_popularity_on_a_split_runs_end_to_end() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 8)
    items = rng.integers(0, 20, users.size)
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    mask = stratified_split(pairs[:, 0], 0.75, seed=1)
    train = to_csr(pairs[mask, 0], pairs[mask, 1], (30, 20))
    test = to_csr(pairs[~mask, 0], pairs[~mask, 1], (30, 20))
    m = evaluate_model(PopularityModel().fit(train), train, test, k=5)
    assert 0.0 <= m["precision"] <= 1.0 and m["users"] > 0
    assert m["mean_popularity"] > 0


# --- splits ------------------------------------------------------------------------------------
def test_stratified_split_keeps_round_ratio_per_user_and_is_seeded() -> None:
    rng = np.random.default_rng(2)
    counts = np.array([1, 2, 3, 4, 6, 10, 37, 100])
    users = rng.permutation(np.repeat(np.arange(counts.size), counts))
    mask = stratified_split(users, 0.75, seed=42)
    per_user = np.bincount(users[mask], minlength=counts.size)
    # Python/numpy round halves to even: 0.75, 1.5, 2.25, 3, 4.5, 7.5, 27.75, 75.
    np.testing.assert_array_equal(per_user, [1, 2, 2, 3, 4, 8, 28, 75])
    np.testing.assert_array_equal(mask, stratified_split(users, 0.75, seed=42))
    assert not np.array_equal(mask, stratified_split(users, 0.75, seed=43))


def test_stratified_split_is_random_within_users() -> None:
    users = np.repeat(np.arange(200), 8)
    mask = stratified_split(users, 0.75, seed=0)
    position = np.tile(np.arange(8), 200)
    # Every position within a user's block should land in test sometimes.
    share_test = np.array([(~mask[position == p]).mean() for p in range(8)])
    assert np.all(share_test > 0.1) and np.all(share_test < 0.45)


def test_time_split_per_user_puts_latest_events_in_test() -> None:
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(20), 12)
    ts = rng.integers(0, 10_000, users.size)
    mask = time_split(users, ts, 0.75, by="user")
    for u in range(20):
        sel = users == u
        assert mask[sel].sum() == 9
        assert ts[sel & mask].max() <= ts[sel & ~mask].min()


def test_time_split_global_cut() -> None:
    ts = np.array([50, 10, 40, 20, 30, 60, 70, 80])
    users = np.array([0, 1, 0, 1, 2, 2, 0, 1])
    mask = time_split(users, ts, 0.75, by="global")
    assert mask.sum() == 6
    assert ts[mask].max() < ts[~mask].min()
    with pytest.raises(ModelError):
        time_split(users, ts, 0.75, by="week")
    with pytest.raises(ModelError):
        stratified_split(users, 1.0)


# --- loading -----------------------------------------------------------------------------------
def test_load_ratings_table_reads_csv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n7,1029,3.0,1260759179\n")
    users, items, ratings, ts = load_ratings_table(path)
    np.testing.assert_array_equal(users, [1, 7])
    np.testing.assert_array_equal(items, [31, 1029])
    np.testing.assert_allclose(ratings, [2.5, 3.0])
    np.testing.assert_array_equal(ts, [1260759144, 1260759179])
    assert users.dtype == np.int64 and ratings.dtype == np.float32 and ts.dtype == np.int64


def test_load_ratings_table_reads_ml100k_u_data(tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    users, items, ratings, ts = load_ratings_table(path)
    np.testing.assert_array_equal(users, [196, 186, 22])
    np.testing.assert_array_equal(items, [242, 302, 377])
    np.testing.assert_allclose(ratings, [3, 3, 1])
    assert ts[2] == 878887116


@pytest.mark.parametrize("content", ["", "just some words\n", "1,2,x,4\n"])
def test_load_ratings_table_rejects_bad_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ModelError):
        load_ratings_table(path)
    with pytest.raises(ModelError):
        load_ratings_table(tmp_path / "missing.csv")


def test_encode_ids_and_to_csr_binary() -> None:
    codes, uniq = encode_ids(np.array([30, 10, 30, 20]))
    np.testing.assert_array_equal(codes, [2, 0, 2, 1])
    np.testing.assert_array_equal(uniq, [10, 20, 30])
    m = to_csr(np.array([0, 0, 1]), np.array([1, 1, 2]), (2, 3))
    assert m[0, 1] == 1.0 and m.nnz == 2
    w: Any = to_csr(np.array([0, 0]), np.array([1, 1]), (1, 2), weights=np.array([2.0, 0.5]))
    assert w[0, 1] == pytest.approx(2.5)
