"""The reader's experiments: definitions held in process, variant assignment and ranking per request.

Definitions come from ``Settings.experiments_file`` and from ``P:{x}:experiments`` (the admin
endpoint writes it); a background task re-reads the hash every ``experiments_refresh_s``, so a
request never reads Redis for them. With no experiment defined, a request pays one attribute
read (``registry.active`` is an empty tuple). A variant with a pinned ``model_version`` ranks
with its own :class:`~driftrec.online.recommender.Recommender` over a second model cache; when
that version is gone from Redis (or fails to load) the variant's shoppers get the default
strategy and the answer says so (``experiment.fallback``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from driftrec.experiments import (
    Experiment,
    Variant,
    counts_key,
    decode_stored,
    definitions_key,
    shoppers_key,
)
from driftrec.models.blend import BlendWeights, Scored
from driftrec.models.experiments import assign, interleave_seed, team_draft
from driftrec.online.model_cache import ModelCache, PublishedModel
from driftrec.online.recommender import Answer, Recommender
from driftrec.online.store import ReaderStore

__all__ = ["ExperimentRegistry", "Live", "Pick", "Ranked", "PinnedModels"]

logger = logging.getLogger(__name__)

ModelCacheFactory = Callable[[], ModelCache]


@dataclass(frozen=True, slots=True)
class Live:
    """One experiment compiled for the request path: weights resolved, shares in a tuple."""

    exp: Experiment
    weights: tuple[BlendWeights, ...]
    shares: tuple[float, ...]
    counts_key: str


@dataclass(frozen=True, slots=True)
class Pick:
    """The experiment a request falls in and, for an A/B split, its variant's index."""

    live: Live
    index: int  # -1: interleaved (both variants)


@dataclass(frozen=True, slots=True)
class Ranked:
    """An experiment's answer and what the body and the served record say about it."""

    answer: Answer
    info: dict[str, Any]
    strategy: str
    fields: tuple[tuple[str, str], ...]
    commands: tuple[tuple[Any, ...], ...]


class PinnedModels:
    """What a variant's :class:`Recommender` sees as its model cache: always the pinned version."""

    def __init__(self, cache: ModelCache, version: str) -> None:
        self.cache = cache
        self.pinned = version

    @property
    def version(self) -> str | None:
        return self.cache.version

    def observe(self, version: str | None) -> PublishedModel | None:  # noqa: ARG002 - the live version is ignored
        return self.cache.model


@dataclass
class _Pinned:
    cache: ModelCache
    rec: Recommender
    present: bool = True


