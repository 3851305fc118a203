"""Online factor maths: implicit-ALS fold-in, ISGD updates, cold-start and nearest users."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from driftrec.errors import ModelError

__all__ = [
    "fold_in",
    "isgd_update",
    "init_vector",
    "cold_item_vector",
    "nearest_users",
    "score_items",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.floating]


def fold_in(
    Y: FloatArray,
    YtY: FloatArray,
    item_idx: npt.ArrayLike,
    confidences: npt.ArrayLike,
    reg: float,
) -> FloatArray:
    """Closed-form implicit-ALS user vector for fixed item factors (Hu, Koren & Volinsky, 2008).

    Solves ``x_u = (YᵀY + Y_uᵀ (C_u − I) Y_u + reg·I)⁻¹ Y_uᵀ C_u p(u)``, the step implicit's
    ``AlternatingLeastSquares.recalculate_user`` takes (same conventions: a confidence ``c > 0``
    means preference 1; ``c < 0`` means preference 0 with confidence ``|c|``; implicit's
    ``alpha`` is already folded into ``confidences``). Only the user's own items enter the
    sum, so the cost is O(n_u k² + k³) whatever the catalogue size.

    Parameters
    ----------
    Y : ndarray, shape (n_items, k)
        Item factors of the published model.
    YtY : ndarray, shape (k, k)
        ``Y.T @ Y``, computed once per model.
    item_idx : array_like of int, shape (n_u,)
        Rows of ``Y`` the user interacted with; repeated rows are summed, as a CSR row would be.
    confidences : array_like of float, shape (n_u,)
        Confidence of each interaction (``alpha * r_ui``).
    reg : float
        L2 regularisation λ.

    Returns
    -------
    ndarray, shape (k,)
        The user vector, in ``Y``'s dtype.
    """
    idx: npt.NDArray[np.int64] = np.asarray(item_idx, dtype=np.int64).ravel()
    conf: npt.NDArray[np.float64] = np.asarray(confidences, dtype=np.float64).ravel()
    if idx.shape != conf.shape:
        raise ValueError("item_idx and confidences must have the same length")
    k = Y.shape[1]
    if idx.size:
        uniq, inverse = np.unique(idx, return_inverse=True)
        conf = np.bincount(inverse, weights=conf, minlength=uniq.size).astype(np.float64)
        idx = uniq
    Yu = np.asarray(Y[idx], dtype=np.float64)
    c = np.abs(conf)
    A = np.asarray(YtY, dtype=np.float64) + reg * np.eye(k)
    A += (Yu * (c - 1.0)[:, None]).T @ Yu
    b = Yu.T @ np.where(conf > 0, conf, 0.0)
    x = np.linalg.solve(A, b)
    return x.astype(Y.dtype if np.issubdtype(Y.dtype, np.floating) else np.float64, copy=False)


def isgd_update(
    user_vec: FloatArray, item_vec: FloatArray, lr: float, reg: float
) -> tuple[FloatArray, FloatArray]:
    """One incremental SGD step for positive-only feedback (Vinagre, Jorge & Gama, 2014).

    Every observed (user, item) pair has target 1::

        err = 1 − u·i
        u' = u + lr (err · i − reg · u)
        i' = i + lr (err · u' − reg · i)

    The item step uses the updated user vector, as in the paper's Algorithm 1. The inputs are
    not modified.

    Parameters
    ----------
    user_vec, item_vec : ndarray, shape (k,)
        Current vectors.
    lr : float
        Learning rate η.
    reg : float
        L2 regularisation λ.

    Returns
    -------
    tuple[ndarray, ndarray]
        The new user and item vectors.
    """
    err = 1.0 - float(np.dot(user_vec, item_vec))
    new_user = user_vec + lr * (err * item_vec - reg * user_vec)
    new_item = item_vec + lr * (err * new_user - reg * item_vec)
    return new_user, new_item


def init_vector(key: str, k: int, seed: int = 0, scale: float = 0.1) -> npt.NDArray[np.float64]:
    """Small random vector, a pure function of ``(key, seed)``.

    The generator is seeded from BLAKE2b of the id, not Python's ``hash`` (salted per process),
    so two workers that meet the same new user or item start from the same vector.

    Parameters
    ----------
    key : str
        User or item id (prefix it, e.g. ``"u:42"``, to separate the two id spaces).
    k : int
        Number of factors.
    seed : int
        Model-wide seed.
    scale : float
        Standard deviation of each entry.
    """
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=16).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return rng.normal(0.0, scale, size=k)


def cold_item_vector(
    neighbour_vecs: npt.ArrayLike, weights: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Vector for a new item: the weighted mean of the vectors of items co-clicked with it.

    Parameters
    ----------
    neighbour_vecs : array_like, shape (n, k)
        Vectors of the co-clicked items that have one.
    weights : array_like, shape (n,)
        Non-negative weights, e.g. the decayed co-occurrence with each neighbour.

    Raises
    ------
    ModelError
        When there is no neighbour or the weights sum to zero: there is nothing to borrow from.
    """
    vecs = np.asarray(neighbour_vecs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if vecs.ndim != 2 or vecs.shape[0] != w.size:
        raise ValueError("neighbour_vecs must be (n, k) with one weight per row")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if w.size == 0 or total <= 0:
        raise ModelError("no weighted neighbour to build a cold-start item vector from")
    return (w @ vecs) / total


def nearest_users(
    user_vec: npt.ArrayLike,
    other_vecs: npt.ArrayLike,
    ids: Sequence[str],
    n: int,
) -> list[tuple[str, float]]:
    """The ``n`` users whose vectors have the highest cosine with ``user_vec``, best first.

    A zero vector has cosine 0 with everything. Ties are broken by position in ``ids``.
    """
    u = np.asarray(user_vec, dtype=np.float64).ravel()
    M = np.asarray(other_vecs, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != len(ids) or M.shape[1] != u.size:
        raise ValueError("other_vecs must be (len(ids), k) with k = len(user_vec)")
    if n <= 0 or not len(ids):
        return []
    norms = np.linalg.norm(M, axis=1) * np.linalg.norm(u)
    sims = np.zeros(M.shape[0])
    np.divide(M @ u, norms, out=sims, where=norms > 0)
    order = np.argsort(-sims, kind="stable")[:n]
    return [(ids[i], float(sims[i])) for i in order]


def score_items(user_vec: npt.ArrayLike, Y: FloatArray) -> FloatArray:
    """Predicted preference ``Y @ u`` of one user for every item."""
    return np.asarray(Y) @ np.asarray(user_vec, dtype=Y.dtype)
