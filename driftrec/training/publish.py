"""Publishing a trained model as a new Redis version: parts first, checked, then one atomic switch.

The format is :mod:`driftrec.modelformat` (spec: ``docs/redis-keys.md``), which the worker
and the reader decode too; every part is a STRING under ``P:{m}:v:<version>:<part>``, and the
``manifest`` part lists the parts, so cleanup deletes exactly them. Two more keys:

* ``P:{m}:versions`` HASH version -> ``live`` or the Unix time it stopped being live (or was
  written without becoming live); versions older than ``model_grace_s`` are deleted. It is a
  HASH, not a ZSET, on purpose: the worker's landmark rescale multiplies every ZSET under the
  prefix.
* ``P:{m}:gate_log`` LIST of JSON gate records, newest first (see :mod:`driftrec.training.gate`).

A publish writes every part, reads them back and decodes them with the reader's and the worker's
own loaders, and only then switches ``P:{m}:current`` in a MULTI/EXEC guarded by WATCH, so a
reader sees either the old version or the complete new one, and two trainers cannot overwrite
each other's gate decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis

from driftrec import modelblobs
from driftrec.errors import ModelError
from driftrec.keys import Keys
from driftrec.modelformat import (
    MANIFEST,
    MODEL_PARTS,
    npy,
    pack_version,
    tf_layer_count,
    tf_part_names,
)
from driftrec.online.model_cache import PublishedModel, build_model
from driftrec.streams.published import unpack_factors

if TYPE_CHECKING:
    from driftrec.models.batch.base import BatchModel

# MANIFEST, npy and pack_version are driftrec.modelformat's, kept importable as the trainer's API.
__all__ = [
    "MANIFEST", "GATE_LOG_MAX", "PUBLISHABLE", "versions_key", "gate_log_key", "npy",
    "pack_version", "pack_models", "new_version_id", "check_parts", "Publisher",
]

logger = logging.getLogger(__name__)

#: Gate records kept in ``P:{m}:gate_log``.
GATE_LOG_MAX = 1000
#: The batch models the online format carries: ALS (item factors, user factors, fold-in
#: constants) and the TF next-item network. The others have no published form.
PUBLISHABLE = frozenset({"als", "tf"})


def versions_key(keys: Keys) -> str:
    """HASH version -> ``live`` | Unix time it became inactive (cleanup bookkeeping)."""
    return f"{keys.prefix}:{{m}}:versions"


def gate_log_key(keys: Keys) -> str:
    """LIST of JSON gate records, newest first, at most :data:`GATE_LOG_MAX`."""
    return f"{keys.prefix}:{{m}}:gate_log"


def pack_models(models: Mapping[str, BatchModel], item_ids: Sequence[str], *,
                user_ids: Sequence[str] | None = None,
                manifest: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The parts of one version from fitted models (``als`` required, ``tf`` optional).

    Raises
    ------
    ModelError
        For a model without a published form, or without ALS (the item factors are mandatory).
    """
    extra = sorted(set(models) - PUBLISHABLE)
    if extra:
        raise ModelError(f"model(s) {extra} have no published form: the online path reads ALS "
                         "factors and the TF next-item network only (save them with --out)")
    if "als" not in models:
        raise ModelError("a published version needs the als model: it supplies item_factors, "
                         "which the worker and the reader fold users into")
    tf = models.get("tf")
    return pack_version(item_ids, models["als"].export(), user_ids=user_ids,
                        tf=tf.export() if tf is not None else None, manifest=manifest)


def new_version_id(parts: Mapping[str, bytes], now: float | None = None) -> str:
    """``<UTC time>-<content hash>``: sorts by time, and the same content gets the same hash."""
    h = hashlib.sha256()
    for name in sorted(p for p in parts if p != MANIFEST):
        h.update(name.encode() + b"\0" + hashlib.sha256(parts[name]).digest())
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{h.hexdigest()[:10]}"


