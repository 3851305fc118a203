"""Contract tests every batch model passes on a tiny matrix (fit, recommend, export, load, seeds)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.batch import MODELS, BatchModel, create_model, load_path
from driftrec.models.batch.als import ALSModel, fold_in_users
from driftrec.models.batch.base import top_n
from driftrec.models.batch.ease import EASEModel
from driftrec.models.batch.weighting import Weighting

# Small hyperparameters so the whole file stays fast (TF: a handful of epochs).
TINY: dict[str, dict[str, Any]] = {
    "als": {"factors": 4, "iterations": 5, "regularization": 0.1, "num_threads": 1},
    "svd": {"factors": 4},
    "itemknn": {"neighbours": 5},
    "userknn": {"neighbours": 5},
    "ease": {"lam": 5.0},
    "tf": {"hidden": (8,), "epochs": 30, "batch_size": 8, "learning_rate": 1e-2},
    "pop": {},
}


def two_block_matrix(seed: int = 0) -> sp.csr_matrix:
    """24 users x 16 items in two taste groups (items 0-7 vs 8-15), ~60% density in-group."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((24, 16), np.float32)
    for u in range(24):
        group = slice(0, 8) if u < 12 else slice(8, 16)
        dense[u, group] = (rng.random(8) < 0.6).astype(np.float32)
        dense[u, (u * 3) % 16] = 1.0  # one interaction each, so no user row is empty
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def matrix() -> sp.csr_matrix:
    return two_block_matrix()


@pytest.fixture(scope="module")
def fitted(matrix: sp.csr_matrix) -> dict[str, BatchModel]:
    return {name: create_model(name, **TINY[name]).fit(matrix, seed=7) for name in MODELS}


def test_registry_lists_every_model() -> None:
    assert set(MODELS) == {"als", "svd", "itemknn", "userknn", "ease", "tf", "pop"}
    for name, cls in MODELS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recommend_shapes_order_and_excludes_seen(
    name: str, fitted: dict[str, BatchModel], matrix: sp.csr_matrix
) -> None:
    model = fitted[name]
    rows = np.arange(matrix.shape[0])
    idx, scores = model.recommend(rows, 5, exclude=matrix[rows])
    assert idx.shape == scores.shape == (len(rows), 5)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    for u in rows:
        seen = set(matrix[u].indices)
        valid = idx[u][idx[u] >= 0]
        assert not seen & set(valid.tolist()), f"{name} recommended a seen item to user {u}"
        assert len(set(valid.tolist())) == len(valid)
        finite = scores[u][np.isfinite(scores[u])]
        assert np.all(np.diff(finite) <= 0), "scores must be sorted best first"


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"pop"}))
def test_personalised_models_learn_the_two_groups(
    name: str, fitted: dict[str, BatchModel], matrix: sp.csr_matrix
) -> None:
    # Group-1 users (rows 0-11) should mostly get a group-1 item (0-7) first and vice versa;
    # by chance about a third of the unseen items are in-group.
    rows = np.arange(matrix.shape[0])
    idx, _ = fitted[name].recommend(rows, 1, exclude=matrix[rows])
    in_group = np.where(rows[:, None] < 12, idx < 8, idx >= 8) & (idx >= 0)
    assert in_group.mean() >= 0.8, f"{name}: only {in_group.mean():.2f} in-group"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_is_plain_arrays_and_load_gives_same_recommendations(
    name: str, fitted: dict[str, BatchModel], matrix: sp.csr_matrix
) -> None:
    model = fitted[name]
    arrays = model.export()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in arrays.values())
    loaded = BatchModel.load(arrays)
    assert type(loaded) is type(model)
    assert (loaded.n_users, loaded.n_items) == (model.n_users, model.n_items)
    rows = np.arange(matrix.shape[0])
    a_idx, a_sc = model.recommend(rows, 6, exclude=matrix[rows])
    b_idx, b_sc = loaded.recommend(rows, 6, exclude=matrix[rows])
    np.testing.assert_array_equal(a_idx, b_idx)
    np.testing.assert_array_equal(a_sc, b_sc)
    h_a = model.recommend_history(matrix[:5], 4, exclude=matrix[:5])
    h_b = loaded.recommend_history(matrix[:5], 4, exclude=matrix[:5])
    np.testing.assert_array_equal(h_a[0], h_b[0])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_and_load_path_round_trip(
    name: str, fitted: dict[str, BatchModel], matrix: sp.csr_matrix, tmp_path: Any
) -> None:
    path = tmp_path / f"{name}.model"  # no .npz suffix: saved exactly where asked
    fitted[name].save(path)
    again = load_path(path)
    same_class = type(fitted[name]).load_path(path)
    rows = np.arange(6)
    expected = fitted[name].recommend(rows, 4, exclude=matrix[rows])[0]
    np.testing.assert_array_equal(again.recommend(rows, 4, exclude=matrix[rows])[0], expected)
    np.testing.assert_array_equal(same_class.recommend(rows, 4, exclude=matrix[rows])[0], expected)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_model(
    name: str, fitted: dict[str, BatchModel], matrix: sp.csr_matrix
) -> None:
    again = create_model(name, **TINY[name]).fit(matrix, seed=7)
    rows = np.arange(matrix.shape[0])
    a_idx, a_sc = fitted[name].recommend(rows, 5, exclude=matrix[rows])
    b_idx, b_sc = again.recommend(rows, 5, exclude=matrix[rows])
    np.testing.assert_array_equal(a_idx, b_idx)
    np.testing.assert_allclose(a_sc, b_sc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["als", "tf"])
