"""The published batch model as the worker sees it: item factors cached per version, reloaded on change.

Format (the contract with the trainer and the reader, in ``docs/redis-keys.md`` and
``online/model_cache.py``; every part a Redis STRING, arrays as :func:`numpy.save` bytes)::

    P:{m}:current                    live version id
    P:{m}:v:<version>:item_ids       UTF-8 item ids, one per line (or a .npy unicode array)
    P:{m}:v:<version>:item_factors   .npy float32 (n_items, k)
    P:{m}:v:<version>:alpha          .npy (1,) fold-in confidence scale (optional, default 1)
    P:{m}:v:<version>:regularization .npy (1,) fold-in L2 (optional, default the setting)
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from driftrec import modelblobs
from driftrec.errors import ModelError
from driftrec.keys import Keys
from driftrec.models.foldin import fold_in_basis
from driftrec.streams import metrics

__all__ = ["PublishedFactors", "FactorCache", "pack_factors", "unpack_factors", "ISGD_MODEL", "PARTS"]

logger = logging.getLogger(__name__)

#: Model tag of vectors learnt online by ISGD (no published model); never a published version.
ISGD_MODEL = "isgd"
_RETRY_BAD_VERSION_S = 30.0
#: The parts of a version the worker reads (a TF model's parts are the reader's business).
PARTS = ("item_ids", "item_factors", "alpha", "regularization")


@dataclass(frozen=True)
class PublishedFactors:
    """One published version's item factors, ready for fold-in.

    ``Yz`` is ``Y`` in float64 with one zero row appended: padded gathers index it with
    ``n_items`` and pick up nothing (see :func:`driftrec.models.foldin.fold_in_many`). ``Zz`` is
    ``Yz (YᵀY + λI)⁻¹`` (:func:`driftrec.models.foldin.fold_in_basis`; its last row is zero too), the
    per-version part of the low-rank fold-in, or None where that matrix is singular; ``YZz``
    is ``[Yz | Zz]`` side by side, so the fold-in gathers a user's rows of both at once.
    """

    version: str
    ids: tuple[str, ...]
    index: dict[str, int]
    Y: npt.NDArray[np.float32]
    Yz: npt.NDArray[np.float64] = field(repr=False)
    YtY: npt.NDArray[np.float64] = field(repr=False)
    alpha: float
    regularization: float
    Zz: npt.NDArray[np.float64] | None = field(default=None, repr=False)
    YZz: npt.NDArray[np.float64] | None = field(default=None, repr=False)

    @property
    def factors(self) -> int:
        return int(self.Y.shape[1])


def _npy(a: npt.ArrayLike) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _array(raw: bytes | None, part: str, version: str) -> np.ndarray:
    if raw is None:
        raise ModelError(f"model {version!r}: part {part!r} is missing")
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ModelError(f"model {version!r}: part {part!r} is not a .npy array: {exc}") from None


def pack_factors(ids: Sequence[str], Y: npt.ArrayLike, *, alpha: float,
                 regularization: float) -> dict[str, bytes]:
    """The parts a trainer writes for one version (``item_ids``, ``item_factors``, ...)."""
    arr = np.ascontiguousarray(Y, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(ids):
        raise ModelError("item factors must be (len(ids), factors)")
    if any("\n" in i for i in ids):
        raise ModelError("item ids must not contain newlines")
    return {"item_ids": "\n".join(ids).encode(), "item_factors": _npy(arr),
            "alpha": _npy([float(alpha)]), "regularization": _npy([float(regularization)])}


def unpack_factors(version: str, parts: Mapping[str, bytes | None], default_reg: float) -> PublishedFactors:
    """Decode and check one version's parts; :class:`ModelError` when they do not fit together."""
    raw_ids = parts.get("item_ids")
    if raw_ids is None:
        raise ModelError(f"model {version!r}: part 'item_ids' is missing")
    if raw_ids.startswith(b"\x93NUMPY"):
        names = tuple(str(x) for x in _array(raw_ids, "item_ids", version).ravel())
    else:
        try:
            text = raw_ids.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"model {version!r}: item_ids is not UTF-8") from None
        names = tuple(text.split("\n")) if text else ()
    Y = _array(parts.get("item_factors"), "item_factors", version)
    if Y.dtype.kind not in "fiu" or Y.ndim != 2 or Y.shape[0] != len(names) or Y.shape[1] < 1:
        raise ModelError(f"model {version!r}: item_factors {Y.dtype} {Y.shape} do not fit {len(names)} ids")
    Y = np.ascontiguousarray(Y, dtype=np.float32)
    alpha, reg = 1.0, default_reg
    if parts.get("alpha") is not None:
        alpha = float(_array(parts["alpha"], "alpha", version).ravel()[0])
    if parts.get("regularization") is not None:
        reg = float(_array(parts["regularization"], "regularization", version).ravel()[0])
    if not np.all(np.isfinite(Y)) or not (alpha > 0 and reg >= 0):
        raise ModelError(f"model {version!r}: non-finite factors or bad alpha/regularization")
    Y64 = Y.astype(np.float64)
    Yz = np.vstack([Y64, np.zeros((1, Y.shape[1]))])
    YtY = Y64.T @ Y64
    Zz = fold_in_basis(Yz, YtY, reg)
    YZz = None if Zz is None else np.ascontiguousarray(np.hstack([Yz, Zz]))
    return PublishedFactors(version, names, {name: i for i, name in enumerate(names)}, Y, Yz,
                            YtY, alpha, reg, Zz, YZz)


class FactorCache:
    """Holds the live version's factors in the worker process; reloads when the version changes.

    A version that cannot be decoded is logged and retried after a while; meanwhile the worker
    keeps using what it had (the previous version, or ISGD when there was none).
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, default_reg: float) -> None:
        self.client = client
        self.keys = keys
        self.default_reg = default_reg
        self.model: PublishedFactors | None = None
        self.version: str | None = None  # the version the last load saw in P:{m}:current
        self._bad: dict[str, float] = {}
        self.reloads = 0

    async def refresh(self, version: str | None) -> None:
        """Make ``self.model`` follow ``version`` (what ``P:{m}:current`` holds now)."""
        self.version = version
        if version is None:
            if self.model is not None:
                metrics.MODEL_VERSION.clear()
            self.model = None  # unpublished: back to ISGD
            return
        if self.model is not None and self.model.version == version:
            return
        failed_at = self._bad.get(version)
        if failed_at is not None and time.monotonic() - failed_at < _RETRY_BAD_VERSION_S:
            return
        try:
            # Parts over one Redis value are stored in chunks (driftrec/modelblobs.py).
            parts = await modelblobs.aread_parts(self.client, PARTS, lambda p: self.keys.model_blob(version, p))
            self.model = unpack_factors(version, parts, self.default_reg)
        except ModelError as exc:
            self._bad[version] = time.monotonic()
            logger.error("cannot use published model: %s; keeping %s", exc,
                         self.model.version if self.model else "ISGD")
            return
        self._bad.pop(version, None)
        self.reloads += 1
        metrics.MODEL_VERSION.clear()  # one series: the version folded against now
        metrics.MODEL_VERSION.labels(version=version).set(1)
        logger.info("item factors of model %s loaded: %d items x %d factors", version,
                    len(self.model.ids), self.model.factors)

    @property
    def stale(self) -> bool:
        """True when the cached model is not the version last seen (a reload failed)."""
        if self.version is None:
            return self.model is not None
        return self.model is None or self.model.version != self.version