def check_parts(version: str, parts: Mapping[str, bytes | None], *, default_reg: float,
                pool_size: int) -> PublishedModel:
    """Decode ``parts`` with the reader's and the worker's loaders; :class:`ModelError` if either refuses."""
    tf_parts = {k: v for k, v in parts.items() if k.startswith("tf_layer")}
    model = build_model(version, parts, tf_parts, default_reg=default_reg, pool_size=pool_size)
    unpack_factors(version, parts, default_reg)
    raw = parts.get(MANIFEST)
    if raw is not None:
        try:
            json.loads(raw)
        except ValueError as exc:
            raise ModelError(f"model {version!r}: manifest is not JSON: {exc}") from None
    return model


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


class Publisher:
    """Writes, switches, loads and garbage-collects published versions (sync Redis client).

    Parameters
    ----------
    client : redis.Redis
        A client that returns bytes (``decode_responses=False``).
    keys : Keys
        Key names under the deployment's prefix.
    grace_s : float
        How long a version stays after it stopped being live (``Settings.model_grace_s``).
    default_reg, pool_size : float, int
        What the reader builds a model with (``fold_in_regularization``,
        ``reader_similar_users_pool``), so a check here is the reader's check.
    """

    def __init__(self, client: redis.Redis, keys: Keys, *, grace_s: float, default_reg: float,
                 pool_size: int, clock: Callable[[], float] = time.time,
                 chunk_bytes: int = modelblobs.CHUNK_BYTES) -> None:
        self.client = client
        self.keys = keys
        self.chunk_bytes = chunk_bytes
        self.grace_s = grace_s
        self.default_reg = default_reg
        self.pool_size = pool_size
        self.clock = clock

    # --- reading ------------------------------------------------------------------------
    def live_version(self) -> str | None:
        return _text(self.client.get(self.keys.model_current))

    def read_parts(self, version: str, names: Sequence[str]) -> dict[str, bytes | None]:
        """Parts by name (None when missing), chunked ones joined (:mod:`driftrec.modelblobs`)."""
        return modelblobs.read_parts(self.client, names, lambda p: self.keys.model_blob(version, p))

    def read_version(self, version: str) -> dict[str, bytes | None]:
        """Every part of a version: the reader's, the TF layers it names, and the manifest."""
        parts = self.read_parts(version, [*MODEL_PARTS, MANIFEST])
        try:
            n_layers = tf_layer_count(parts.get("tf_n_layers"))
        except ModelError as exc:
            raise ModelError(f"model {version!r}: {exc}") from None
        if n_layers is not None:
            parts.update(self.read_parts(version, tf_part_names(n_layers)))
        return parts

    def load(self, version: str) -> PublishedModel:
        """A version as the reader would build it; :class:`ModelError` when unknown or corrupt."""
        parts = self.read_version(version)
        if all(v is None for v in parts.values()):
            raise ModelError(f"unknown model version {version!r}")
        return self.check(version, parts)

    def manifest(self, version: str) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.model_blob(version, MANIFEST))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def check(self, version: str, parts: Mapping[str, bytes | None]) -> PublishedModel:
        return check_parts(version, parts, default_reg=self.default_reg, pool_size=self.pool_size)

    # --- writing ------------------------------------------------------------------------
    def write(self, version: str, parts: Mapping[str, bytes]) -> None:
        """Write a version's parts (not yet live), read them back and check them.

        Raises
        ------
        ModelError
            When the parts do not decode, the version exists already, or what Redis returns
            differs from what was written; the partial version is deleted again.
        """
        self.check(version, parts)
        if MANIFEST not in parts:
            raise ModelError(f"model {version!r}: the manifest part is missing")
        if self.client.exists(self.keys.model_blob(version, MANIFEST)):
            raise ModelError(f"model version {version!r} exists already")
        # Registered before the first part: a trainer that dies mid-write leaves a version that
        # cleanup finds and deletes after the grace period.
        self.client.hset(versions_key(self.keys), version, repr(self.clock()))
        names = [MANIFEST, *sorted(p for p in parts if p != MANIFEST)]
        try:
            for name in names:  # manifest first: if it is missing, nothing else was written
                # A part over chunk_bytes goes in pieces (Redis refuses values over 512 MB by
                # default), one pipeline per part so a large model is not buffered twice.
                key = self.keys.model_blob(version, name)
                head, chunks = modelblobs.split(parts[name], self.chunk_bytes)
                pipe = self.client.pipeline(transaction=False)
                for i, chunk in enumerate(chunks):
                    pipe.set(modelblobs.chunk_key(key, i), chunk)
                pipe.set(key, head)  # the head last: a reader never finds a head without its chunks
                pipe.execute()
            back = self.read_parts(version, names)
            wrong = [n for n in names if back[n] != parts[n]]
            if wrong:
                raise ModelError(f"model {version!r}: Redis returned other bytes for parts {wrong}")
            self.check(version, back)
        except (ModelError, redis.RedisError):
            self.delete(version)
            raise

    def switch(self, version: str, expected_live: str | None) -> None:
        """Make ``version`` live, if the live version is still ``expected_live`` (WATCH/MULTI)."""
        cur = self.keys.model_current
        vkey = versions_key(self.keys)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(cur)
                live = _text(pipe.get(cur))
                if live != expected_live:
                    raise ModelError(f"live model changed from {expected_live!r} to {live!r} during "
                                     f"training; {version!r} not published")
                pipe.multi()
                pipe.set(cur, version)
                pipe.hset(vkey, version, "live")
                if live is not None and live != version:
                    pipe.hset(vkey, live, repr(self.clock()))
                pipe.execute()
            except redis.WatchError:
                raise ModelError(f"another publish switched the live model; {version!r} not published") from None
        logger.info("model %s is live (was %s)", version, expected_live)

    def publish(self, parts: Mapping[str, bytes], expected_live: str | None,
                version: str | None = None) -> str:
        """Write, check and switch to a new version; returns its id. The live one stays on error."""
        version = version or new_version_id(parts, self.clock())
        self.write(version, parts)
        try:
            self.switch(version, expected_live)
        except ModelError:
            self.delete(version)
            raise
        return version

    def activate(self, version: str) -> str | None:
        """Switch back (or forward) to an existing version after checking it; returns the old one."""
        self.load(version)
        live = self.live_version()
        if live != version:
            self.switch(version, live)
        return live

    # --- garbage collection -----------------------------------------------------------------
    def delete(self, version: str) -> None:
        """Remove every part of a version (never the live one)."""
        if version == self.live_version():
            raise ModelError(f"model {version!r} is live; switch to another version first")
        meta = self.manifest(version) or {}
        names = list(meta.get("parts", [])) if isinstance(meta.get("parts"), list) else []
        keys = [self.keys.model_blob(version, n) for n in {*names, *MODEL_PARTS, MANIFEST}]
        pattern = self.keys.model_blob(version, "*")
        keys += [k for k in map(_text, self.client.scan_iter(match=pattern, count=1000))
                 if k is not None and k not in keys]
        if keys:
            self.client.delete(*keys)
        self.client.hdel(versions_key(self.keys), version)

    def cleanup(self) -> list[str]:
        """Delete the versions that stopped being live more than ``grace_s`` ago."""
        now = self.clock()
        live = self.live_version()
        removed: list[str] = []
        for raw_v, raw_since in self.client.hgetall(versions_key(self.keys)).items():
            version, since = _text(raw_v) or "", _text(raw_since) or ""
            if version == live:
                continue
            if since == "live":  # switched away from by a tool that did not stamp it: start now
                self.client.hset(versions_key(self.keys), version, repr(now))
                continue
            try:
                inactive_since = float(since)
            except ValueError:
                inactive_since = now
            if now - inactive_since >= self.grace_s:
                self.delete(version)
                removed.append(version)
        if removed:
            logger.info("deleted %d model versions past their grace period: %s", len(removed), removed)
        return removed

    # --- gate log ---------------------------------------------------------------------------
    def log_gate(self, record: Mapping[str, Any]) -> None:
        """Keep one gate record (newest first, capped at :data:`GATE_LOG_MAX`)."""
        key = gate_log_key(self.keys)
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(record, sort_keys=True, default=str))
        pipe.ltrim(key, 0, GATE_LOG_MAX - 1)
        pipe.execute()

    def gate_log(self, n: int = 20) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.client.lrange(gate_log_key(self.keys), 0, n - 1)]
