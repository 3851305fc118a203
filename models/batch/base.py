"""The contract every batch recommender follows: fit a sparse matrix, recommend, export plain arrays."""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from driftrec.errors import ModelError

__all__ = [
    "BatchModel",
    "FORMAT_VERSION",
    "as_interactions",
    "csr_from_arrays",
    "csr_to_arrays",
    "load_path",
    "top_n",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the exported array layout of any model changes incompatibly.
FORMAT_VERSION = 1

# Users are scored in chunks so a dense (chunk x n_items) block stays small in memory.
_CHUNK = 256


def as_interactions(interactions: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """Validate a users x items weight matrix and return it as canonical float32 CSR.

    Raises
    ------
    ModelError
        If the matrix is not 2-D sparse, is empty, or holds non-finite weights.
    """
    if not sp.issparse(interactions) or interactions.ndim != 2:
        raise ModelError("interactions must be a 2-D scipy.sparse matrix (users x items)")
    m = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.sort_indices()
    if m.shape[0] == 0 or m.shape[1] == 0 or m.nnz == 0:
        raise ModelError(f"interactions matrix {m.shape} holds no interactions")
    if not np.all(np.isfinite(m.data)):
        raise ModelError("interactions hold NaN or infinite weights")
    return m


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick the ``n`` best items per row of a dense score block.

    Parameters
    ----------
    scores : np.ndarray
        ``(rows, n_items)`` float scores; ``-inf`` marks items that must not be returned.
    n : int
        How many items per row; clamped to ``n_items``.

    Returns
    -------
    (item_idx, item_scores)
        ``(rows, n)`` int64 item indices sorted by descending score (ties: lower index first)
        and their float32 scores. Slots without a finite-scored item hold index ``-1`` and
        score ``-inf``.
    """
    rows, n_items = scores.shape
    n_eff = min(n, n_items)
    if n_eff <= 0 or rows == 0:
        empty = (rows, max(n, 0))
        return np.full(empty, -1, np.int64), np.full(empty, -np.inf, np.float32)
    neg = -scores
    if n_eff < n_items:
        cand = np.argpartition(neg, n_eff - 1, axis=1)[:, :n_eff]
    else:
        cand = np.broadcast_to(np.arange(n_items), (rows, n_items)).copy()
    cand_scores = np.take_along_axis(neg, cand, axis=1)
    # lexsort: last key is primary -> by score, then by item index for stable ties.
    order = np.lexsort((cand, cand_scores), axis=1)
    idx = np.take_along_axis(cand, order, axis=1).astype(np.int64)
    vals = -np.take_along_axis(cand_scores, order, axis=1).astype(np.float32)
    idx[~np.isfinite(vals)] = -1
    vals[~np.isfinite(vals)] = -np.inf
    if n_eff < n:
        pad = n - n_eff
        idx = np.hstack([idx, np.full((rows, pad), -1, np.int64)])
        vals = np.hstack([vals, np.full((rows, pad), -np.inf, np.float32)])
    return idx, vals


def csr_to_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    """Flatten a CSR matrix into plain arrays named ``{prefix}_indptr`` etc."""
    return {
        f"{prefix}_indptr": np.asarray(m.indptr, dtype=np.int64),
        f"{prefix}_indices": np.asarray(m.indices, dtype=np.int32),
        f"{prefix}_data": np.asarray(m.data, dtype=np.float32),
        f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64),
    }


def csr_from_arrays(prefix: str, arrays: Mapping[str, np.ndarray]) -> sp.csr_matrix:
    """Rebuild a CSR matrix written by :func:`csr_to_arrays`."""
    try:
        shape = tuple(int(x) for x in arrays[f"{prefix}_shape"])
        return sp.csr_matrix(
            (arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
            shape=shape,
        )
    except KeyError as exc:
        raise ModelError(f"exported arrays lack {exc.args[0]!r}") from exc


def _name_array(name: str) -> np.ndarray:
    # The model name travels as ASCII bytes so the export stays numeric (no pickled objects).
    return np.frombuffer(name.encode("ascii"), dtype=np.uint8).copy()


def _name_of(arrays: Mapping[str, np.ndarray]) -> str:
    if "model_name" not in arrays:
        raise ModelError("exported arrays lack 'model_name'")
    return bytes(np.asarray(arrays["model_name"], dtype=np.uint8)).decode("ascii")


class BatchModel(abc.ABC):
    """A batch-trained recommender over a fixed users x items index space.

    Subclasses implement ``fit``, ``_score_users``, ``_score_history``, ``_export`` and
    ``_from_arrays``; ranking, exclusion, serialisation and validation live here so every
    model behaves the same. Scores of ``-inf`` mean "this model cannot score the item"; such
    items are never recommended.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.n_users: int = 0
        self.n_items: int = 0

    # --- to implement ------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, interactions: sp.csr_matrix, *, seed: int = 0, progress: bool = False) -> Self:
        """Train on a users x items matrix of non-negative float weights; return ``self``."""

    @abc.abstractmethod
    def _score_users(self, user_rows: np.ndarray) -> np.ndarray:
        """Dense float32 ``(len(user_rows), n_items)`` scores for training users."""

    @abc.abstractmethod
    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        """Dense float32 scores for users described only by their item weights (fold-in)."""

    @abc.abstractmethod
    def _export(self) -> dict[str, np.ndarray]:
        """The model's state as plain numeric arrays (no name, no version)."""

    @classmethod
    @abc.abstractmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        """Rebuild a fitted model from :meth:`_export`'s arrays."""

    # --- shared behaviour --------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.n_items > 0

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ModelError(f"model {self.name!r} is not fitted")

    def recommend(
        self, user_rows: np.ndarray, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items for training users.

        Parameters
        ----------
        user_rows : np.ndarray
            Row indices (into the matrix given to ``fit``) of the users to serve.
        n : int
            Items per user.
        exclude : csr_matrix, optional
            One row per entry of ``user_rows`` (aligned, like implicit's ``user_items``);
            its non-zero items are never returned (typically ``train[user_rows]``).

        Returns
        -------
        (item_idx, scores)
            ``(len(user_rows), n)`` int64 indices and float32 scores, best first; ``-1`` /
            ``-inf`` pad rows with fewer than ``n`` recommendable items.
        """
        self._require_fitted()
        rows = np.asarray(user_rows, dtype=np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_users):
            raise ModelError(f"user rows must lie in [0, {self.n_users})")
        return self._rank(rows, n, exclude, self._score_users)

    def recommend_history(
        self, history: sp.csr_matrix, n: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items for users known only by a row of item weights each (fold-in).

        ``history`` is ``(users, n_items)``; pass it again as ``exclude`` to drop seen items.
        """
        self._require_fitted()
        h = sp.csr_matrix(history, dtype=np.float32)
        if h.shape[1] != self.n_items:
            raise ModelError(f"history has {h.shape[1]} items, model has {self.n_items}")
        return self._rank(np.arange(h.shape[0]), n, exclude, lambda r: self._score_history(h[r]))

    def _rank(
        self, rows: np.ndarray, n: int, exclude: sp.csr_matrix | None, score: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        if n < 1:
            raise ModelError("n must be >= 1")
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != (rows.size, self.n_items):
                raise ModelError(
                    f"exclude must be ({rows.size}, {self.n_items}), one row per user; got {exclude.shape}"
                )
        out_idx = np.empty((rows.size, n), np.int64)
        out_val = np.empty((rows.size, n), np.float32)
        for start in range(0, rows.size, _CHUNK):
            sl = slice(start, start + _CHUNK)
            s = np.array(score(rows[sl]), dtype=np.float32, copy=True)
            s[np.isnan(s)] = -np.inf
            if exclude is not None:
                ex = exclude[sl].tocoo()
                s[ex.row, ex.col] = -np.inf
            out_idx[sl], out_val[sl] = top_n(s, n)
        return out_idx, out_val

    def export(self) -> dict[str, np.ndarray]:
        """The fitted model as plain numeric numpy arrays, servable with numpy/scipy alone."""
        self._require_fitted()
        arrays = self._export()
        arrays["model_name"] = _name_array(self.name)
        arrays["format_version"] = np.asarray([FORMAT_VERSION], dtype=np.int32)
        arrays["n_users"] = np.asarray([self.n_users], dtype=np.int64)
        arrays["n_items"] = np.asarray([self.n_items], dtype=np.int64)
        for key, value in arrays.items():
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                raise ModelError(f"export key {key!r} is not a plain numeric array")
        return arrays

    @classmethod
    def load(cls, arrays: Mapping[str, np.ndarray]) -> BatchModel:
        """Rebuild a model from :meth:`export`'s arrays; on ``BatchModel`` it dispatches by name."""
        name = _name_of(arrays)
        version = int(np.asarray(arrays.get("format_version", [-1]))[0])
        if version != FORMAT_VERSION:
            raise ModelError(f"export format {version} is not {FORMAT_VERSION}")
        if cls is BatchModel:
            from driftrec.models.batch.registry import MODELS  # local: the registry imports us

            if name not in MODELS:
                raise ModelError(f"unknown model {name!r}; known: {sorted(MODELS)}")
            target: type[BatchModel] = MODELS[name]
        else:
            if name != cls.name:
                raise ModelError(f"arrays hold a {name!r} model, not {cls.name!r}")
            target = cls
        model = target._from_arrays(arrays)
        model.n_users = int(np.asarray(arrays["n_users"])[0])
        model.n_items = int(np.asarray(arrays["n_items"])[0])
        return model

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`export` to an ``.npz`` archive at exactly ``path`` (no pickle)."""
        arrays: dict[str, Any] = self.export()
        # A file object stops numpy from appending ".npz" to a path that lacks it.
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load_path(cls, path: str | os.PathLike[str]) -> BatchModel:
        """Read a model written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read model file {path}: {exc}") from exc
        return cls.load(arrays)

    def params(self) -> dict[str, Any]:
        """Hyperparameters (for reports); subclasses list theirs."""
        return {}


def load_path(path: str | os.PathLike[str]) -> BatchModel:
    """Read any model written by :meth:`BatchModel.save`."""
    return BatchModel.load_path(path)
