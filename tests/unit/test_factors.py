"""Fold-in against implicit's own ALS user solve; ISGD, init, cold-start, nearest users."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.factors import (
    cold_item_vector,
    fold_in,
    init_vector,
    isgd_update,
    nearest_users,
    score_items,
)

# implicit warns that OpenBLAS uses threads; irrelevant for a 30×20 matrix.
pytestmark = pytest.mark.filterwarnings("ignore:OpenBLAS is configured")


def _fitted_als(alpha: float):  # type: ignore[no-untyped-def]
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(3)
    dense = (rng.random((30, 20)) < 0.25) * rng.integers(1, 5, size=(30, 20))
    user_items = sp.csr_matrix(dense.astype(np.float32))
    model = AlternatingLeastSquares(
        factors=6, regularization=0.3, alpha=alpha, iterations=5, random_state=0,
        num_threads=1, calculate_training_loss=False,
    )
    model.fit(user_items, show_progress=False)
    return model, user_items


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_fold_in_matches_implicit_recalculate_user(alpha: float) -> None:
    model, user_items = _fitted_als(alpha)
    Y = model.item_factors
    for u in (0, 7, 19):
        row = user_items[u]
        ours = fold_in(Y, model.YtY, row.indices, alpha * row.data, model.regularization)
        theirs = model.recalculate_user(u, row)
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
        assert np.linalg.norm(ours) > 1e-3  # a real solve, not two zero vectors agreeing


def test_fold_in_matches_implicit_partial_fit_for_a_new_user() -> None:
    model, _ = _fitted_als(1.0)
    items = np.array([2, 5, 11])
    conf = np.array([3.0, 1.0, 4.0], dtype=np.float32)
    new_user = sp.csr_matrix((conf, items, [0, 3]), shape=(1, model.item_factors.shape[0]))
    ours = fold_in(model.item_factors, model.YtY, items, conf, model.regularization)
    uid = model.user_factors.shape[0]
    model.partial_fit_users([uid], new_user)
    np.testing.assert_allclose(ours, model.user_factors[uid], rtol=1e-4, atol=1e-5)


def test_fold_in_hand_solved_one_factor() -> None:
    # k = 1: x = c·y / (Σ_all y² + (c − 1)·y² + λ)
    Y = np.array([[1.0], [2.0]])
    x = fold_in(Y, Y.T @ Y, [1], [3.0], 0.5)
    assert x[0] == pytest.approx(3 * 2 / (5 + 2 * 4 + 0.5))


def test_fold_in_sums_repeated_items_like_a_csr_row() -> None:
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(6, 3))
    a = fold_in(Y, Y.T @ Y, [1, 4, 1], [1.0, 2.0, 3.0], 0.1)
    b = fold_in(Y, Y.T @ Y, [1, 4], [4.0, 2.0], 0.1)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_fold_in_of_no_items_is_zero() -> None:
    Y = np.eye(3)
    np.testing.assert_array_equal(fold_in(Y, Y.T @ Y, [], [], 0.1), np.zeros(3))


def test_isgd_update_hand_computed() -> None:
    u, i = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    nu, ni = isgd_update(u, i, lr=0.1, reg=0.2)
    # err = 1 − 0.5 = 0.5; u' = u + 0.1(0.5·i − 0.2·u); i' = i + 0.1(0.5·u' − 0.2·i)
    np.testing.assert_allclose(nu, [1.0 + 0.1 * (0.25 - 0.2), 0.1 * 0.25])
    np.testing.assert_allclose(ni, [0.5 + 0.1 * (0.5 * 1.005 - 0.1), 0.5 + 0.1 * (0.5 * 0.025 - 0.1)])
    np.testing.assert_array_equal(u, [1.0, 0.0])  # inputs untouched


def test_isgd_drives_the_pair_score_towards_one() -> None:
    u, i = init_vector("u:1", 8, seed=1), init_vector("i:1", 8, seed=1)
    before = abs(1 - u @ i)
    for _ in range(200):
        u, i = isgd_update(u, i, lr=0.05, reg=0.0)
    assert abs(1 - u @ i) < 0.01 < before


def test_init_vector_is_deterministic_small_and_key_dependent() -> None:
    a = init_vector("sku-1", 32, seed=7)
    np.testing.assert_array_equal(a, init_vector("sku-1", 32, seed=7))
    assert not np.allclose(a, init_vector("sku-2", 32, seed=7))
    assert not np.allclose(a, init_vector("sku-1", 32, seed=8))
    assert a.shape == (32,) and 0.02 < a.std() < 0.3


def test_init_vector_is_the_same_in_another_process() -> None:
    # Another worker has another PYTHONHASHSEED; the vector must not depend on it.
    code = "import json; from models.factors import init_vector; print(json.dumps(init_vector('u42', 5, 3).tolist()))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    ).stdout
    np.testing.assert_array_equal(np.array(json.loads(out)), init_vector("u42", 5, 3))


def test_cold_item_vector_is_weighted_mean() -> None:
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(cold_item_vector(vecs, [1.0, 3.0, 0.0]), [0.25, 0.75])
    with pytest.raises(ModelError):
        cold_item_vector(np.zeros((0, 2)), [])
    with pytest.raises(ModelError):
        cold_item_vector(vecs, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        cold_item_vector(vecs, [1.0, -1.0, 1.0])


def test_nearest_users_by_cosine() -> None:
    others = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.1], [0.0, 0.0]])
    got = nearest_users([1.0, 1.0], others, ["a", "b", "c", "z"], 2)
    assert [uid for uid, _ in got] == ["c", "a"]
    assert got[0][1] == pytest.approx((2 + 2.1) / (np.sqrt(2) * np.hypot(2, 2.1)))
    assert nearest_users([1.0, 1.0], others, ["a", "b", "c", "z"], 10)[-1] == ("z", 0.0)


def test_score_items_is_dot_product() -> None:
    Y = np.array([[1.0, 2.0], [3.0, -1.0]])
    np.testing.assert_allclose(score_items([2.0, 1.0], Y), [4.0, 5.0])
