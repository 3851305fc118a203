"""Truncated SVD (PureSVD, Cremonesi et al. 2010) of the weighted users x items matrix."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from driftrec.errors import ModelError
from driftrec.models.batch.base import as_interactions
from driftrec.models.batch.factor_base import FactorModel

__all__ = ["SVDModel"]

logger = logging.getLogger(__name__)


class SVDModel(FactorModel):
    """PureSVD: ``W ≈ U Σ Vᵀ`` on the (re-weighted) matrix; a user scores ``wᵤ V Vᵀ``.

    For training users ``wᵤ V = uᵤ Σ``, so stored user factors are ``U Σ`` and item factors
    are ``V``; a new user's history is projected the same way (no solve needed).

    Parameters
    ----------
    factors : int
        Rank ``k``; clamped to ``min(n_users, n_items) - 1`` (ARPACK's limit).
    weighting : str
        ``"none"``, ``"bm25"``, ``"bm25_item"`` or ``"tfidf"``.
    bm25_k1, bm25_b : float
        BM25 parameters.
    """

    name = "svd"

    def __init__(
        self,
        factors: int = 64,
        weighting: str = "none",
        bm25_k1: float = 1.2,
        bm25_b: float = 0.75,
    ) -> None:
        if factors < 1:
            raise ModelError("SVD needs factors >= 1")
        super().__init__(factors, weighting, bm25_k1, bm25_b)

    def params(self) -> dict[str, Any]:
        return {"factors": self.factors, **self._weighting_params()}

    def fit(self, interactions: sp.csr_matrix, *, seed: int = 0, progress: bool = False) -> Self:
        x = as_interactions(interactions)
        w = self._fit_weighting(x).astype(np.float64)
        k = min(self.factors, min(x.shape) - 1)
        if k < 1:
            raise ModelError(f"matrix {x.shape} is too small for a truncated SVD")
        if k < self.factors:
            logger.warning(
                "SVD rank clamped from %d to %d by matrix shape %s", self.factors, k, x.shape
            )
        # ARPACK starts from a random vector; a seeded start makes the factors reproducible.
        v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, size=min(w.shape))
        u, s, vt = svds(w, k=k, v0=v0, solver="arpack")
        order = np.argsort(-s)
        u, s, vt = u[:, order], s[order], vt[order]
        # Fix each component's sign (largest-|.| entry of v positive) so refits agree exactly.
        flip = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
        flip[flip == 0] = 1.0
        u, vt = u * flip, vt * flip[:, None]
        self.user_factors = np.ascontiguousarray(u * s, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(vt.T, dtype=np.float32)
        self.n_users, self.n_items = x.shape
        return self

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        w = self.weighting.apply(history)
        return np.asarray(w @ self.item_factors) @ self.item_factors.T

    def _export(self) -> dict[str, np.ndarray]:
        return self._factor_arrays()

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls._restore(arrays)
