"""The published-model format: part names, their encoders and decoders (spec: docs/redis-keys.md).

The one definition the trainer (:mod:`driftrec.training.publish` writes a version), the worker
(:mod:`driftrec.streams.published` folds users into the item factors) and the reader
(:mod:`driftrec.online.model_cache` scores with every part) share. Each part is a Redis STRING
under ``Keys.model_blob(version, part)`` (chunked when over 64 MB: :mod:`driftrec.modelblobs`);
arrays are the bytes :func:`numpy.save` writes, read with ``allow_pickle=False``; id lists are
UTF-8, one id per line (a ``.npy`` unicode array is accepted too).

=================== ============================================================================
part                content
=================== ============================================================================
``item_ids``        the item ids: row order of every item-indexed array below
``item_factors``    float32 ``(n_items, k)`` ALS item factors ``Y``
``alpha``           optional ``(1,)`` fold-in confidence scale, ``c = alpha · weight`` (default 1)
``regularization``  optional ``(1,)`` fold-in L2 ``λ`` (default ``Settings.fold_in_regularization``)
``user_ids``        optional, like ``item_ids``: rows of ``user_factors``
``user_factors``    optional float32 ``(n_users, k)``: the reader's nearest-user pool
``tf_n_layers``     optional ``(1,)`` int: the TF next-item model's layer count L (2..16)
``tf_layer<i>_weight`` / ``tf_layer<i>_bias``  its arrays, ``i < L``, chaining n_items → n_items
``manifest``        JSON: ``parts`` (every other part) and what was trained on what
=================== ============================================================================

The decoders raise :class:`~driftrec.errors.ModelError` for anything that does not fit; the
worker and the reader decode the four fold-in parts with the same :func:`decode_item_factors`,
so a version one of them accepts the other accepts too.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from driftrec.errors import ModelError

__all__ = [
    "FACTOR_PARTS", "MODEL_PARTS", "MANIFEST", "MAX_TF_LAYERS", "ItemFactors",
    "npy", "encode_ids", "pack_factors", "pack_version",
    "decode_ids", "decode_array", "decode_matrix", "decode_scalar", "decode_item_factors",
    "decode_user_factors", "tf_layer_count", "tf_part_names", "decode_tf_layers",
]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

#: The parts the worker reads: what a fold-in needs.
FACTOR_PARTS = ("item_ids", "item_factors", "alpha", "regularization")
#: Every part with a fixed name but the manifest (the reader's first round trip); the TF
#: layers' names follow from ``tf_n_layers`` (:func:`tf_part_names`).
MODEL_PARTS = ("item_ids", "item_factors", "user_ids", "user_factors", "alpha", "regularization", "tf_n_layers")
#: Part holding the version's JSON manifest (ignored by the worker and the reader).
MANIFEST = "manifest"
#: Most layers a published TF model may have.
MAX_TF_LAYERS = 16


# --- encoding (the trainer) ------------------------------------------------------------------
def npy(a: npt.ArrayLike) -> bytes:
    """``numpy.save`` bytes of an array (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def encode_ids(ids: Sequence[str]) -> bytes:
    """Ids as UTF-8 lines; :class:`ModelError` for an id with a newline in it."""
    if any("\n" in i for i in ids):
        raise ModelError("ids must not contain newlines")
    return "\n".join(ids).encode()


def pack_factors(ids: Sequence[str], Y: npt.ArrayLike, *, alpha: float,
                 regularization: float) -> dict[str, bytes]:
    """The four fold-in parts of a version (:data:`FACTOR_PARTS`)."""
    arr = np.ascontiguousarray(Y, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(ids):
        raise ModelError("item factors must be (len(ids), factors)")
    if any("\n" in i for i in ids):
        raise ModelError("item ids must not contain newlines")
    return {"item_ids": "\n".join(ids).encode(), "item_factors": npy(arr),
            "alpha": npy([float(alpha)]), "regularization": npy([float(regularization)])}


def pack_version(item_ids: Sequence[str], als: Mapping[str, np.ndarray], *,
                 user_ids: Sequence[str] | None = None, tf: Mapping[str, np.ndarray] | None = None,
                 manifest: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """Every part of one version, from model exports (:meth:`BatchModel.export` arrays).

    Parameters
    ----------
    item_ids : sequence of str
        Column ids of the training matrix: row order of ``item_factors`` and the TF layers.
    als : mapping
        An ALS export: ``item_factors``, ``alpha``, ``regularization``, ``weighting_kind``, and
        ``user_factors`` (published when ``user_ids`` is given).
    user_ids : sequence of str, optional
        Row ids of ``user_factors`` (the similar-users pool).
    tf : mapping, optional
        A TF next-item export: ``n_layers``, ``layer<i>_weight``, ``layer<i>_bias``.
    manifest : mapping, optional
        Extra JSON fields for the ``manifest`` part.
    """
    if int(np.asarray(als.get("weighting_kind", [0])).ravel()[0]) != 0:
        # The worker and the reader fold a user in with alpha * decayed weight and nothing else.
        raise ModelError("a published ALS model must use weighting 'none': the online fold-in "
                         "applies no BM25/TF-IDF re-weighting")
    Y = np.asarray(als["item_factors"], dtype=np.float32)
    parts = pack_factors(list(item_ids), Y, alpha=float(np.ravel(als["alpha"])[0]),
                         regularization=float(np.ravel(als["regularization"])[0]))
    if user_ids is not None:
        U = np.asarray(als["user_factors"], dtype=np.float32)
        if U.shape != (len(user_ids), Y.shape[1]) or any("\n" in u for u in user_ids):
            raise ModelError(f"user_factors {U.shape} do not fit {len(user_ids)} user ids")
        parts["user_ids"] = encode_ids(user_ids)
        parts["user_factors"] = npy(U)
    if tf is not None:
        n_layers = int(np.ravel(tf["n_layers"])[0])
        parts["tf_n_layers"] = npy(np.asarray([n_layers], dtype=np.int64))
        for i in range(n_layers):
            parts[f"tf_layer{i}_weight"] = npy(np.asarray(tf[f"layer{i}_weight"], dtype=np.float32))
            parts[f"tf_layer{i}_bias"] = npy(np.asarray(tf[f"layer{i}_bias"], dtype=np.float32))
    meta = dict(manifest or {})
    meta["parts"] = sorted(parts)
    meta.setdefault("created_at", time.time())
    parts[MANIFEST] = json.dumps(meta, sort_keys=True, default=str).encode()
    return parts


# --- decoding (the worker, the reader, the trainer's check) ----------------------------------
def decode_array(raw: bytes | None, part: str) -> np.ndarray:
    """A ``.npy`` blob as an array (never unpickles)."""
    if raw is None:
        raise ModelError(f"published model lacks part {part!r}")
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelError(f"part {part!r} is not a readable .npy array: {exc}") from None


def decode_ids(raw: bytes | None, part: str) -> list[str]:
    """Ids stored as UTF-8 lines or as a ``.npy`` unicode array."""
    if raw is None:
        raise ModelError(f"published model lacks part {part!r}")
    if raw.startswith(b"\x93NUMPY"):
        return [str(x) for x in decode_array(raw, part).ravel()]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"part {part!r} is not UTF-8 text") from None
    return text.split("\n") if text else []


def decode_matrix(raw: bytes | None, part: str, ndim: int) -> F32:
    """A numeric ``ndim``-D array as C-contiguous float32, every value finite."""
    a = decode_array(raw, part)
    if a.dtype.kind not in "fiu" or a.ndim != ndim:
        raise ModelError(f"part {part!r} must be a {ndim}-D numeric array, got {a.dtype} {a.shape}")
    out = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ModelError(f"part {part!r} holds NaN or infinite values")
    return out


def decode_scalar(raw: bytes | None, part: str, default: float, *, positive: bool = False) -> float:
    """The first value of a ``(1,)`` array, finite and >= 0 (> 0 when ``positive``);
    ``default`` when the part is absent."""
    if raw is None:
        return default
    values = decode_array(raw, part).ravel()
    if values.size == 0:
        raise ModelError(f"part {part!r} is empty")
    value = float(values[0])
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        raise ModelError(f"part {part!r} must be a finite number {'>' if positive else '>='} 0")
    return value


@dataclass(frozen=True)
class ItemFactors:
    """The fold-in parts of a version, decoded and checked."""

    ids: list[str]
    Y: F32  # (n_items, k), C order
    alpha: float
    regularization: float


def decode_item_factors(parts: Mapping[str, bytes | None], *, default_reg: float) -> ItemFactors:
    """Decode and check ``item_ids``, ``item_factors``, ``alpha`` and ``regularization``.

    Raises :class:`ModelError` when a part is missing or unreadable, the factors are not a
    finite non-empty ``(len(item_ids), k)`` matrix, an id repeats, ``alpha`` is not > 0 or
    ``regularization`` not >= 0.
    """
    ids = decode_ids(parts.get("item_ids"), "item_ids")
    Y = decode_matrix(parts.get("item_factors"), "item_factors", 2)
    if Y.shape[0] != len(ids) or Y.shape[0] == 0 or Y.shape[1] == 0:
        raise ModelError(f"item_factors has {Y.shape} rows for {len(ids)} item ids")
    if len(set(ids)) != len(ids):
        raise ModelError("item_ids holds duplicates")
    alpha = decode_scalar(parts.get("alpha"), "alpha", 1.0, positive=True)
    reg = decode_scalar(parts.get("regularization"), "regularization", default_reg)
    return ItemFactors(ids, Y, alpha, reg)


def decode_user_factors(parts: Mapping[str, bytes | None], k: int) -> tuple[list[str], F32] | None:
    """``(user_ids, user_factors)`` of a version that has them, else None."""
    if parts.get("user_factors") is None:
        return None
    user_ids = decode_ids(parts.get("user_ids"), "user_ids")
    U = decode_matrix(parts["user_factors"], "user_factors", 2)
    if U.shape != (len(user_ids), k):
        raise ModelError(f"user_factors has shape {U.shape} for {len(user_ids)} users, k={k}")
    return user_ids, U


def tf_layer_count(raw: bytes | None) -> int | None:
    """The ``tf_n_layers`` part: None when the version has no TF model."""
    if raw is None:
        return None
    n = int(decode_array(raw, "tf_n_layers").ravel()[0])
    if not 2 <= n <= MAX_TF_LAYERS:
        raise ModelError(f"tf_n_layers must be 2..{MAX_TF_LAYERS}, got {n}")
    return n


def tf_part_names(n_layers: int) -> list[str]:
    """The TF layers' part names, weight then bias of each layer in order."""
    return [f"tf_layer{i}_{kind}" for i in range(n_layers) for kind in ("weight", "bias")]


def decode_tf_layers(tf_parts: Mapping[str, bytes | None], n_layers: int, n_items: int) -> list[tuple[F32, F32]]:
    """``(weight, bias)`` of each TF layer; the shapes must chain from ``n_items`` to ``n_items``."""
    ws = [decode_matrix(tf_parts.get(f"tf_layer{i}_weight"), f"tf_layer{i}_weight", 2) for i in range(n_layers)]
    bs = [decode_matrix(tf_parts.get(f"tf_layer{i}_bias"), f"tf_layer{i}_bias", 1) for i in range(n_layers)]
    dims_ok = ws[0].shape[0] == n_items and ws[-1].shape[1] == n_items
    for i in range(n_layers):
        dims_ok = dims_ok and bs[i].shape[0] == ws[i].shape[1]
        if i:
            dims_ok = dims_ok and ws[i].shape[0] == ws[i - 1].shape[1]
    if not dims_ok:
        raise ModelError("TF layer shapes do not chain from n_items to n_items")
    return list(zip(ws, bs, strict=True))