def test_different_seed_changes_random_init(
    name: str, fitted: dict[str, BatchModel], matrix: sp.csr_matrix
) -> None:
    other = create_model(name, **TINY[name]).fit(matrix, seed=8)
    rows = np.arange(matrix.shape[0])
    assert not np.array_equal(fitted[name]._score_users(rows), other._score_users(rows))


def test_load_rejects_wrong_class_and_corrupt_arrays(fitted: dict[str, BatchModel]) -> None:
    arrays = fitted["ease"].export()
    with pytest.raises(ModelError):
        ALSModel.load(arrays)
    broken = dict(arrays)
    del broken["weights"]
    with pytest.raises((ModelError, KeyError)):
        BatchModel.load(broken)
    with pytest.raises(ModelError):
        BatchModel.load({k: v for k, v in arrays.items() if k != "model_name"})


def test_bad_inputs_raise_model_error(fitted: dict[str, BatchModel], matrix: sp.csr_matrix) -> None:
    with pytest.raises(ModelError):
        fitted["pop"].recommend(np.array([matrix.shape[0]]), 3)
    with pytest.raises(ModelError):
        fitted["pop"].recommend(np.array([0, 1]), 3, exclude=matrix[:3])
    with pytest.raises(ModelError):
        create_model("als").fit(sp.csr_matrix((3, 4), dtype=np.float32))
    with pytest.raises(ModelError):
        create_model("nope")
    with pytest.raises(ModelError):
        create_model("ease").recommend(np.array([0]), 3)


def test_top_n_pads_when_too_few_items_and_breaks_ties_by_index() -> None:
    scores = np.array([[1.0, 3.0, -np.inf, 3.0], [-np.inf, -np.inf, -np.inf, 0.5]], np.float32)
    idx, val = top_n(scores, 3)
    np.testing.assert_array_equal(idx, [[1, 3, 0], [3, -1, -1]])
    assert val[1, 1] == -np.inf and val[0, 0] == 3.0
    idx, _ = top_n(scores, 6)
    assert idx.shape == (2, 6) and (idx[0, 3:] == -1).all()


def test_ease_matches_closed_form_and_has_zero_diagonal() -> None:
    x = two_block_matrix(3).toarray().astype(np.float64)
    lam = 3.0
    model = EASEModel(lam=lam).fit(sp.csr_matrix(x))
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    expected = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(model.weights, expected, atol=1e-5)
    assert np.all(np.diag(model.weights) == 0)


def test_ease_min_item_count_never_recommends_rare_items() -> None:
    x = two_block_matrix(1).tolil()
    x[:, 15] = 0
    x[0, 15] = 1  # item 15 has a single user
    model = EASEModel(lam=2.0, min_item_count=2).fit(x.tocsr())
    assert 15 not in model.active_items
    idx, _ = model.recommend(np.arange(24), 16)
    assert 15 not in idx


def test_als_fold_in_solves_the_normal_equations() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(10, 3))
    conf = sp.csr_matrix(np.array([[0, 4.0, 0, 2.0, 0, 0, 0, 0, 0, 1.0]]))
    x = fold_in_users(y, 0.5, conf)[0]
    c = np.ones(10)
    c[[1, 3, 9]] = [4.0, 2.0, 1.0]
    p = (conf.toarray()[0] > 0).astype(float)
    lhs = y.T @ np.diag(c) @ y + 0.5 * np.eye(3)
    np.testing.assert_allclose(lhs @ x, y.T @ (c * p), rtol=1e-4, atol=1e-5)


def test_als_fold_in_recovers_training_user_ranking(
    fitted: dict[str, BatchModel], matrix: sp.csr_matrix
) -> None:
    als = fitted["als"]
    rows = np.arange(matrix.shape[0])
    trained, _ = als.recommend(rows, 3, exclude=matrix)
    folded, _ = als.recommend_history(matrix, 3, exclude=matrix)
    assert (trained[:, 0] == folded[:, 0]).mean() >= 0.7


def test_weighting_applies_identically_to_new_rows(matrix: sp.csr_matrix) -> None:
    for kind in ("bm25", "bm25_item", "tfidf"):
        w = Weighting.fit(kind, matrix, k1=1.2, b=0.75)
        whole = w.apply(matrix).toarray()
        one = w.apply(matrix[3]).toarray()[0]
        np.testing.assert_allclose(one, whole[3], rtol=1e-6)
        assert np.all(whole[matrix.toarray() > 0] > 0)
        restored = Weighting.from_arrays(w.to_arrays())
        np.testing.assert_allclose(restored.apply(matrix).toarray(), whole)


def test_importing_models_needs_neither_tensorflow_nor_implicit() -> None:
    code = (
        "import sys, models.batch, models.offline; "
        "bad = [m for m in ('tensorflow', 'implicit', 'keras') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
