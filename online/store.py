"""Read-only access to the worker's Redis state, one pipeline per round trip.

A recommendation costs two round trips: one for everything keyed by the user and the globals
(:meth:`ReaderStore.read_user`), one for what depends on the first answer — the neighbours of
the user's recent items, the items of similar users and the session index of the latest
session's items (:meth:`ReaderStore.read_expansion`) — and, with the session_knn source on, a
third for the click logs of the shoppers that index names (:meth:`ReaderStore.click_logs`).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from driftrec import modelblobs
from driftrec.keys import Keys
from driftrec.models.decay import read_factor
from driftrec.online.resp import RespPool
from driftrec.userstate import (
    ENTRY_BYTES,
    decode_fields,
    newest,
    strongest,
    unpack_clicks,
    unpack_vector,
)

__all__ = ["ReaderStore", "UserReads", "Meta", "Pairs", "pairs"]

logger = logging.getLogger(__name__)

Pairs = list[tuple[str, float]]
#: Replies of :meth:`ReaderStore.read_user` that hold binary values: the user HASH, the vector.
_USER_BINARY = frozenset({2, 3})

#: The one reply of :meth:`ReaderStore.click_logs`' ``MGET``: binary values.
_FIRST = frozenset({0})

#: Popularity entries per snapshot round trip: about 1 ms of Redis each.
SNAPSHOT_PAGE = 1000


class RescaleInProgress(RuntimeError):
    """The decay landmark moved while a multi-read was in progress (retry later)."""


@dataclass(frozen=True, slots=True)
class Meta:
    """The forward-decay landmark and the stream's event-time clock (``now`` of every read)."""

    landmark: float
    last_event_time: float

    @classmethod
    def parse(cls, raw: Sequence[str | None]) -> Meta:
        landmark = _float(raw[0])
        last = _float(raw[1]) if len(raw) > 1 else None
        if landmark is None:
            landmark = last if last is not None else 0.0
        return cls(landmark, last if last is not None else landmark)

    @property
    def now(self) -> float:
        """Reads happen at the stream's latest event time, like the evaluation's: decay is in
        event time, so a replayed month reads the way it read live."""
        return self.last_event_time

    def factor(self, rate: float) -> float:
        """``exp(−λ (now − L)) / S``: multiplies a stored forward score (whole units of
        1/:data:`~driftrec.models.decay.SCORE_SCALE`) into its value at ``now``."""
        return read_factor(rate, self.landmark, self.now)


def pairs(flat: Sequence[Any]) -> Pairs:
    """A raw WITHSCORES reply as pairs: RESP2's ``[member, score, member, score, ...]`` with the
    scores as text, or RESP3's ``[[member, score], ...]`` with the scores already floats.

    Sorted-set reads go through ``execute_command`` with no response callback and are paired
    here: redis-py's own callbacks cost several times more per member on the hot path.
    """
    if flat and isinstance(flat[0], list):
        return [(m, s) for m, s in flat]
    it = iter(flat)
    return [(m, float(s)) for m, s in zip(it, it, strict=False)]


