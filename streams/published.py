"""The published batch model as the worker sees it: item factors cached per version, reloaded on change.

Format (the contract with the trainer, written down in ``docs/redis-keys.md``)::

    P:{m}:current                 STRING  live version id
    P:{m}:v:<version>:item_factors STRING  little-endian float32, row-major (n_items, factors)
    P:{m}:v:<version>:item_ids     STRING  UTF-8 item ids joined by "\\n", in row order
    P:{m}:v:<version>:meta         HASH    factors, n_items, alpha, regularization, kind
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from driftrec.errors import ModelError
from driftrec.keys import Keys

__all__ = ["PublishedFactors", "FactorCache", "pack_factors", "unpack_factors", "ISGD_MODEL"]

logger = logging.getLogger(__name__)

#: Model tag of vectors learnt online by ISGD (no published model); never a published version.
ISGD_MODEL = "isgd"
_RETRY_BAD_VERSION_S = 30.0


@dataclass(frozen=True)
class PublishedFactors:
    """One published version's item factors, ready for fold-in.

    ``Yz`` is ``Y`` in float64 with one zero row appended: padded gathers index it with
    ``n_items`` and pick up nothing (see :func:`streams.vectors.fold_in_many`).
    """

    version: str
    ids: tuple[str, ...]
    index: dict[str, int]
    Y: npt.NDArray[np.float32]
    Yz: npt.NDArray[np.float64] = field(repr=False)
    YtY: npt.NDArray[np.float64] = field(repr=False)
    alpha: float
    regularization: float

    @property
    def factors(self) -> int:
        return int(self.Y.shape[1])


def pack_factors(ids: Sequence[str], Y: npt.ArrayLike, *, alpha: float, regularization: float,
                 kind: str = "als") -> dict[str, bytes | dict[str, str]]:
    """The parts a trainer writes for one version: ``{"item_factors", "item_ids", "meta"}``."""
    arr = np.ascontiguousarray(Y, dtype="<f4")
    if arr.ndim != 2 or arr.shape[0] != len(ids):
        raise ModelError("item factors must be (len(ids), factors)")
    if any("\n" in i for i in ids):
        raise ModelError("item ids must not contain newlines")
    meta = {"factors": str(arr.shape[1]), "n_items": str(arr.shape[0]), "alpha": repr(float(alpha)),
            "regularization": repr(float(regularization)), "kind": kind}
    return {"item_factors": arr.tobytes(), "item_ids": "\n".join(ids).encode(), "meta": meta}


def unpack_factors(version: str, factors: bytes | None, ids: bytes | None,
                   meta: dict[bytes, bytes], default_reg: float) -> PublishedFactors:
    """Decode and check one version's parts; :class:`ModelError` when they do not fit together."""
    if factors is None or ids is None or not meta:
        raise ModelError(f"model {version!r}: item_factors, item_ids or meta is missing")
    m = {k.decode(): v.decode() for k, v in meta.items()}
    try:
        k, n = int(m["factors"]), int(m["n_items"])
        alpha = float(m.get("alpha", "1.0"))
        reg = float(m.get("regularization", repr(default_reg)))
    except (KeyError, ValueError) as exc:
        raise ModelError(f"model {version!r}: bad meta {m!r}") from exc
    names = tuple(ids.decode().split("\n")) if n else ()
    if k < 1 or len(factors) != 4 * n * k or len(names) != n:
        raise ModelError(f"model {version!r}: {len(factors)} factor bytes and {len(names)} ids "
                         f"do not fit {n} items x {k} factors")
    Y = np.frombuffer(factors, dtype="<f4").reshape(n, k).astype(np.float32)
    if not np.all(np.isfinite(Y)) or not (alpha > 0 and reg >= 0):
        raise ModelError(f"model {version!r}: non-finite factors or bad alpha/regularization")
    Y64 = Y.astype(np.float64)
    Yz = np.vstack([Y64, np.zeros((1, k))])
    return PublishedFactors(version, names, {name: i for i, name in enumerate(names)}, Y, Yz,
                            Y64.T @ Y64, alpha, reg)


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
            self.model = None  # unpublished: back to ISGD
            return
        if self.model is not None and self.model.version == version:
            return
        failed_at = self._bad.get(version)
        if failed_at is not None and time.monotonic() - failed_at < _RETRY_BAD_VERSION_S:
            return
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.get(k.model_blob(version, "item_factors"))
        pipe.get(k.model_blob(version, "item_ids"))
        pipe.hgetall(k.model_blob(version, "meta"))
        factors, ids, meta = await pipe.execute()
        try:
            self.model = unpack_factors(version, factors, ids, meta, self.default_reg)
        except ModelError as exc:
            self._bad[version] = time.monotonic()
            logger.error("cannot use published model: %s; keeping %s", exc,
                         self.model.version if self.model else "ISGD")
            return
        self._bad.pop(version, None)
        self.reloads += 1
        logger.info("item factors of model %s loaded: %d items x %d factors", version,
                    len(self.model.ids), self.model.factors)

    @property
    def stale(self) -> bool:
        """True when the cached model is not the version last seen (a reload failed)."""
        if self.version is None:
            return self.model is not None
        return self.model is None or self.model.version != self.version
