"""Implicit-feedback ALS (Hu, Koren, Volinsky 2008) trained with implicit, served with numpy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.batch.base import as_interactions
from driftrec.models.batch.factor_base import FactorModel

__all__ = ["ALSModel", "fold_in_users"]

logger = logging.getLogger(__name__)


def fold_in_users(
    item_factors: np.ndarray, regularization: float, confidence: sp.csr_matrix
) -> np.ndarray:
    """Exact least-squares user factors for fixed item factors (implicit's ``recalculate_user``).

    Solves ``(YᵀY + Yᵀ(Cᵤ − I)Y + λI) xᵤ = YᵀCᵤpᵤ`` per user, where ``Cᵤ`` holds the user's
    confidences on their observed items and ``pᵤ`` is 1 there (0 elsewhere). This is what the
    online path calls when a user's history changes, with numpy alone.

    Parameters
    ----------
    item_factors : np.ndarray
        ``(n_items, f)`` item factors ``Y``.
    regularization : float
        ``λ``, the L2 penalty used in training.
    confidence : csr_matrix
        ``(users, n_items)`` confidences ``alpha * weight`` for each user's observed items.

    Returns
    -------
    np.ndarray
        ``(users, f)`` float32 user factors.
    """
    y = np.asarray(item_factors, dtype=np.float64)
    f = y.shape[1]
    base = y.T @ y + regularization * np.eye(f)
    c = sp.csr_matrix(confidence)
    out = np.zeros((c.shape[0], f), dtype=np.float64)
    for u in range(c.shape[0]):
        lo, hi = c.indptr[u], c.indptr[u + 1]
        if lo == hi:
            continue  # no evidence: the regularised solution is the zero vector
        idx = c.indices[lo:hi]
        conf = c.data[lo:hi].astype(np.float64)
        yi = y[idx]
        a = base + (yi.T * (conf - 1.0)) @ yi
        b = (yi * conf[:, None]).sum(axis=0)
        out[u] = np.linalg.solve(a, b)
    return out.astype(np.float32)


class ALSModel(FactorModel):
    """Weighted matrix factorisation for implicit feedback.

    Confidence is ``alpha * w`` where ``w`` is the (optionally BM25/TF-IDF re-weighted)
    interaction weight; unobserved cells have confidence 1 and preference 0 (implicit's
    convention). Scores are dot products ``xᵤ · yᵢ``.

    Parameters
    ----------
    factors : int
        Latent dimensions.
    regularization : float
        L2 penalty ``λ`` on both factor matrices.
    alpha : float
        Confidence scaling of positive interactions.
    iterations : int
        ALS sweeps.
    weighting : str
        ``"none"``, ``"bm25"``, ``"bm25_item"`` or ``"tfidf"`` (see :class:`Weighting`).
    bm25_k1, bm25_b : float
        BM25 saturation and length-normalisation parameters.
    num_threads : int
        Threads for implicit's solver; 0 means all cores.
    """

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 1.0,
        iterations: int = 15,
        weighting: str = "none",
        bm25_k1: float = 100.0,
        bm25_b: float = 0.8,
        num_threads: int = 0,
    ) -> None:
        if factors < 1 or iterations < 1 or regularization < 0 or alpha <= 0:
            raise ModelError("ALS needs factors>=1, iterations>=1, regularization>=0, alpha>0")
        super().__init__(factors, weighting, bm25_k1, bm25_b)
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.num_threads = num_threads

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            **self._weighting_params(),
        }

    def fit(self, interactions: sp.csr_matrix, *, seed: int = 0, progress: bool = False) -> Self:
        # Heavy, optional dependencies are imported here so the reader can load exports
        # of this model without implicit installed.
        import threadpoolctl
        from implicit.cpu.als import AlternatingLeastSquares

        x = as_interactions(interactions)
        w = self._fit_weighting(x)
        # implicit's solver is multi-threaded itself; a threaded BLAS underneath it thrashes.
        with threadpoolctl.threadpool_limits(1, "blas"):
            als = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=seed,
                num_threads=self.num_threads,
                calculate_training_loss=False,
            )
            als.fit(w, show_progress=progress)
        self.user_factors = np.ascontiguousarray(als.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(als.item_factors, dtype=np.float32)
        self.n_users, self.n_items = x.shape
        logger.info("ALS fitted: %d users, %d items, %d factors", *x.shape, self.factors)
        return self

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """User factors for raw interaction rows (weighted and scaled as in training)."""
        conf = self.weighting.apply(sp.csr_matrix(history, dtype=np.float32)) * self.alpha
        return fold_in_users(self.item_factors, self.regularization, conf)

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return self.fold_in(history) @ self.item_factors.T

    def _export(self) -> dict[str, np.ndarray]:
        return {
            **self._factor_arrays(),
            "regularization": np.asarray([self.regularization], np.float64),
            "alpha": np.asarray([self.alpha], np.float64),
            "iterations": np.asarray([self.iterations], np.int32),
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        return cls._restore(arrays, regularization=float(arrays["regularization"][0]),
                            alpha=float(arrays["alpha"][0]), iterations=int(arrays["iterations"][0]))