def user_state(reply: Any) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`driftrec.userstate.decode_fields` of an ``HGETALL`` reply, with a fast path for
    the raw pool's RESP3 reply (a dict of ``str``): fields are already text and the values are
    re-encoded in one comprehension; anything else (a flat RESP2 list, a value of the wrong
    size) goes through ``decode_fields`` itself."""
    if not isinstance(reply, dict) or not reply:
        return decode_fields(reply)
    raws = list(reply.values())
    if type(raws[0]) is bytes:  # the raw pool's binary reply: fields are bytes too
        items = [f.decode("utf-8", "surrogateescape") for f in reply]
    else:
        try:
            raws = [v.encode("utf-8", "surrogateescape") for v in raws]
        except AttributeError:
            return decode_fields(reply)
        items = list(reply)
    if set(map(len, raws)) != {ENTRY_BYTES}:
        return decode_fields(reply)  # logs and skips the malformed entries
    vals = struct.unpack(f"<{len(items) * 2}d", b"".join(raws))
    times = {i: t for i, t in zip(items, vals[0::2], strict=True) if t == t}
    weights = {i: w for i, w in zip(items, vals[1::2], strict=True) if w == w}
    return times, weights


def _float(x: str | bytes | None) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


@dataclass(slots=True)
class UserReads:
    """The first round trip of a recommendation."""

    meta: Meta
    model_version: str | None
    history: Pairs  # item -> last event time, newest first
    weights: Pairs  # item -> stored forward-decayed weight, strongest first
    vec: bytes | None
    vec_version: str | None
    trending: Pairs  # stored forward scores, best first
    extra: dict[str, object] = field(default_factory=dict)


class ReaderStore:
    """What the reader reads; every method is one Redis round trip.

    ``client`` decodes replies to ``str`` (hiredis does it in C); ``blob_client`` returns bytes,
    for published model arrays. ``fast`` (a :class:`driftrec.online.resp.RespPool` on the same server),
    when given, carries the per-request pipelines; without it they go through ``client``.
    Either way every command is sent raw and its reply parsed here.
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, blob_client: aioredis.Redis | None = None,
                 fast: RespPool | None = None) -> None:
        self.client = client
        self.blob_client = blob_client if blob_client is not None else client
        self.fast = fast
        self.keys = keys

    async def _run(self, commands: list[list[Any]], binary: frozenset[int] = frozenset()) -> list[Any]:
        """Replies of ``commands``; with the raw pool those at the indexes in ``binary`` come as
        bytes (binary values), the others as text. The redis-py client decodes every reply."""
        if self.fast is not None:
            return await self.fast.execute(commands, binary)
        pipe = self.client.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(await pipe.execute())

    async def execute(self, commands: list[list[Any]]) -> list[Any]:
        """Send raw ``commands`` as one pipeline (writers off the request path use it)."""
        return await self._run(commands)

    async def ping(self) -> bool:
        (pong,) = await self._run([["PING"]])
        return bool(pong)

    async def aclose(self) -> None:
        if self.fast is not None:
            await self.fast.aclose()
        await self.client.aclose()
        if self.blob_client is not self.client:
            await self.blob_client.aclose()

    async def model_version(self) -> str | None:
        """The live model version (``P:{m}:current``), or None."""
        (version,) = await self._run([["GET", self.keys.model_current]])
        return str(version) if version is not None else None

    def _meta_cmd(self) -> list[Any]:
        return ["HMGET", self.keys.meta, "landmark", "last_event_time"]

    async def read_user(self, user: str, trend_key: str | None, trend_n: int) -> UserReads:
        """Meta, live model version, history, decayed weights, vector, trending: one pipeline.

        ``trend_key`` None leaves trending out (the caller has it from the snapshot). The
        vector's float32 bytes arrive as text decoded with ``surrogateescape`` (see
        :func:`driftrec.online.app.create_store`), which turns back into the exact bytes.
        """
        k = self.keys
        cmds = [self._meta_cmd(), ["GET", k.model_current], ["HGETALL", k.user_state(user)],
                ["GET", k.user_vec(user)]]
        if trend_key is not None:
            cmds.append(["ZREVRANGE", trend_key, 0, trend_n - 1, "WITHSCORES"])
        meta, version, state, vec, *trending = await self._run(cmds, _USER_BINARY)
        raw, vec_version = unpack_vector(vec)  # "<model>\0<float32 bytes>": driftrec/userstate.py
        times, weights = user_state(state)  # 16-byte entries: driftrec/userstate.py
        return UserReads(Meta.parse(meta), version, newest(times), strongest(weights), raw, vec_version,
                         pairs(trending[0]) if trending else [])

    async def read_expansion(self, items: Sequence[str], k_neighbours: int, users: Sequence[str],
                             per_user: int, session_items: Sequence[str] = (), k_sessions: int = 0,
                             ) -> tuple[dict[str, Pairs], dict[str, Pairs], dict[str, Pairs]]:
        """Neighbours of ``items``, the strongest items of ``users`` and the ``k_sessions`` latest
        users of the session index of each of ``session_items``: one pipeline."""
        if not items and not users and not session_items:
            return {}, {}, {}
        k = self.keys
        cmds = [["ZREVRANGE", k.item_nbrs(i), 0, k_neighbours - 1, "WITHSCORES"] for i in items]
        cmds += [["HGETALL", k.user_state(u)] for u in users]
        cmds += [["ZREVRANGE", k.item_sessions(i), 0, k_sessions - 1, "WITHSCORES"] for i in session_items]
        a, b = len(items), len(items) + len(users)
        res = await self._run(cmds, frozenset(range(a, b)))
        nbrs = {i: pairs(r) for i, r in zip(items, res[:a], strict=True)}
        theirs = {u: strongest(user_state(r)[1], per_user) for u, r in zip(users, res[a:b], strict=True)}
        sessions = {i: pairs(r) for i, r in zip(session_items, res[b:], strict=True)}
        return nbrs, theirs, sessions

    async def click_logs(self, users: Sequence[str]) -> dict[str, tuple[tuple[float, ...], str]]:
        """Each of ``users``' click log (``P:{u:U}:clk``: times ascending, items), one bulk string
        each (the session_knn source's neighbours): one ``MGET`` on a single server, one pipeline
        of ``GET``s through the Cluster client (the keys are in as many slots as users); a user
        with none stored is left out."""
        if not users:
            return {}
        key = self.keys.user_clicks
        if self.fast is not None:
            (res,) = await self.fast.execute([["MGET", *map(key, users)]], _FIRST)
        else:
            res = await self._run([["GET", key(u)] for u in users])
        out = {}
        for u, r in zip(users, res, strict=True):
            log = unpack_clicks(r)
            if log[0]:
                out[u] = log
        return out

    async def item_categories(self, items: Sequence[str]) -> dict[str, str]:
        """Category of each item that has one."""
        if not items:
            return {}
        (cats,) = await self._run([["HMGET", self.keys.item_category, *items]])
        return {i: str(c) for i, c in zip(items, cats, strict=True) if c is not None}

    async def read_item(self, item: str, k_neighbours: int) -> tuple[Meta, str | None, Pairs, str | None]:
        """Meta, live model version, the item's neighbours and its category: one pipeline."""
        k = self.keys
        meta, version, nbrs, cat = await self._run([
            self._meta_cmd(),
            ["GET", k.model_current],
            ["ZREVRANGE", k.item_nbrs(item), 0, k_neighbours - 1, "WITHSCORES"],
            ["HGET", k.item_category, item],
        ])
        return Meta.parse(meta), version, pairs(nbrs), cat

    async def scores_and_trending(self, items: Sequence[str], trend_key: str, trend_n: int) -> tuple[dict[str, float], Pairs]:
        """Stored popularity of ``items`` and a trending list: one pipeline."""
        pops, top = await self._run([
            ["ZMSCORE", self.keys.popularity, *items],
            ["ZREVRANGE", trend_key, 0, trend_n - 1, "WITHSCORES"],
        ])
        norms = {i: v for i, p in zip(items, pops, strict=True) if (v := _float(p)) is not None}
        return norms, pairs(top)

    async def trending(self, trend_key: str, n: int) -> tuple[Meta, Pairs]:
        meta, top = await self._run([self._meta_cmd(), ["ZREVRANGE", trend_key, 0, n - 1, "WITHSCORES"]])
        return Meta.parse(meta), pairs(top)

    async def history(self, user: str, n: int) -> tuple[Meta, Pairs, Pairs]:
        """Meta, the newest ``n`` history entries (item, time) and the category tastes."""
        k = self.keys
        meta, state, cats = await self._run([
            self._meta_cmd(),
            ["HGETALL", k.user_state(user)],
            ["ZREVRANGE", k.user_cats(user), 0, -1, "WITHSCORES"],
        ], frozenset({1}))
        return Meta.parse(meta), newest(user_state(state)[0], n), pairs(cats)

    async def snapshot(self, n_items: int, categories: Sequence[str], per_category: int,
                       page: int = SNAPSHOT_PAGE) -> tuple[Meta, Pairs, dict[str, Pairs]]:
        """What the in-memory snapshot keeps: meta, the top popular items, per-category lists.

        The popularity list is read ``page`` entries per round trip, not in one command: one
        ``ZREVRANGE`` of 20,000 entries held Redis for about 30 ms, and every click and every
        request waited behind it. Each page is read with the landmark; a rescale between two
        pages (all stored scores change scale) restarts the read, so the snapshot never mixes
        scales. An item that moves across a page boundary between two reads may appear twice
        (the first, higher-ranked entry is kept) or be missed (it gets the floor norm).
        """
        k = self.keys
        for _ in range(3):
            meta_raw, first, *lists = await self._run([
                self._meta_cmd(),
                ["ZREVRANGE", k.popularity, 0, min(page, n_items) - 1, "WITHSCORES"],
                *(["ZREVRANGE", k.trending(c), 0, per_category - 1, "WITHSCORES"] for c in categories),
            ])
            meta = Meta.parse(meta_raw)
            pop = pairs(first)
            got, moved = len(pop), False
            while got == page and len(pop) < n_items:  # a short page: the list ended
                stop = min(len(pop) + page, n_items)
                again, more = await self._run([
                    self._meta_cmd(), ["ZREVRANGE", k.popularity, len(pop), stop - 1, "WITHSCORES"]])
                if Meta.parse(again).landmark != meta.landmark:
                    moved = True
                    break
                chunk = pairs(more)
                got = len(chunk) if stop - len(pop) == page else 0
                pop += chunk
            if not moved:
                first_seen: dict[str, float] = {}
                for i, s in pop:
                    first_seen.setdefault(i, s)
                return meta, list(first_seen.items()), {c: pairs(v) for c, v in zip(categories, lists, strict=True)}
        raise RescaleInProgress("the landmark moved during three snapshot reads in a row")

    async def model_parts(self, version: str, parts: Sequence[str]) -> dict[str, bytes | None]:
        """Raw bytes of published model parts (missing parts are None), chunked ones joined
        (:mod:`driftrec.modelblobs`; a second round trip only when some part is chunked)."""
        return await modelblobs.aread_parts(self.blob_client, parts, lambda p: self.keys.model_blob(version, p))
