"""Most-popular baseline: every user gets the items the most training users interacted with."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.batch.base import BatchModel, as_interactions

__all__ = ["PopularityModel"]

logger = logging.getLogger(__name__)


class PopularityModel(BatchModel):
    """Scores each item by its popularity, the same for every user.

    Parameters
    ----------
    by : str
        ``"users"``: number of distinct users with the item (what the offline metrics call
        popularity); ``"weight"``: sum of interaction weights (e.g. decayed clicks).
    """

    name = "pop"
    _BY = {"users": 0, "weight": 1}

    def __init__(self, by: str = "users") -> None:
        super().__init__()
        if by not in self._BY:
            raise ModelError(f"popularity 'by' must be one of {sorted(self._BY)}")
        self.by = by
        self.item_scores = np.zeros(0, np.float32)

    def params(self) -> dict[str, Any]:
        return {"by": self.by}

    def fit(self, interactions: sp.csr_matrix, *, seed: int = 0, progress: bool = False) -> Self:
        x = as_interactions(interactions)
        if self.by == "users":
            scores = np.bincount(x.indices, minlength=x.shape[1])
        else:
            scores = np.asarray(x.sum(axis=0)).ravel()
        self.item_scores = scores.astype(np.float32)
        self.n_users, self.n_items = x.shape
        return self

    def _score_users(self, user_rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_scores, (len(user_rows), self.n_items))

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.item_scores, (history.shape[0], self.n_items))

    def _export(self) -> dict[str, np.ndarray]:
        return {
            "item_scores": self.item_scores,
            "pop_by": np.asarray([self._BY[self.by]], np.int32),
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        by = {v: k for k, v in cls._BY.items()}[int(arrays["pop_by"][0])]
        model = cls(by=by)
        model.item_scores = np.asarray(arrays["item_scores"], np.float32)
        return model