class ExperimentRegistry:
    """Experiments known to this reader process and the models their variants pin.

    Parameters
    ----------
    store : ReaderStore
        Redis (definitions, model-version checks).
    prefix : str
        The key prefix (``Settings.key_prefix``).
    rec : Recommender
        The reader's recommender (live model, configured weights).
    file_experiments : sequence of Experiment
        Definitions from the settings' file; the admin endpoint cannot replace or delete them.
    model_cache : callable
        Builds an empty :class:`ModelCache` for a pinned version.
    interval_s : float
        Refresh period of the stored definitions.
    """

    def __init__(self, store: ReaderStore, prefix: str, rec: Recommender, *,
                 file_experiments: Sequence[Experiment] = (), model_cache: ModelCacheFactory | None = None,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.prefix = prefix
        self.rec = rec
        self.file = {e.name: e for e in file_experiments}
        self.stored: dict[str, Experiment] = {}
        self.model_cache = model_cache
        self.interval_s = interval_s
        self.clock = clock
        self.pinned: dict[str, _Pinned] = {}
        #: Experiments not yet stopped, earliest start first; empty costs a request nothing.
        self.active: tuple[Live, ...] = ()
        self.refreshed_at: float | None = None
        self._running = False
        self._compile()

    # --- definitions ----------------------------------------------------------------------
    @property
    def key(self) -> str:
        return definitions_key(self.prefix)

    def definitions(self) -> dict[str, Experiment]:
        """Every experiment this process knows, file ones over stored ones of the same name."""
        return {**self.stored, **self.file}

    def source(self, name: str) -> str:
        return "file" if name in self.file else "api"

    def _compile(self) -> None:
        now = self.clock()
        base = self.rec.weights
        live = [Live(e, tuple(v.blend_weights(base) for v in e.variants), e.shares, counts_key(self.prefix, e.name))
                for e in self.definitions().values() if e.stop_ts > now]
        self.active = tuple(sorted(live, key=lambda x: (x.exp.start_ts, x.exp.name)))

    async def refresh(self) -> None:
        """Re-read the stored definitions and check the pinned model versions (raises Redis errors)."""
        (rows,) = await self.store.execute([["HGETALL", self.key]])
        flat = list(rows) if isinstance(rows, list) else [x for kv in dict(rows).items() for x in kv]
        self.stored = {e.name: e for e in decode_stored(dict(zip(flat[::2], flat[1::2], strict=True)))}
        await self._check_models()
        self._compile()
        self.refreshed_at = time.time()

    async def _check_models(self) -> None:
        now = self.clock()
        versions = sorted({v for e in self.definitions().values() if e.stop_ts > now for v in e.model_versions})
        for gone in set(self.pinned) - set(versions):
            del self.pinned[gone]
        if not versions or self.model_cache is None:
            return
        keys = self.store.keys
        exists = await self.store.execute([["EXISTS", keys.model_blob(v, "item_ids")] for v in versions])
        for version, ok in zip(versions, exists, strict=True):
            state = self.pinned.get(version)
            if not int(ok):
                if state is None or state.present:
                    logger.warning("model %s pinned by an experiment is not in Redis: its variant serves the "
                                   "default strategy", version)
                # Drop the arrays: a deleted version must not keep being served from memory.
                self.pinned[version] = _Pinned(self.model_cache(), self.rec, present=False)
                continue
            if state is None or not state.present:
                cache = self.model_cache()
                models = cast(ModelCache, PinnedModels(cache, version))
                rec = Recommender(self.rec.settings, self.store, models, self.rec.snapshot, self.rec.weights,
                                  self.rec.catalogue)
                state = self.pinned[version] = _Pinned(cache, rec)
            if state.cache.version != version:
                state.cache.observe(version)  # a background load; retried after a failure

    async def run(self) -> None:
        """Refresh every ``interval_s`` until :meth:`stop`; a failed refresh keeps what was known."""
        self._running = True
        failing = False
        while self._running:
            try:
                await self.refresh()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("experiments not refreshed (%s: %s); keeping the last known", type(exc).__name__, exc)
                failing = True
                self._compile()  # start and stop times still move on
            await asyncio.sleep(self.interval_s)

    def stop(self) -> None:
        self._running = False

    # --- the request path -----------------------------------------------------------------
    def pick(self, user: str) -> Pick | None:
        """The running experiment ``user`` is in, and their variant (None: no experiment now)."""
        now = self.clock()
        for live in self.active:
            if live.exp.running(now):
                if live.exp.method == "interleave":
                    return Pick(live, -1)
                return Pick(live, assign(live.exp.name, user, live.shares))
        return None

    def _pinned_rec(self, v: Variant) -> tuple[Recommender | None, str | None]:
        """The recommender of ``v``'s model, or None and why the default strategy serves instead."""
        if v.model_version is None:
            return self.rec, None
        state = self.pinned.get(v.model_version)
        if state is None or not state.present:
            return None, f"model {v.model_version} is not available: default strategy served"
        if state.cache.version != v.model_version:
            return None, f"model {v.model_version} is not loaded (yet): default strategy served"
        return state.rec, None

    async def rank(self, pick: Pick, user: str, n: int, request_id: str, *, exclude: Sequence[str],
                   category: str | None, context: Sequence[str]) -> Ranked:
        """Rank ``user``'s answer as ``pick`` says; the body's ``experiment`` and the record's fields."""
        live, exp = pick.live, pick.live.exp
        if pick.index < 0:
            return await self._interleave(live, user, n, request_id, exclude=exclude, category=category,
                                          context=context)
        variant = exp.variants[pick.index]
        rec, fallback = self._pinned_rec(variant)
        info: dict[str, Any] = {"name": exp.name, "variant": variant.name, "method": exp.method}
        fields = [("#experiment", exp.name), ("#variant", variant.name)]
        # The answer count, and the shopper among the variant's: the split's unit is the shopper.
        commands: list[tuple[Any, ...]] = [("HINCRBY", live.counts_key, f"answers|{variant.name}", 1),
                                           ("SADD", shoppers_key(self.prefix, exp.name, variant.name), user)]
        fields.append(("#user", user))
        length = variant.n or n
        if rec is None:
            answer = await self.rec.for_user(user, n, exclude=exclude, category=category, context=context)
            info["fallback"] = fallback
            fields.append(("#fallback", "1"))
            commands.append(("HINCRBY", live.counts_key, f"fallback|{variant.name}", 1))
            strategy = "blend"
        else:
            answer = await rec.for_user(user, length, exclude=exclude, category=category,
                                        weights=live.weights[pick.index], context=context)
            strategy = variant.label
        return Ranked(answer, info, strategy, tuple(fields), tuple(commands))

    async def _interleave(self, live: Live, user: str, n: int, request_id: str, *, exclude: Sequence[str],
                          category: str | None, context: Sequence[str]) -> Ranked:
        exp = live.exp
        a, b = exp.variants
        rec, fallback = self._pinned_rec(a)  # interleaved variants share their model version
        info: dict[str, Any] = {"name": exp.name, "variant": "interleaved", "method": exp.method}
        if rec is None:
            answer = await self.rec.for_user(user, n, exclude=exclude, category=category, context=context)
            info["fallback"] = fallback
            return Ranked(answer, info, "blend", (("#experiment", exp.name), ("#variant", "fallback"),
                                                   ("#fallback", "1")),
                          (("HINCRBY", live.counts_key, "fallback|interleaved", 1),))
        length = a.n or n
        # Both rankings from one read of the shopper's state and the sources: two blends.
        ra, rb = await rec.for_user_ranked(user, length, live.weights, exclude=exclude, category=category,
                                           context=context)
        if ra.degraded or rb.degraded:
            info["fallback"] = "degraded: no ranking from Redis"
            return Ranked(ra if ra.degraded else rb, info, "blend", (), ())
        by_item: tuple[dict[str, Scored], dict[str, Scored]] = ({x.item: x for x in ra.items},
                                                                 {x.item: x for x in rb.items})
        merged = team_draft([x.item for x in ra.items], [x.item for x in rb.items], length,
                            interleave_seed(exp.name, user, request_id))
        items = [by_item[team][item] for item, team in merged]
        names = (a.name, b.name)
        teams = orjson.dumps({item: names[team] for item, team in merged}).decode()
        first = names[merged[0][1]] if merged else None
        commands: list[tuple[Any, ...]] = [("HINCRBY", live.counts_key, "answers|interleaved", 1)]
        if first is not None:
            # Which team picked first: a fair coin per answer, the split this method can check.
            commands.append(("HINCRBY", live.counts_key, f"first|{first}", 1))
        answer = Answer(items, ra.model_version, False)
        return Ranked(answer, info, "interleave", (("#experiment", exp.name), ("#variant", "interleaved"),
                                                   ("#teams", teams), ("#user", user)), tuple(commands))
