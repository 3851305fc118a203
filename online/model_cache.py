"""The published batch model held in memory: item factors, TF next-item arrays, nearest-user pool.

The parts of a version and their checks are :mod:`driftrec.modelformat` (spec:
``docs/redis-keys.md``); this module turns them into the arrays a request scores with.
``P:{m}:current`` names the live version; the reader checks it on every request (it is in the
request's one pipeline) and loads a new version in the background, serving the old one until the
new one is ready. A version that fails to load is logged and retried after a back-off; the
version already served stays.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from driftrec import modelformat
from driftrec.errors import ModelError
from driftrec.modelformat import decode_array, decode_ids
from driftrec.models.factors import fold_in
from driftrec.online.ann import AnnConfig, AnnIndex, top_of

if TYPE_CHECKING:
    from driftrec.online.shared_model import SharedModels

# decode_ids and decode_array stay importable here for callers written before driftrec.modelformat.
__all__ = ["PublishedModel", "ModelCache", "decode_ids", "decode_array", "build_model"]

logger = logging.getLogger(__name__)

_RETRY_FAILED_S = 30.0
F32 = npt.NDArray[np.float32]


@dataclass
class PublishedModel:
    """One published version, ready to score a user with one matrix-vector product per source.

    ``Y @ u`` gives the user-vector scores and ``W_outᵀ h + b`` the TF logits; each product
    writes into a buffer allocated once per version (the event loop runs one request's maths
    at a time, and the scores are read before the next await), so a request allocates nothing
    catalogue-sized but the index array of the top-n selection. Two matrix-vector products
    measured faster than one ``(n, k + h) @ (k + h, 2)`` product here.

    The per-request scans (user vector, TF logits, similar items by factors) cover the *scan
    pool*: every item, or on a catalogue larger than ``Settings.reader_scan_items`` that many
    items with the largest factor norms (:func:`build_model`), whose rows are copied into
    ``scan_Y`` / ``scan_tf_out`` so a scan reads one contiguous block. A scan streams its whole
    matrix from memory on every request ((k + TF hidden width) × 4 bytes per item: about 1.4 ms
    of reader CPU per 10,000 items at ``driftrec train``'s default sizes here,
    ``benchmarks/reader_floor.py``, in git history at 8811c33), so the pool is what bounds a request on a large catalogue.

    With :meth:`build_indexes` (``Settings.reader_ann``), each scan of at least
    ``AnnConfig.min_rows`` rows is replaced by an HNSW search (:mod:`driftrec.online.ann`) for
    ``overfetch × n`` candidates, re-scored exactly from the same arrays and cut to ``n``: the
    scores are the exact scan's, the candidate set approximate, and a request's cost grows far
    slower than the catalogue (``benchmarks/reader_ann.py``: 1.9x from 10,000 to 1,000,000 random
    items), so the index covers every item (no scan pool).
    """

    version: str
    item_ids: list[str]
    item_index: dict[str, int]
    Y: F32
    YtY: npt.NDArray[np.float64]
    alpha: float
    reg: float
    tf_hidden: list[tuple[F32, F32]] = field(default_factory=list)  # (W, b) of hidden layers
    tf_out: F32 | None = None  # W_outᵀ, (n_items, h), C order; None once a scan pool holds its rows
    tf_out_bias: F32 | None = None
    pool_ids: list[str] = field(default_factory=list)
    pool_unit: F32 | None = None  # unit-norm user factors of the nearest-user pool
    user_index: dict[str, int] = field(default_factory=dict)
    user_factors: F32 | None = None
    loaded_at: float = field(default_factory=time.time)
    #: Catalogue rows of the scan pool, ascending; None: every item (then the scan_* are the
    #: full arrays themselves, not copies).
    scan_rows: npt.NDArray[np.int64] | None = None

    @property
    def k(self) -> int:
        return int(self.Y.shape[1])

    def __post_init__(self) -> None:
        self._set_scan_pool(self.scan_rows)

    def _set_scan_pool(self, rows: npt.NDArray[np.int64] | None) -> None:
        """Scan ``rows`` of the catalogue (ascending), or every item when None."""
        self.scan_rows = rows
        if rows is None:
            self.scan_ids = self.item_ids
            self.scan_Y = self.Y
            self.scan_tf_out, self.scan_tf_bias = self.tf_out, self.tf_out_bias
        else:
            self.scan_ids = [self.item_ids[j] for j in rows.tolist()]
            self.scan_Y = np.ascontiguousarray(self.Y[rows])
            self.scan_tf_out = np.ascontiguousarray(self.tf_out[rows]) if self.tf_out is not None else None
            self.scan_tf_bias = np.ascontiguousarray(self.tf_out_bias[rows]) if self.tf_out_bias is not None else None
            # Requests read only the pool's rows of the output layer: the whole layer (as large
            # as the catalogue × the TF width, 1 GB at a million items) is not kept.
            self.tf_out = self.tf_out_bias = None
        self._norms: npt.NDArray[np.float32] | None = None
        self._vec_buf = np.empty(self.scan_Y.shape[0], dtype=np.float32)
        self._tf_buf = np.empty(self.scan_Y.shape[0], dtype=np.float32)
        self.ann: AnnConfig | None = None
        self.ann_vec: AnnIndex | None = None
        self.ann_tf: AnnIndex | None = None
        self.ann_users: AnnIndex | None = None
        self.ann_items: AnnIndex | None = None

    def build_indexes(self, config: AnnConfig) -> None:
        """Build an HNSW index over each scanned matrix of at least ``config.min_rows`` rows
        (CPU work, seconds per 10,000 rows: run off the event loop).

        Inner product over ``scan_Y`` (user vector) and over the rows ``[w_i, b_i]`` of the TF
        output layer (queried with ``[h, 1]``: ``w_i·h + b_i`` is the logit), cosine over
        ``scan_Y`` (similar items), inner product over the unit-norm user pool (cosine).
        """
        self._item_norms()  # similar items read the norms; compute them here, not on a request
        if self.scan_Y.shape[0] >= config.min_rows:
            self.ann_vec = AnnIndex(self.scan_Y, "ip", config)
            self.ann_items = AnnIndex(self.scan_Y, "cos", config)
            if self.scan_tf_out is not None and self.scan_tf_bias is not None:
                width = self.scan_tf_out.shape[1]
                aug = np.empty((self.scan_tf_out.shape[0], width + 1), dtype=np.float32)
                aug[:, :width] = self.scan_tf_out
                aug[:, width] = self.scan_tf_bias
                # The output layer is kept once, as these rows: the re-score reads the weights
                # through a view of them (and an f32 index reads them in place).
                self.scan_tf_out = aug[:, :width]
                if self.scan_rows is None:
                    self.tf_out = self.scan_tf_out
                self.ann_tf = AnnIndex(aug, "ip", config)
        if self.pool_unit is not None and self.pool_unit.shape[0] >= config.min_rows:
            self.ann_users = AnnIndex(self.pool_unit, "ip", config)
        self.ann = config

    def index_stats(self) -> dict[str, dict[str, float]]:
        """Rows, build seconds and graph bytes of each index built."""
        return {name: {"rows": ix.rows, "build_s": round(ix.build_s, 3), "memory_bytes": ix.memory_bytes}
                for name, ix in (("user_vector", self.ann_vec), ("tf", self.ann_tf),
                                 ("similar_users", self.ann_users), ("similar_items", self.ann_items))
                if ix is not None}

    @property
    def has_tf(self) -> bool:
        return self.scan_tf_out is not None

    # --- per-request maths --------------------------------------------------------------------
    def user_vector(self, stored: bytes | None, stored_version: str | None, user: str,
                    weights: Sequence[tuple[str, float]]) -> F32 | None:
        """The user's factor vector for this version.

        The worker's stored vector when it was folded against this version; else the batch
        vector of a user the model was trained on; else a fold-in of the user's decayed weights
        (implicit's ``recalculate_user``; cost O(n_u k² + k³), independent of the catalogue).
        """
        if stored is not None and stored_version == self.version and len(stored) == 4 * self.k:
            vec = np.frombuffer(stored, dtype=np.float32)
            if np.all(np.isfinite(vec)):
                return vec
        if self.user_factors is not None:
            row = self.user_index.get(user)
            if row is not None:
                return self.user_factors[row]
        idx = [self.item_index[i] for i, _ in weights if i in self.item_index]
        if not idx:
            return None
        conf = [self.alpha * w for i, w in weights if i in self.item_index]
        return fold_in(self.Y, self.YtY, idx, conf, self.reg).astype(np.float32)

    def tf_hidden_state(self, weights: Sequence[tuple[str, float]]) -> F32 | None:
        """Last hidden layer of the TF model for a decayed history (sparse first layer).

        Equals ``models.batch.tf_next.forward`` up to the output layer: ``h₀ = x/‖x‖₂`` only
        touches the rows of the first weight matrix of the user's items.
        """
        if not self.tf_hidden:
            return None
        pairs = [(self.item_index[i], w) for i, w in weights if i in self.item_index and w > 0]
        if not pairs:
            return None
        rows = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        x = np.fromiter((p[1] for p in pairs), dtype=np.float64, count=len(pairs))
        x = (x / np.sqrt(x @ x)).astype(np.float32)
        W0, b0 = self.tf_hidden[0]
        h = np.tanh(x @ W0[rows] + b0)
        for W, b in self.tf_hidden[1:]:
            h = np.tanh(h @ W + b)
        return h.astype(np.float32)

    def sources(self, stored: bytes | None, stored_version: str | None, user: str,
                weights: Sequence[tuple[str, float]], want: int, n_similar: int, *,
                vector: bool = True, tf: bool = True) -> tuple[list[tuple[str, float]], list[tuple[str, float]],
                                                               list[tuple[str, float]]]:
        """The model's three candidate lists for one user: top-``want`` by the user vector and by
        the TF logits, and the ``n_similar`` nearest users (none when ``n_similar`` is 0).

        ``vector``/``tf`` False skip a source (its blend weight is 0); the user vector is still
        computed when the similar users need it. The reader and the evaluation both call this.
        """
        u = self.user_vector(stored, stored_version, user, weights) if vector or n_similar > 0 else None
        h = self.tf_hidden_state(weights) if tf else None
        vec, tf_scores = self.score(u if vector else None, h, want)
        similar = self.nearest_users(u, user, n_similar) if u is not None and n_similar > 0 else []
        return vec, tf_scores, similar

    def score(self, u: F32 | None, h: F32 | None, n: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """Top-``n`` items by ``Y u`` and by the TF logits ``W_outᵀ h + b``."""
        vec: list[tuple[str, float]] = []
        tf: list[tuple[str, float]] = []
        if u is not None:
            u = np.asarray(u, dtype=np.float32)
            rows = self._candidates(self.ann_vec, u, n)
            if rows is not None:
                vec = self._top(self.scan_Y[rows] @ u, n, rows)
            else:
                np.dot(self.scan_Y, u, out=self._vec_buf)
                vec = self._top(self._vec_buf, n)
        if h is not None and self.scan_tf_out is not None and self.scan_tf_bias is not None:
            h = np.asarray(h, dtype=np.float32)
            rows = self._candidates(self.ann_tf, np.append(h, np.float32(1.0)), n)
            if rows is not None:
                row = self.scan_tf_out[rows] @ h
                row += self.scan_tf_bias[rows]
            else:
                row = self._tf_buf
                np.dot(self.scan_tf_out, h, out=row)
                row += self.scan_tf_bias
            # Logits can be negative and blend keeps positive scores only: shift by the lowest
            # candidate's logit, which keeps the order (all a softmax needs).
            top = self._top(row, n, rows)
            floor = top[-1][1] if top else 0.0
            tf = [(i, s - floor + 1e-6) for i, s in top]
        return vec, tf

    def _candidates(self, index: AnnIndex | None, query: F32, n: int) -> npt.NDArray[np.int64] | None:
        """Candidate rows for the top ``n`` from ``index``; None: scan every row exactly (no
        index, or as many candidates as rows)."""
        if index is None or self.ann is None:
            return None
        count = self.ann.fetch(n)
        return index.candidates(query, count) if count < index.rows else None

    def _top(self, row: npt.NDArray[np.float32], n: int,
             rows: npt.NDArray[np.int64] | None = None) -> list[tuple[str, float]]:
        """The top ``n`` of ``row``: scores of every scanned item, or of the scan rows ``rows``."""
        order = top_of(row, n)
        at = order.tolist() if rows is None else rows[order].tolist()
        ids = self.scan_ids
        return list(zip([ids[j] for j in at], row[order].tolist(), strict=True))

    def nearest_users(self, u: F32, user: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` pool users with the highest cosine to ``u`` (the user itself left out)."""
        if self.pool_unit is None or n <= 0:
            return []
        norm = float(np.sqrt(u @ u))
        if norm <= 0:
            return []
        q = u / norm
        take = min(n + 1, self.pool_unit.shape[0])
        rows = self._candidates(self.ann_users, q, take)
        sims = self.pool_unit @ q if rows is None else self.pool_unit[rows] @ q
        order = top_of(sims, take)
        at = order.tolist() if rows is None else rows[order].tolist()
        pool_ids = self.pool_ids
        out = list(zip([pool_ids[j] for j in at], sims[order].tolist(), strict=True))
        return [(v, s) for v, s in out if v != user and s > 0][:n]

    def item_neighbours(self, item: str, n: int) -> list[tuple[str, float]]:
        """Items of the scan pool whose factors have the highest cosine with ``item``'s (for
        similar items); ``item`` itself may lie outside the pool."""
        row = self.item_index.get(item)
        if row is None:
            return []
        y = self.Y[row]
        norms = self._item_norms()
        at = row if self.scan_rows is None else int(np.searchsorted(self.scan_rows, row))
        in_pool = self.scan_rows is None or (at < self.scan_rows.size and self.scan_rows[at] == row)
        ny = float(norms[at]) if in_pool else float(_row_norms(self.Y[row:row + 1])[0])
        if ny <= 0:
            return []
        rows = self._candidates(self.ann_items, y, n + 1)
        if rows is None:
            sims = (self.scan_Y @ y) / (norms * ny + 1e-12)
            if in_pool:
                sims[at] = -np.inf
        else:
            sims = (self.scan_Y[rows] @ y) / (norms[rows] * ny + 1e-12)
            if in_pool:
                sims[rows == at] = -np.inf
        return [(i, s) for i, s in self._top(sims.astype(np.float32), n, rows) if s > 0]

    def _item_norms(self) -> npt.NDArray[np.float32]:
        """Factor norms of the scan pool's rows."""
        norms = self._norms
        if norms is None:
            norms = self._norms = _row_norms(self.scan_Y)
        return norms


def _row_norms(a: F32) -> F32:
    """Euclidean norm of each row, in float32 (one formula for every norm here, so an item's
    norm is the same bits wherever it is computed)."""
    return np.sqrt((a * a).sum(axis=1))


def build_model(version: str, parts: Mapping[str, bytes | None], tf_parts: Mapping[str, bytes | None],
                *, default_reg: float, pool_size: int, scan_items: int | None = None,
                ann: AnnConfig | None = None) -> PublishedModel:
    """Validate the published parts and build a :class:`PublishedModel` (CPU work: run off-loop).

    ``pool_size`` caps the nearest-user pool (``reader_similar_users_pool``); ``scan_items`` the
    items the per-request scans cover (``reader_scan_items``; None: all), those with the
    largest factor norms, as the user pool is chosen: implicit ALS leaves items with little
    evidence near zero, and a small-norm item rarely reaches a user's top scores. ``ann``
    (``reader_ann``) builds the HNSW indexes (:meth:`PublishedModel.build_indexes`); a catalogue
    of at least ``ann.min_rows`` items is then indexed whole and ``scan_items`` does not apply.
    """
    factors = modelformat.decode_item_factors(parts, default_reg=default_reg)
    item_ids, Y = factors.ids, factors.Y
    item_index = {item: i for i, item in enumerate(item_ids)}
    hidden: list[tuple[F32, F32]] = []
    out_bias: F32 | None = None
    out_t: F32 | None = None
    n_layers = modelformat.tf_layer_count(parts.get("tf_n_layers"))
    if n_layers is not None:
        layers = modelformat.decode_tf_layers(tf_parts, n_layers, len(item_ids))
        hidden = layers[:-1]
        out_bias = layers[-1][1]
        out_t = np.ascontiguousarray(layers[-1][0].T, dtype=np.float32)
    model = PublishedModel(
        version=version, item_ids=item_ids, item_index=item_index, Y=Y,
        YtY=Y.astype(np.float64).T @ Y.astype(np.float64), alpha=factors.alpha, reg=factors.regularization,
        tf_hidden=hidden, tf_out=out_t, tf_out_bias=out_bias,
    )
    users = modelformat.decode_user_factors(parts, Y.shape[1])
    if users is not None:
        user_ids, U = users
        norms = _row_norms(U)
        # The pool keeps the users with the largest factor norms: ALS leaves users with little
        # evidence near zero, whose cosines are noise; the cap bounds the per-request product.
        keep = np.argsort(-norms, kind="stable")[:pool_size]
        keep = keep[norms[keep] > 0]
        model.pool_ids = [user_ids[j] for j in keep.tolist()]
        model.pool_unit = np.ascontiguousarray(U[keep] / norms[keep, None], dtype=np.float32)
        model.user_index = {u: i for i, u in enumerate(user_ids)}
        model.user_factors = U
    if scan_items is not None and scan_items < 1:
        raise ModelError(f"scan_items must be >= 1, got {scan_items}")
    indexed = ann is not None and len(item_ids) >= ann.min_rows
    if scan_items is not None and scan_items < len(item_ids) and not indexed:
        norms = _row_norms(Y)
        keep = np.sort(np.argsort(-norms, kind="stable")[:scan_items]).astype(np.int64)
        model._set_scan_pool(keep)
    if ann is not None:
        model.build_indexes(ann)
    return model


PartsReader = Callable[[str, Sequence[str]], Awaitable[dict[str, bytes | None]]]


class ModelCache:
    """Holds the live :class:`PublishedModel`; loads a new version when the reader sees one."""

    def __init__(self, read_parts: PartsReader, *, default_reg: float, pool_size: int,
                 scan_items: int | None = None, ann: AnnConfig | None = None, shared: SharedModels | None = None) -> None:
        self._read_parts = read_parts
        # Versions built once per host and memory-mapped by every reader process (or None).
        self._shared = shared
        self._default_reg = default_reg
        self._pool_size = pool_size
        self._scan_items = scan_items
        self._ann = ann
        self.model: PublishedModel | None = None
        self._loading: asyncio.Task[None] | None = None
        self._failed: dict[str, float] = {}
        self.loads = 0
        self.failures = 0

    @property
    def version(self) -> str | None:
        return self.model.version if self.model is not None else None

    def observe(self, version: str | None) -> PublishedModel | None:
        """Called with the version a request read; starts a background load when it changed."""
        if version is None:
            return self.model
        if version != self.version and (self._loading is None or self._loading.done()):
            failed_at = self._failed.get(version)
            if failed_at is None or time.monotonic() - failed_at > _RETRY_FAILED_S:
                self._loading = asyncio.get_running_loop().create_task(self._load_logged(version))
        return self.model

    async def load(self, version: str) -> PublishedModel:
        """Read and build ``version``; it becomes the served model. Raises :class:`ModelError`."""
        model: PublishedModel | None = None
        if self._shared is not None:  # another reader process of this host may have built it
            model = await asyncio.to_thread(self._shared.opened, version)
        if model is None:
            # The fixed-name parts in one round trip; a TF model's layers in a second one.
            parts = await self._read_parts(version, modelformat.MODEL_PARTS)
            tf_parts: dict[str, bytes | None] = {}
            n_layers = modelformat.tf_layer_count(parts.get("tf_n_layers"))
            if n_layers is not None:
                tf_parts = await self._read_parts(version, modelformat.tf_part_names(n_layers))
            build = functools.partial(build_model, version, parts, tf_parts, default_reg=self._default_reg,
                                      pool_size=self._pool_size, scan_items=self._scan_items, ann=self._ann)
            # The parse and the index builds run in a thread: usearch releases the GIL while it
            # builds, so the loop keeps serving the old version meanwhile.
            if self._shared is not None:
                model = await asyncio.to_thread(self._shared.load, version, build)
            else:
                model = await asyncio.to_thread(build)
        self.model = model
        self.loads += 1
        self._failed.pop(version, None)
        logger.info("serving model %s: %d items (%d searchable per request), k=%d, tf=%s, user pool %d, "
                    "indexes %s", version, len(model.item_ids), len(model.scan_ids), model.k, model.has_tf,
                    len(model.pool_ids), model.index_stats() or "none (exact scans)")
        return model

    async def _load_logged(self, version: str) -> None:
        try:
            await self.load(version)
        except ModelError as exc:
            self.failures += 1
            self._failed[version] = time.monotonic()
            logger.error("model %s not loaded, still serving %s: %s", version, self.version, exc)
        except Exception as exc:  # Redis down mid-load: try again on a later request
            self.failures += 1
            self._failed[version] = time.monotonic() - _RETRY_FAILED_S + 1.0
            logger.warning("model %s load interrupted (%s); will retry", version, exc)

    async def wait(self) -> None:
        """Wait for a load in progress (tests and start-up)."""
        if self._loading is not None:
            await self._loading
