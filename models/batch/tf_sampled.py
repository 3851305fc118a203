"""Sampled-softmax training step for the next-items network, with Adam moving only the rows a step touches.

With a large catalogue the full softmax is not the only cost per step: a dense Adam update of the
two (items × hidden) matrices reads and writes every row each step. Here the history enters by
row look-ups (an embedding bag), the softmax runs over the batch's items plus sampled negatives,
and Adam updates only those rows (lazy Adam; L2 acts on the rows a step uses), so a step costs
O(batch items + negatives) rows instead of O(items). TensorFlow is passed in, never imported here,
so importing this module stays free for readers of an export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["SampledBatch", "build_sampled_step", "sample_batch"]

logger = logging.getLogger(__name__)

SampledBatch = tuple[np.ndarray, ...]


def sample_batch(rows: np.ndarray, cols: np.ndarray, k_neg: int, cdf: np.ndarray, q: np.ndarray,
                 rng: np.random.Generator) -> SampledBatch:
    """The look-up indices of one batch: unique history items, candidates and their log-counts.

    Parameters
    ----------
    rows, cols : np.ndarray
        Row in the batch and item of each history entry.
    k_neg : int
        Negatives drawn (with replacement) from ``q``, the sampling distribution (``cdf`` its
        running sum).

    Returns
    -------
    (rows, unique items, each entry's position among them, candidates, each entry's position
    among the candidates, log of each candidate's expected count in the sample)
    """
    ucols, col_pos = np.unique(cols, return_inverse=True)
    neg = np.minimum(np.searchsorted(cdf, rng.random(k_neg) * cdf[-1]), q.size - 1)
    cand = np.union1d(ucols, neg)
    log_q = np.log(np.maximum(k_neg * q[cand], 1e-12)).astype(np.float32)
    return (rows.astype(np.int64), ucols.astype(np.int64), col_pos.astype(np.int64), cand.astype(np.int64),
            np.searchsorted(cand, cols).astype(np.int64), log_q)


def build_sampled_step(tf: Any, w_vars: Sequence[Any], b_vars: Sequence[Any], learning_rate: float,
                       l2: float, beta1: float = 0.9, beta2: float = 0.999,
                       epsilon: float = 1e-7) -> Callable[..., Any]:
    """A ``tf.function`` doing one step; ``w_vars[0]`` and ``w_vars[-1]`` are (items × hidden).

    The step's arguments are :func:`sample_batch`'s arrays followed by the entries' weights,
    their dropout mask (scaled by 1/keep) and the number of rows; it returns the batch's
    negative log-likelihood per user. Adam's constants are Keras' defaults.
    """
    variables = [*w_vars, *b_vars]
    m_vars = [tf.Variable(tf.zeros_like(v)) for v in variables]
    v_vars = [tf.Variable(tf.zeros_like(v)) for v in variables]
    t = tf.Variable(0.0)
    i64, f32 = tf.int64, tf.float32
    spec = [tf.TensorSpec([None], i64), tf.TensorSpec([None], i64), tf.TensorSpec([None], i64),
            tf.TensorSpec([None], i64), tf.TensorSpec([None], i64), tf.TensorSpec([None], f32),
            tf.TensorSpec([None], f32), tf.TensorSpec([None], f32), tf.TensorSpec([], i64)]

    @tf.function(input_signature=spec)
    def step(rows: Any, ucols: Any, col_pos: Any, cand: Any, ent_c: Any, log_q: Any,
             val: Any, mask: Any, n_rows: Any) -> Any:
        with tf.GradientTape() as tape:
            w_in = tf.gather(w_vars[0], ucols)
            norms = tf.sqrt(tf.math.unsorted_segment_sum(val * val, rows, n_rows))
            x = val / tf.gather(norms, rows) * mask
            bag = tf.math.unsorted_segment_sum(tf.gather(w_in, col_pos) * x[:, None], rows, n_rows)
            h = tf.tanh(bag + b_vars[0])
            for w, b in zip(w_vars[1:-1], b_vars[1:-1], strict=True):
                h = tf.tanh(h @ w + b)
            w_out = tf.gather(w_vars[-1], cand)
            logits = tf.matmul(h, w_out, transpose_b=True) + tf.gather(b_vars[-1], cand) - log_q
            log_p = tf.nn.log_softmax(logits)
            n = tf.cast(n_rows, f32)
            nll = -tf.reduce_sum(tf.gather_nd(log_p, tf.stack([rows, ent_c], axis=1)) * val) / n
            reg = tf.add_n([tf.reduce_sum(w_in * w_in), tf.reduce_sum(w_out * w_out),
                            *(tf.reduce_sum(w * w) for w in w_vars[1:-1])])
            loss = nll + l2 * reg
        grads = tape.gradient(loss, variables)
        t.assign_add(1.0)
        lr = learning_rate * tf.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
        for var, m, v, g in zip(variables, m_vars, v_vars, grads, strict=True):
            if isinstance(g, tf.IndexedSlices):  # look-ups of unique rows: update those rows only
                i = g.indices
                m_rows = beta1 * tf.gather(m, i) + (1.0 - beta1) * g.values
                v_rows = beta2 * tf.gather(v, i) + (1.0 - beta2) * tf.square(g.values)
                m.scatter_update(tf.IndexedSlices(m_rows, i))
                v.scatter_update(tf.IndexedSlices(v_rows, i))
                var.scatter_sub(tf.IndexedSlices(lr * m_rows / (tf.sqrt(v_rows) + epsilon), i))
            else:
                m.assign(beta1 * m + (1.0 - beta1) * g)
                v.assign(beta2 * v + (1.0 - beta2) * tf.square(g))
                var.assign_sub(lr * m / (tf.sqrt(v) + epsilon))
        return nll

    return step
