"""User and item factor vectors for one micro-batch: ALS fold-in against the published model, else ISGD.

No I/O here: the processor hands in what the load read and gets back what the apply writes.

* **Fold-in** (a model is published): every user of the batch gets
  ``x_u = fold_in(Y, decayed weights of P:{u}:w after this batch)``, all users of the batch
  solved together by :func:`driftrec.models.foldin.fold_in_many` (low-rank, O(n² k) for n < k items).
  The weights are read at the user's newest event time, which is a function of the user's own
  events only, and the solve of one user does not depend on the others, so a replay or a
  crash that cuts the stream into other batches ends at the same vector. Items outside the
  model get a starting vector from the model items they are co-clicked with.
* **ISGD** (no model yet): one step per applied event, in stream order, on the user's and the
  item's vector. A user's vector has one writer (its partition) and is set; an item's vector is
  shared between partitions, so the batch sends its change as a delta that the apply script adds
  to whatever is stored: concurrent workers' updates commute (asynchronous SGD).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np
import numpy.typing as npt

from driftrec.events import TOMBSTONE_TYPE
from driftrec.models.decay import DecayPolicy, EventWeights
from driftrec.models.factors import cold_item_vector, init_vector
from driftrec.models.foldin import fold_in_many
from driftrec.models.online import BatchDelta, EventView
from driftrec.streams.published import ISGD_MODEL, PublishedFactors

__all__ = [
    "VectorPlan",
    "applied_events",
    "fold_in_many",
    "plan_fold_in",
    "plan_isgd",
    "isgd_partners_to_load",
    "isgd_rounds",
    "isgd_many",
    "to_f32",
    "from_f32",
]

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


@dataclass
class VectorPlan:
    """Vector writes of one batch, all tagged with ``model`` (a version id or ``"isgd"``)."""

    model: str
    #: user -> float32 bytes, written as ``SET P:{u}:vec <model> NUL <bytes>``.
    users: dict[str, bytes] = field(default_factory=dict)
    #: item -> float32 bytes, set outright (fold-in mode: cold-start vectors of new items).
    items_set: dict[str, bytes] = field(default_factory=dict)
    #: item -> (base, delta) float32 bytes: stored + delta if the stored model matches, else base + delta.
    items_add: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)


def to_f32(v: npt.ArrayLike) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def from_f32(raw: bytes | None, k: int) -> F64 | None:
    """A stored float32 vector as float64, or None when absent or of another length."""
    if not raw or len(raw) != 4 * k:
        return None
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


def applied_events(events: Iterable[EventView], applied_offsets: Mapping[int, int],
                   weights: EventWeights) -> list[EventView]:
    """The events :func:`driftrec.models.online.plan_batch` applies, in the order it applies them.

    Tombstones are included (they reset the user); events with no weight are not.
    """
    guard = dict(applied_offsets)
    wmap = weights.weights
    out: list[EventView] = []
    for e in sorted(events, key=lambda e: (e.partition, e.offset)):
        if e.offset <= guard.get(e.partition, -1):
            continue
        guard[e.partition] = e.offset
        if e.type == TOMBSTONE_TYPE or e.type in wmap:
            out.append(e)
    return out


_by_weight = itemgetter(1, 0)  # (weight, item), as the ZSET orders its members
_time = itemgetter(1)


def _merged_weights(stored: Sequence[tuple[str, float]], inc: Mapping[str, float], keep: int) -> list[tuple[str, float]]:
    # What P:{u}:w holds after the apply: ZINCRBY each increment, then keep the `keep` largest
    # by (score, member), as ZREMRANGEBYRANK does.
    merged = dict(stored)
    for item, v in inc.items():
        merged[item] = merged.get(item, 0.0) + v
    rows = sorted(merged.items(), key=_by_weight)
    return rows[-keep:]


def plan_fold_in(
    model: PublishedFactors,
    delta: BatchDelta,
    stored_weights: Mapping[str, Sequence[tuple[str, float]]],
    histories: Mapping[str, Sequence[tuple[str, float]]],
    item_vec_models: Mapping[str, str | None],
    policy: DecayPolicy,
    *,
    history_len: int,
) -> VectorPlan:
    """Fold every user of the batch into ``model``; cold-start vectors for items outside it.

    ``stored_weights`` are the users' ``P:{u}:w`` before the batch (forward scores),
    ``histories`` their newest history entries before the batch, ``item_vec_models`` the model
    tag stored with each batch item's vector (None when it has none).
    """
    plan = VectorPlan(model.version)
    users, rows, confs = [], [], []
    index, landmark = model.index, delta.landmark
    index_get = index.get
    for user, times in delta.hist.items():
        forgotten = user in delta.forgotten
        now = max(times.values())
        if not forgotten and histories.get(user):
            now = max(now, max(map(_time, histories[user])))
        weights = _merged_weights(() if forgotten else stored_weights.get(user, ()),
                                  delta.user_items.get(user, {}), history_len)
        r = [(x, w) for i, w in weights if (x := index_get(i, -1)) >= 0 and w > 0]
        if not r:
            continue  # nothing in the model to fold against; the stored vector stays
        scale = model.alpha * policy.read_factor(landmark, now)
        users.append(user)
        rows.append(np.array([x for x, _ in r], dtype=np.intp))
        confs.append(np.array([w for _, w in r], dtype=np.float64) * scale)
    if users:
        X = fold_in_many(model.Yz, model.YtY, rows, confs, model.regularization, model.Zz, model.YZz)
        plan.users = {u: to_f32(x) for u, x in zip(users, X, strict=True)}
    for item in delta.pop:
        if item in index or item_vec_models.get(item) == model.version:
            continue
        partners = [(index[o], w) for o, w in delta.cooc.get(item, {}).items() if o in index and w > 0]
        if partners:
            w = np.array([w for _, w in partners])
            vec = cold_item_vector(model.Yz[[i for i, _ in partners]], w / w.max())
            plan.items_set[item] = to_f32(vec)
    return plan


def isgd_partners_to_load(delta: BatchDelta, item_vecs: Mapping[str, tuple[bytes | None, str | None]]) -> set[str]:
    """Co-clicked items whose vectors a new item of the batch borrows but the load did not read."""
    need: set[str] = set()
    for item in delta.pop:
        vec, tag = item_vecs.get(item, (None, None))
        if vec is None or tag != ISGD_MODEL:
            need.update(o for o in delta.cooc.get(item, {}) if o not in item_vecs)
    return need


def isgd_rounds(users: Sequence[int], items: Sequence[int]) -> list[int]:
    """Round of each (user, item) update such that a round touches every user and item once.

    Event ``j`` goes one round after the last earlier event that shares its user or its item,
    so running each round's updates together, vectorised, gives what running them one by one
    in stream order gives.
    """
    last_u: dict[int, int] = {}
    last_i: dict[int, int] = {}
    out: list[int] = []
    for u, i in zip(users, items, strict=True):
        r = max(last_u.get(u, -1), last_i.get(i, -1)) + 1
        last_u[u] = last_i[i] = r
        out.append(r)
    return out


def isgd_many(U: F64, V: F64, users: Sequence[int], items: Sequence[int], lr: float, reg: float) -> None:
    """:func:`driftrec.models.factors.isgd_update` for a sequence of (user row, item row) events, in place.

    ``U`` holds user vectors, ``V`` item vectors (rows), both updated in place.

    Equal to applying the updates one by one in order (up to floating-point summation order).
    """
    if not len(users):
        return
    rounds = np.asarray(isgd_rounds(users, items))
    order = np.argsort(rounds, kind="stable")
    uix, iix = np.asarray(users)[order], np.asarray(items)[order]
    bounds = np.searchsorted(rounds[order], np.arange(rounds.max() + 2))
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        ru, ri = uix[lo:hi], iix[lo:hi]
        u, i = U[ru], V[ri]
        err = 1.0 - np.einsum("ij,ij->i", u, i)[:, None]
        nu = u + lr * (err * i - reg * u)
        V[ri] = i + lr * (err * nu - reg * i)
        U[ru] = nu


def plan_isgd(
    events: Sequence[EventView],
    delta: BatchDelta,
    user_vecs: Mapping[str, tuple[bytes | None, str | None]],
    item_vecs: Mapping[str, tuple[bytes | None, str | None]],
    *,
    k: int,
    lr: float,
    reg: float,
    seed: int = 0,
) -> VectorPlan:
    """ISGD over ``events`` (from :func:`applied_events`) starting from the stored vectors.

    ``user_vecs`` / ``item_vecs`` map an id to its stored ``(vec bytes, model tag)``;
    ``item_vecs`` also holds the co-clicked items :func:`isgd_partners_to_load` asked for.
    A user or item without an ISGD vector starts from :func:`driftrec.models.factors.init_vector`, except
    an item co-clicked with items that have one: it starts from their weighted mean.
    """
    plan = VectorPlan(ISGD_MODEL)

    def fresh(key: str) -> F64:
        return init_vector(key, k, seed).astype(np.float32).astype(np.float64)

    # Stored ISGD item vectors, decoded once: a new item borrows from every co-clicked partner.
    item_isgd = _decode_isgd(item_vecs, k)
    user_rows: dict[str, int] = {}
    item_rows: dict[str, int] = {}
    starts_u: list[F64] = []
    starts_i: list[F64] = []
    seq_u: list[int] = []
    seq_i: list[int] = []
    for e in events:
        user = e.user
        if e.type == TOMBSTONE_TYPE:
            # Its keys are deleted before the writes; later events start afresh on a new row.
            user_rows[user] = len(starts_u)
            starts_u.append(fresh(f"u:{user}"))
            continue
        ur = user_rows.get(user)
        if ur is None:
            ur = user_rows[user] = len(starts_u)
            raw, tag = user_vecs.get(user, (None, None))
            v = from_f32(raw, k) if tag == ISGD_MODEL else None
            starts_u.append(v if v is not None else fresh(f"u:{user}"))
        ir = item_rows.get(e.item)
        if ir is None:
            ir = item_rows[e.item] = len(starts_i)
            starts_i.append(_start_item(e.item, delta, item_isgd, k, seed))
        seq_u.append(ur)
        seq_i.append(ir)
    if not seq_u:
        return plan
    U, V = np.array(starts_u), np.array(starts_i)
    base = V.copy()
    isgd_many(U, V, seq_u, seq_i, lr, reg)
    touched_users = set(seq_u)
    # Whole matrices cast at once (the same element-wise casts as to_f32 row by row).
    U32, B32, D32 = U.astype("<f4"), base.astype("<f4"), (V - base).astype("<f4")
    plan.users = {u: U32[r].tobytes() for u, r in user_rows.items() if r in touched_users}
    plan.items_add = {i: (B32[r].tobytes(), D32[r].tobytes()) for i, r in item_rows.items()}
    return plan


def _decode_isgd(table: Mapping[str, tuple[bytes | None, str | None]], k: int) -> dict[str, F64]:
    """The ISGD vectors of ``table`` (id -> stored ``(bytes, tag)``) as float64 rows."""
    out: dict[str, F64] = {}
    for key, (raw, tag) in table.items():
        if tag == ISGD_MODEL and raw and len(raw) == 4 * k:
            out[key] = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    return out


def _start_item(item: str, delta: BatchDelta, isgd: Mapping[str, F64], k: int, seed: int) -> F64:
    v = isgd.get(item)
    if v is not None:
        return v
    partners = delta.cooc.get(item)
    got = [(vec, w) for o, w in partners.items() if w > 0 and (vec := isgd.get(o)) is not None] if partners else []
    if got:
        w = np.array([w for _, w in got])
        w = w / w.max()
        # models.factors.cold_item_vector's weighted mean, the same arithmetic without its checks
        # (the weights here are positive and finite by construction).
        v = (w @ np.array([vec for vec, _ in got])) / w.sum()
    else:
        v = init_vector(f"i:{item}", k, seed)
    return v.astype(np.float32).astype(np.float64)  # the base travels as float32
