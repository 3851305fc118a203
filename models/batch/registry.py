"""Name -> class registry of the batch models (``driftrec train --model <name>``)."""

from __future__ import annotations

import logging

from driftrec.errors import ModelError
from driftrec.models.batch.als import ALSModel
from driftrec.models.batch.base import BatchModel
from driftrec.models.batch.ease import EASEModel
from driftrec.models.batch.knn import ItemKNNModel, UserKNNModel
from driftrec.models.batch.popularity import PopularityModel
from driftrec.models.batch.svd import SVDModel
from driftrec.models.batch.tf_next import TFNextItemModel

__all__ = ["MODELS", "create_model"]

logger = logging.getLogger(__name__)

#: Every batch model by its export name; importing this needs numpy and scipy only
#: (implicit and TensorFlow are imported inside the ``fit`` that needs them).
MODELS: dict[str, type[BatchModel]] = {
    "als": ALSModel,
    "svd": SVDModel,
    "itemknn": ItemKNNModel,
    "userknn": UserKNNModel,
    "ease": EASEModel,
    "tf": TFNextItemModel,
    "pop": PopularityModel,
}


def create_model(name: str, **params: object) -> BatchModel:
    """Instantiate a registered model with hyperparameters."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ModelError(f"bad parameters for {name!r}: {exc}") from exc
