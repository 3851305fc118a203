"""What ALS and PureSVD share: a (re-)weighted matrix, user and item factors, scores as their products."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from driftrec.models.batch.base import BatchModel
from driftrec.models.batch.weighting import Weighting

__all__ = ["FactorModel"]

logger = logging.getLogger(__name__)


class FactorModel(BatchModel):
    """A model that scores ``xᵤ · yᵢ`` with ``(n_users, f)`` and ``(n_items, f)`` float32 factors.

    Parameters
    ----------
    factors : int
        Latent dimensions.
    weighting : str
        ``"none"``, ``"bm25"``, ``"bm25_item"`` or ``"tfidf"`` (see :class:`Weighting`).
    bm25_k1, bm25_b : float
        BM25 parameters.
    """

    def __init__(self, factors: int, weighting: str, bm25_k1: float, bm25_b: float) -> None:
        super().__init__()
        self.factors = factors
        self.weighting_kind = weighting
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self.weighting = Weighting()
        self.user_factors = np.zeros((0, factors), np.float32)
        self.item_factors = np.zeros((0, factors), np.float32)

    def _weighting_params(self) -> dict[str, Any]:
        return {"weighting": self.weighting_kind, "bm25_k1": self.bm25_k1, "bm25_b": self.bm25_b}

    def _fit_weighting(self, x: sp.csr_matrix) -> sp.csr_matrix:
        """Fit the re-weighting on the training matrix and return the matrix re-weighted."""
        self.weighting = Weighting.fit(self.weighting_kind, x, k1=self.bm25_k1, b=self.bm25_b)
        return self.weighting.apply(x)

    def _score_users(self, user_rows: np.ndarray) -> np.ndarray:
        return self.user_factors[user_rows] @ self.item_factors.T

    def _factor_arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors, **self.weighting.to_arrays()}

    @classmethod
    def _restore(cls, arrays: Mapping[str, np.ndarray], **params: Any) -> Self:
        """A model from :meth:`_factor_arrays` output plus the subclass's own ``params``."""
        weighting = Weighting.from_arrays(arrays)
        item_factors = np.asarray(arrays["item_factors"], np.float32)
        model = cls(factors=int(item_factors.shape[1]), weighting=weighting.kind, bm25_k1=weighting.k1,
                    bm25_b=weighting.b, **params)
        model.weighting = weighting
        model.item_factors = item_factors
        model.user_factors = np.asarray(arrays["user_factors"], np.float32)
        return model
