"""The published batch model as the worker sees it: item factors cached per version, reloaded on change.

The worker reads the version named by ``P:{m}:current`` and, of it, the four fold-in parts
(:data:`driftrec.modelformat.FACTOR_PARTS`: ``item_ids``, ``item_factors``, ``alpha``,
``regularization``), decoded by :func:`driftrec.modelformat.decode_item_factors`; the format is
:mod:`driftrec.modelformat`, its spec ``docs/redis-keys.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from driftrec import modelblobs, modelformat
from driftrec.errors import ModelError
from driftrec.keys import Keys
from driftrec.models.foldin import fold_in_basis
from driftrec.streams import metrics

__all__ = ["PublishedFactors", "FactorCache", "unpack_factors", "ISGD_MODEL"]

logger = logging.getLogger(__name__)

#: Model tag of vectors learnt online by ISGD (no published model); never a published version.
ISGD_MODEL = "isgd"
_RETRY_BAD_VERSION_S = 30.0


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


def unpack_factors(version: str, parts: Mapping[str, bytes | None], default_reg: float) -> PublishedFactors:
    """Decode and check one version's fold-in parts and precompute what the fold-in reuses;
    :class:`ModelError` when they do not fit together."""
    try:
        factors = modelformat.decode_item_factors(parts, default_reg=default_reg)
    except ModelError as exc:
        raise ModelError(f"model {version!r}: {exc}") from None
    names, Y, alpha, reg = tuple(factors.ids), factors.Y, factors.alpha, factors.regularization
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
            parts = await modelblobs.aread_parts(self.client, modelformat.FACTOR_PARTS, lambda p: self.keys.model_blob(version, p))
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
