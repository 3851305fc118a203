"""Contract every batch model passes on a tiny click log: fit, recommend, save, load, publish.

"Publish" means the packed version decodes with the reader's loader
(:func:`driftrec.online.model_cache.build_model`) and the worker's (:func:`driftrec.streams.published.unpack_factors`)
and scores exactly as the trained model; a model the online format cannot carry fails with a
clear :class:`ModelError` instead.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.batch import MODELS, BatchModel, create_model, load_path
from driftrec.models.batch.tf_next import forward
from driftrec.models.decay import DecayPolicy
from driftrec.settings import Settings
from driftrec.simulator import ShopSimulator
from driftrec.streams.published import unpack_factors
from driftrec.training.clicklog import events_to_log
from driftrec.training.matrix import Interactions, build_interactions
from driftrec.training.publish import (
    MANIFEST,
    PUBLISHABLE,
    check_parts,
    new_version_id,
    npy,
    pack_models,
)

S = Settings()
TINY: dict[str, dict[str, Any]] = {
    "als": {"factors": 8, "iterations": 6, "regularization": 0.5, "alpha": 2.0, "num_threads": 1},
    "svd": {"factors": 6},
    "itemknn": {"neighbours": 10},
    "userknn": {"neighbours": 10},
    "ease": {"lam": 20.0},
    "tf": {"hidden": [16], "epochs": 8, "batch_size": 16, "learning_rate": 1e-2},
    "pop": {},
}


@pytest.fixture(scope="module")
def data() -> Interactions:
    sim = ShopSimulator(n_users=60, n_items=150, n_categories=4, seed=11, start_time=1.7e9)
    events = list(itertools.islice(sim.events(4000), 4000))
    return build_interactions(events_to_log(events, S), DecayPolicy(S.half_life_s))


@pytest.fixture(scope="module")
def fitted(data: Interactions) -> dict[str, BatchModel]:
    return {name: create_model(name, **TINY[name]).fit(data.matrix, seed=3) for name in MODELS}


def _check(parts: dict[str, bytes]) -> Any:
    return check_parts("v1", parts, default_reg=S.fold_in_regularization, pool_size=S.reader_similar_users_pool)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_contract(name: str, fitted: dict[str, BatchModel], data: Interactions, tmp_path: Path) -> None:
    model = fitted[name]
    assert (model.n_users, model.n_items) == data.shape
    rows = np.arange(min(20, data.shape[0]))
    recs, scores = model.recommend(rows, 5, exclude=data.matrix[rows])
    assert recs.shape == (rows.size, 5) and np.all(recs >= 0)
    seen = data.matrix[rows].toarray() > 0
    assert not seen[np.arange(rows.size)[:, None], recs].any(), "recommended a seen item"
    assert np.all(np.diff(scores, axis=1) <= 0)
    model.save(tmp_path / f"{name}.npz")
    again = load_path(tmp_path / f"{name}.npz")
    np.testing.assert_array_equal(again.recommend(rows, 5, exclude=data.matrix[rows])[0], recs)
    if name not in PUBLISHABLE:
        with pytest.raises(ModelError, match="no published form"):
            pack_models({"als": fitted["als"], name: model}, data.item_ids)
        return
    parts = pack_models({"als": fitted["als"], name: model}, data.item_ids, user_ids=data.user_ids)
    published = _check(parts)
    worker = unpack_factors("v1", parts, S.fold_in_regularization)
    als = fitted["als"]
    assert worker.ids == tuple(data.item_ids) and published.item_ids == data.item_ids
    np.testing.assert_array_equal(worker.Y, als.item_factors)
    assert worker.alpha == published.alpha == als.alpha and worker.regularization == published.reg == als.regularization
    if name == "als":
        # a training user: the reader's top items equal ALS's own ranking
        u = 4
        vec = published.user_vector(None, None, data.user_ids[u], [])
        top, _ = published.score(vec, None, 5)
        ref, _ = als.recommend(np.array([u]), 5)
        assert [i for i, _ in top] == [data.item_ids[j] for j in ref[0]]
        # a new user: the reader's fold-in equals ALS's fold-in of the same weights
        hist = data.matrix[7]
        pairs = [(data.item_ids[j], float(w)) for j, w in zip(hist.indices, hist.data, strict=True)]
        folded = published.user_vector(None, None, "nobody", pairs)
        np.testing.assert_allclose(folded, als.fold_in(sp.csr_matrix(hist))[0], rtol=1e-4, atol=1e-5)
    else:
        assert published.has_tf
        hist = data.matrix[9]
        pairs = [(data.item_ids[j], float(w)) for j, w in zip(hist.indices, hist.data, strict=True)]
        _, tf_top = published.score(None, published.tf_hidden_state(pairs), 5)
        logits = forward(hist.toarray(), model.weights, model.biases)[0]
        assert [i for i, _ in tf_top] == [data.item_ids[j] for j in np.argsort(-logits, kind="stable")[:5]]


def test_manifest_lists_the_parts_and_travels_as_json(fitted: dict[str, BatchModel], data: Interactions) -> None:
    parts = pack_models({"als": fitted["als"], "tf": fitted["tf"]}, data.item_ids, user_ids=data.user_ids,
                        manifest={"trained_until": data.until})
    meta = json.loads(parts[MANIFEST])
    assert meta["parts"] == sorted(p for p in parts if p != MANIFEST)
    assert meta["trained_until"] == data.until
    assert {"item_ids", "item_factors", "user_ids", "user_factors", "alpha", "regularization",
            "tf_n_layers", "tf_layer0_weight", "tf_layer1_bias"} <= set(parts)
    assert np.load(__import__("io").BytesIO(parts["tf_n_layers"])).tolist() == [2]


def test_publishing_needs_als_and_no_bm25(fitted: dict[str, BatchModel], data: Interactions) -> None:
    with pytest.raises(ModelError, match="needs the als model"):
        pack_models({"tf": fitted["tf"]}, data.item_ids)
    bm25 = create_model("als", **{**TINY["als"], "weighting": "bm25"}).fit(data.matrix, seed=3)
    with pytest.raises(ModelError, match="weighting 'none'"):
        pack_models({"als": bm25}, data.item_ids)


@pytest.mark.parametrize("part, blob, message", [
    ("item_factors", b"\x93NUMPY garbage", "item_factors"),
    ("item_factors", npy(np.full((3, 2), np.nan, np.float32)), "item_factors"),
    ("item_ids", b"only-one-id", "item_factors"),
    ("tf_layer1_weight", npy(np.zeros((4, 4), np.float32)), "chain"),
    ("alpha", npy([-1.0]), "alpha"),
    (MANIFEST, b"{not json", "manifest"),
])
def test_corrupt_parts_are_model_errors(fitted: dict[str, BatchModel], data: Interactions,
                                        part: str, blob: bytes, message: str) -> None:
    parts = pack_models({"als": fitted["als"], "tf": fitted["tf"]}, data.item_ids)
    _check(parts)
    with pytest.raises(ModelError, match=message):
        _check({**parts, part: blob})


def test_version_ids_sort_by_time_and_name_the_content(fitted: dict[str, BatchModel], data: Interactions) -> None:
    a = pack_models({"als": fitted["als"]}, data.item_ids, manifest={"x": 1})
    b = pack_models({"als": fitted["als"]}, data.item_ids, manifest={"x": 2})
    assert new_version_id(a, 1.7e9) == new_version_id(b, 1.7e9)  # manifest is not content
    assert new_version_id(a, 1.7e9) < new_version_id(a, 1.7e9 + 1)
    c = pack_models({"als": fitted["als"], "tf": fitted["tf"]}, data.item_ids)
    assert new_version_id(c, 1.7e9) != new_version_id(a, 1.7e9)


def test_same_seed_gives_byte_identical_published_parts(data: Interactions) -> None:
    from driftrec.training.runner import _deterministic_tensorflow

    _deterministic_tensorflow()

    def parts(seed: int) -> dict[str, bytes]:
        models = {n: create_model(n, **TINY[n]).fit(data.matrix, seed=seed) for n in ("als", "tf")}
        packed = pack_models(models, data.item_ids, user_ids=data.user_ids)
        packed.pop(MANIFEST)  # holds the packing time
        return packed

    one, two, other = parts(5), parts(5), parts(6)
    assert one == two
    assert one["item_factors"] != other["item_factors"] and one["tf_layer0_weight"] != other["tf_layer0_weight"]
