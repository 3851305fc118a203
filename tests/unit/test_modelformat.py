"""driftrec.modelformat: the published-model codec round-trips, and the worker and the reader
accept and refuse the same fold-in parts."""

from __future__ import annotations

import numpy as np
import pytest

from driftrec.errors import ModelError
from driftrec.modelformat import (
    FACTOR_PARTS,
    MODEL_PARTS,
    decode_item_factors,
    npy,
    pack_factors,
    tf_layer_count,
    tf_part_names,
)
from driftrec.online.model_cache import build_model
from driftrec.streams.published import unpack_factors


def _parts() -> dict[str, bytes]:
    Y = np.random.default_rng(3).normal(0, 0.5, (3, 4))
    return pack_factors(["a", "b", "c"], Y, alpha=2.0, regularization=0.25)


def test_pack_then_decode_round_trips() -> None:
    parts = _parts()
    assert set(parts) == set(FACTOR_PARTS) and set(FACTOR_PARTS) <= set(MODEL_PARTS)
    f = decode_item_factors(parts, default_reg=9.0)
    assert f.ids == ["a", "b", "c"] and f.Y.dtype == np.float32 and f.Y.flags.c_contiguous
    assert (f.alpha, f.regularization) == (2.0, 0.25)
    defaults = decode_item_factors({"item_ids": parts["item_ids"], "item_factors": parts["item_factors"]},
                                   default_reg=9.0)
    assert (defaults.alpha, defaults.regularization) == (1.0, 9.0)


@pytest.mark.parametrize("change", [
    {"item_ids": b"a\na\nc"},                        # an id twice
    {"alpha": npy([0.0])},                           # no confidence
    {"alpha": npy(np.zeros(0))},                     # empty scalar part
    {"regularization": npy([np.inf])},
    {"item_factors": npy(np.zeros((3, 0), np.float32))},
    {"item_ids": b"", "item_factors": npy(np.zeros((0, 4), np.float32))},  # no items
])
def test_worker_and_reader_refuse_the_same_parts(change: dict[str, bytes]) -> None:
    parts = {**_parts(), **change}
    with pytest.raises(ModelError):
        decode_item_factors(parts, default_reg=0.1)
    with pytest.raises(ModelError):
        unpack_factors("v", parts, 0.1)
    with pytest.raises(ModelError):
        build_model("v", parts, {}, default_reg=0.1, pool_size=10)


def test_tf_layer_names_and_bounds() -> None:
    assert tf_layer_count(None) is None
    assert tf_layer_count(npy([3])) == 3
    assert tf_part_names(2) == ["tf_layer0_weight", "tf_layer0_bias", "tf_layer1_weight", "tf_layer1_bias"]
    for bad in (1, 17):
        with pytest.raises(ModelError, match="tf_n_layers"):
            tf_layer_count(npy([bad]))
