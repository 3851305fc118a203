"""Next-items network: weighted recent history -> dense layers -> softmax over the catalogue.

TensorFlow is used only to train, and is imported lazily inside :meth:`TFNextItemModel.fit`;
the fitted weights are plain numpy arrays and scoring is a numpy forward pass, so readers of an
export never need TensorFlow.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from driftrec.errors import ModelError
from driftrec.models.batch.base import BatchModel, as_interactions, csr_from_arrays, csr_to_arrays

__all__ = ["TFNextItemModel", "forward", "FULL_SOFTMAX_MAX_ITEMS"]

logger = logging.getLogger(__name__)

#: Above this many items the default is the sampled softmax: a full softmax step costs
#: batch × hidden × items multiply-adds and dominates training on large catalogues.
FULL_SOFTMAX_MAX_ITEMS = 5000
_DEFAULT_SAMPLED = 1024
_UNIGRAM_POWER = 0.75  # word2vec's distortion: negatives a little flatter than popularity


def _l2_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def forward(
    x: np.ndarray, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]
) -> np.ndarray:
    """Numpy forward pass: the logits the trained network gives each item.

    ``h₀ = xᵤ / ‖xᵤ‖₂`` (so the first layer is a weighted average of item embeddings),
    ``hₗ = tanh(hₗ₋₁ Wₗ + bₗ)`` for the hidden layers and ``logits = h W_out + b_out``. The
    softmax is monotone, so logits rank items exactly as the predicted probabilities do.

    Parameters
    ----------
    x : np.ndarray
        ``(users, n_items)`` weighted (e.g. time-decayed) interaction vectors.
    weights, biases : sequence of np.ndarray
        Layer parameters, hidden layers first, output layer last.

    Returns
    -------
    np.ndarray
        ``(users, n_items)`` float32 logits.
    """
    h = _l2_rows(np.asarray(x, dtype=np.float32))
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        h = np.tanh(h @ w + b)
    return (h @ weights[-1] + biases[-1]).astype(np.float32)


class TFNextItemModel(BatchModel):
    """A multinomial denoising autoencoder (Mult-DAE, Liang et al. 2018) used as a next-items model.

    The input is a user's weighted history (pass time-decayed weights to favour recent
    items), L2-normalised; training drops each input item with probability
    ``input_dropout`` and asks the network to put softmax mass on all of the user's items
    (multinomial log-likelihood weighted by the interaction weights), so at serving time it
    predicts the items the user is likely to interact with next.

    Parameters
    ----------
    hidden : sequence of int
        Width of each tanh hidden layer (the first is the item-embedding size).
    epochs : int
        Passes over the users.
    batch_size : int
        Users per gradient step.
    learning_rate : float
        Adam step size.
    input_dropout : float
        Probability of hiding each history item during training.
    l2 : float
        L2 penalty on the weight matrices.
    num_sampled : int, optional
        Sampled softmax (Jean et al. 2015): each step's softmax runs over the batch's items plus
        this many negatives drawn from item popularity ** 0.75 (logits corrected by the log of
        their expected count, as ``tf.nn.sampled_softmax_loss`` does) instead of the whole
        catalogue, and Adam moves only the rows a step uses (models/batch/tf_sampled.py), so a
        step costs O(batch items + negatives) rows instead of O(items). ``None`` (default) uses the full softmax up to
        ``FULL_SOFTMAX_MAX_ITEMS`` items and 1024 negatives above; ``0`` always uses the full one.
        Serving always scores the whole catalogue.
    """

    name = "tf"

    def __init__(
        self,
        hidden: Sequence[int] = (256,),
        epochs: int = 60,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        input_dropout: float = 0.5,
        l2: float = 1e-5,
        num_sampled: int | None = None,
    ) -> None:
        super().__init__()
        if not hidden or min(hidden) < 1 or epochs < 1 or batch_size < 1:
            raise ModelError(
                "tf model needs >= 1 hidden layer of width >= 1, epochs >= 1, batch >= 1"
            )
        if not 0.0 <= input_dropout < 1.0 or learning_rate <= 0 or l2 < 0:
            raise ModelError("tf model needs 0 <= input_dropout < 1, learning_rate > 0, l2 >= 0")
        if num_sampled is not None and num_sampled < 0:
            raise ModelError("tf model needs num_sampled >= 0 (0 = full softmax) or None (automatic)")
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.input_dropout = input_dropout
        self.l2 = l2
        self.num_sampled = num_sampled
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        self.history = sp.csr_matrix((0, 0), dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "hidden": list(self.hidden),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "input_dropout": self.input_dropout,
            "l2": self.l2,
            "num_sampled": self.num_sampled,
        }

    def negatives(self, n_items: int) -> int:
        """Negatives per step for a catalogue of ``n_items`` (0 = full softmax)."""
        k = self.num_sampled
        if k is None:
            k = _DEFAULT_SAMPLED if n_items > FULL_SOFTMAX_MAX_ITEMS else 0
        return k if k < n_items else 0  # as many negatives as items: the full softmax is exact

    def _init_weights(
        self, n_items: int, rng: np.random.Generator
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        dims = [n_items, *self.hidden, n_items]
        ws, bs = [], []
        for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True):
            limit = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform
            ws.append(rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32))
            bs.append(np.zeros(fan_out, np.float32))
        return ws, bs

    def fit(self, interactions: sp.csr_matrix, *, seed: int = 0, progress: bool = False) -> Self:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf  # lazy: only training needs TensorFlow

        x = as_interactions(interactions)
        n_users, n_items = x.shape
        # All randomness (init, batch order, dropout masks) comes from one numpy generator so
        # a seed reproduces the run; TensorFlow only does the arithmetic.
        rng = np.random.default_rng(seed)
        ws, bs = self._init_weights(n_items, rng)
        k_neg = self.negatives(n_items)
        # Sampled softmax looks output rows up by item, so that layer is kept as (items, hidden).
        w_vars = [tf.Variable(w) for w in ws[:-1]] + [tf.Variable(ws[-1].T.copy() if k_neg else ws[-1])]
        b_vars = [tf.Variable(b) for b in bs]
        variables = [*w_vars, *b_vars]
        optimizer = tf.keras.optimizers.Adam(learning_rate=self.learning_rate)
        keep = 1.0 - self.input_dropout
        l2 = self.l2
        spec = [
            tf.TensorSpec([None, 2], tf.int64),  # (row, item) of each history entry
            tf.TensorSpec([None], tf.float32),  # its weight
            tf.TensorSpec([None], tf.float32),  # its dropout mask, already scaled by 1/keep
            tf.TensorSpec([], tf.int64),  # rows in the batch
        ]

        def hidden(idx: Any, val: Any, mask: Any, n_rows: Any) -> Any:
            rows = idx[:, 0]
            norms = tf.sqrt(tf.math.unsorted_segment_sum(val * val, rows, n_rows))
            x_in = tf.SparseTensor(idx, val / tf.gather(norms, rows) * mask, [n_rows, n_items])
            h = tf.tanh(tf.sparse.sparse_dense_matmul(x_in, w_vars[0]) + b_vars[0])
            for w, b in zip(w_vars[1:-1], b_vars[1:-1], strict=True):
                h = tf.tanh(h @ w + b)
            return h

        # The history stays sparse end to end: normalising, dropout (only non-zeros can be
        # dropped), the first layer and the likelihood (which only needs the logits of the
        # user's items) all work on the non-zeros, so a step costs O(nnz·h + batch·h·n_items).
        # The sampled softmax has its own step (models/batch/tf_sampled.py).
        @tf.function(input_signature=spec)
        def step(idx: Any, val: Any, mask: Any, n_rows: Any) -> Any:
            with tf.GradientTape() as tape:
                h = hidden(idx, val, mask, n_rows)
                log_p = tf.nn.log_softmax(h @ w_vars[-1] + b_vars[-1])
                nll = -tf.reduce_sum(tf.gather_nd(log_p, idx) * val) / tf.cast(n_rows, tf.float32)
                loss = nll + l2 * tf.add_n([tf.reduce_sum(w * w) for w in w_vars])
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            return nll

        if k_neg:
            from driftrec.models.batch.tf_sampled import build_sampled_step, sample_batch

            sampled_step = build_sampled_step(tf, w_vars, b_vars, self.learning_rate, l2)
            # Negatives from popularity ** 0.75, drawn by the numpy generator like all randomness.
            q = np.asarray(x.getnnz(axis=0), np.float64) ** _UNIGRAM_POWER
            q = q / q.sum() if q.sum() > 0 else np.full(n_items, 1.0 / n_items)
            cdf = np.cumsum(q)

        rows = np.flatnonzero(np.diff(x.indptr) > 0)  # users without history teach nothing
        t0 = time.perf_counter()
        for epoch in range(self.epochs):
            order = rng.permutation(rows)
            total = 0.0
            for start in range(0, order.size, self.batch_size):
                batch = order[start : start + self.batch_size]
                xb = x[batch].tocoo()
                idx = np.stack([xb.row, xb.col], axis=1).astype(np.int64)
                mask = (rng.random(xb.nnz) < keep).astype(np.float32) / np.float32(keep)
                if k_neg:
                    looked_up = sample_batch(xb.row, xb.col, k_neg, cdf, q, rng)
                    nll = sampled_step(*looked_up, xb.data.astype(np.float32), mask, np.int64(batch.size))
                else:
                    nll = step(idx, xb.data.astype(np.float32), mask, np.int64(batch.size))
                total += float(nll) * batch.size
            if progress:
                logger.info(
                    "tf epoch %d/%d nll %.4f", epoch + 1, self.epochs, total / max(rows.size, 1)
                )
        logger.info("tf model trained %d epochs in %.1fs (%s)", self.epochs, time.perf_counter() - t0,
                    f"sampled softmax, {k_neg} negatives" if k_neg else "full softmax")
        self.weights = [np.ascontiguousarray(v.numpy(), dtype=np.float32) for v in w_vars]
        if k_neg:
            self.weights[-1] = np.ascontiguousarray(self.weights[-1].T)
        self.biases = [np.ascontiguousarray(v.numpy(), dtype=np.float32) for v in b_vars]
        self.history = x
        self.n_users, self.n_items = n_users, n_items
        return self

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return forward(sp.csr_matrix(history).toarray(), self.weights, self.biases)

    def _score_users(self, user_rows: np.ndarray) -> np.ndarray:
        return self._score_history(self.history[user_rows])

    def _export(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "n_layers": np.asarray([len(self.weights)], np.int32),
            "train_params": np.asarray(
                [self.epochs, self.batch_size, self.learning_rate, self.input_dropout, self.l2],
                np.float64,
            ),
            "num_sampled": np.asarray([-1 if self.num_sampled is None else self.num_sampled], np.int64),
            **csr_to_arrays("history", self.history),
        }
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"layer{i}_weight"] = w
            arrays[f"layer{i}_bias"] = b
        return arrays

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        n_layers = int(arrays["n_layers"][0])
        weights = [np.asarray(arrays[f"layer{i}_weight"], np.float32) for i in range(n_layers)]
        biases = [np.asarray(arrays[f"layer{i}_bias"], np.float32) for i in range(n_layers)]
        epochs, batch, lr, drop, l2 = (float(v) for v in arrays["train_params"])
        sampled = int(arrays["num_sampled"][0]) if "num_sampled" in arrays else -1  # older exports: automatic
        model = cls(
            hidden=[w.shape[1] for w in weights[:-1]],
            epochs=int(epochs),
            batch_size=int(batch),
            learning_rate=lr,
            input_dropout=drop,
            l2=l2,
            num_sampled=None if sampled < 0 else sampled,
        )
        model.weights, model.biases = weights, biases
        model.history = csr_from_arrays("history", arrays)
        return model
