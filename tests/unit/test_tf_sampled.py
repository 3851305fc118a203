"""The TensorFlow next-items model with a sampled softmax (large catalogues)."""

from __future__ import annotations

import numpy as np
import pytest

from driftrec.errors import ModelError
from driftrec.models.batch.base import BatchModel
from driftrec.models.batch.tf_next import FULL_SOFTMAX_MAX_ITEMS, TFNextItemModel
from tests.unit.test_batch_models import two_block_matrix

TINY = {"hidden": (8,), "epochs": 30, "batch_size": 8, "learning_rate": 1e-2, "num_sampled": 4}


@pytest.fixture(scope="module")
def fitted() -> TFNextItemModel:
    return TFNextItemModel(**TINY).fit(two_block_matrix(), seed=7)


def test_negatives_rule() -> None:
    auto = TFNextItemModel()
    assert auto.negatives(FULL_SOFTMAX_MAX_ITEMS) == 0
    assert auto.negatives(FULL_SOFTMAX_MAX_ITEMS + 1) == 1024
    assert TFNextItemModel(num_sampled=0).negatives(10**6) == 0
    assert TFNextItemModel(num_sampled=50).negatives(40) == 0  # as many as items: full is exact
    assert TFNextItemModel(num_sampled=50).negatives(400) == 50
    with pytest.raises(ModelError, match="num_sampled"):
        TFNextItemModel(num_sampled=-1)


def test_sampled_softmax_learns_the_two_groups(fitted: TFNextItemModel) -> None:
    m = two_block_matrix()
    rows = np.arange(m.shape[0])
    idx, _ = fitted.recommend(rows, 1, exclude=m[rows])
    in_group = np.where(rows[:, None] < 12, idx < 8, idx >= 8) & (idx >= 0)
    assert in_group.mean() >= 0.8, in_group.mean()
    # The output layer is exported as (hidden, items), as the full softmax's, for the reader.
    assert fitted.weights[-1].shape == (8, 16) and fitted.weights[-1].flags.c_contiguous


def test_sampled_model_is_seeded_and_round_trips(fitted: TFNextItemModel) -> None:
    m = two_block_matrix()
    rows = np.arange(m.shape[0])
    again = TFNextItemModel(**TINY).fit(m, seed=7)
    np.testing.assert_array_equal(fitted.recommend(rows, 5, exclude=m[rows])[0],
                                  again.recommend(rows, 5, exclude=m[rows])[0])
    loaded = BatchModel.load(fitted.export())
    assert isinstance(loaded, TFNextItemModel) and loaded.num_sampled == 4
    np.testing.assert_array_equal(loaded.recommend(rows, 5, exclude=m[rows])[1],
                                  fitted.recommend(rows, 5, exclude=m[rows])[1])
