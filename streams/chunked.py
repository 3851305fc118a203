"""A micro-batch applied in chunks of bounded Redis cost, exactly once across crashes (single node).

Redis runs one command at a time, so one script applying a whole batch (~50 µs of Redis per event,
~100 ms for 2,000 events) makes every reader request wait behind it. Here a batch's ops (the
ops of ``apply_batch.lua``, built by :meth:`driftrec.streams.redis_state.RedisState.prepare_apply`) are cut
into chunks whose estimated cost (:func:`op_cost`, in units of about a microsecond of Redis time on
the 2-core server it was fitted on) stays within a budget (setting ``apply_chunk_cost``), and sent as one
pipeline on one connection:

1. **begin**: a plain ``SET`` with an expiry stores the batch's write-ahead copy (every chunk
   and the finish payload) in ``P:{g}:wal:<id>`` (a large argument, which Redis takes without
   copying it: a few µs, where a script storing it took 2-5 ms), then ``begin_batch.lua``: the
   offsets guard, no other batch of these partitions in flight, the landmark guard; then it makes
   the copy permanent, and sets the batch's partitions in ``P:{g}:inflight`` and its progress
   ``P:{g}:chunks`` ``<id>`` to 0 (a refused batch's copy is deleted, or expires);
2. **chunks** (``apply_chunk.lua``): chunk ``i`` is applied only while the progress is ``i - 1``,
   and moves it to ``i``;
3. **finish** (``finish_batch.lua``): once all chunks are in, the offsets, the event counter and
   ``last_event_time``; drops the copy, the in-flight marks and the progress.

A worker that dies between 1 and 3 leaves the copy; whoever loads one of its partitions next (the
restarted worker, or the partition's next owner after a rebalance) or starts a landmark move
finishes it from the copy before anything else (:func:`recover_commands`): chunks already in are
refused by the progress guard, so each is applied once, and the end state is that of one pass of
the batch as it was planned. Each sender sends its chunks in order, so a chunk that arrives while
the progress is below ``i - 1`` cannot happen: the two senders of a race take turns, never skip.

Between two chunks other clients' commands run: a reader may see a batch half applied (the
batches were never visible to readers all at once anyway across keys they read in separate calls).
Redis reads at most 16 KB of a client's pipeline per turn of its event loop (more only for one
large argument), so the chunks of one pipeline also take turns with the readers' commands.

An op larger than the budget (the popularity set of a whole batch, a category's trending set) is
split: a ``z`` op's parts carry cap 0 and the last one ``-cap`` (``apply_ops.lua``: cut the key
then, whatever that part added), so the key ends as the unsplit op would leave it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.exceptions import NoScriptError, ResponseError

from driftrec.keys import Keys

__all__ = ["CHUNK_COST", "ChunkedApply", "op_cost", "cut_ops", "load_parts", "build", "inflight_key", "wal_key",
           "chunks_key", "APPLY_CHUNK", "BEGIN", "FINISH", "Scripts", "outcome"]

#: Default budget of one chunk, in :func:`op_cost` units (setting ``apply_chunk_cost``). The units
#: were fitted on replays into a fresh store; in a warm one under a shop's traffic (full
#: neighbour rows, two shared cores) a unit took ~2.4 µs of wall time: chunks of 500 ran 1.2 ms
#: (median; p90 1.6 ms), chunks of 200 run 0.49 ms (p90 0.67, p99 1.3), at the same throughput.
CHUNK_COST = 200

#: Cost units (about a microsecond of Redis time each; fitted by ``benchmarks/chunk_cost.py``,
#: ``benchmarks/results/chunk_cost*.json``, in git history at 8811c33) of an op: ``OP_COST``
#: per op, plus per element: a sorted-set pair (``ZMSCORE``, the Lua addition, ``ZADD``) in a
#: bounded row (``z``: ``neighbours_k``, categories; a listpack up to Redis' 128 entries) or in a
#: large set (``Z``: popularity, trending: a skiplist), a hash field, a deleted field, or a float32
#: component of a vector sum (``v``: ``GET``, two ``struct.unpack``, the additions,
#: ``struct.pack``, ``SET``); ``t`` (a vector ``SET``) and ``d`` (``DEL``) per op.
OP_COST = 1.0
PER_ELEMENT = {"z": 1.6, "Z": 3.3, "s": 0.6, "x": 0.5, "v": 0.12, "g": 1.6}  # "r" (ZREM) costs as "x"
PER_OP = {"t": 2.3, "d": 3.0, "v": 2.0}
#: Rows bounded below this many members stay listpacks (Redis' ``zset-max-listpack-entries``).
_LISTPACK = 128
#: Load cost units per user item HASH read whole (and packed into the reply), per user vector
#: and per item vector read (``load_batch.lua``; the same replays: ~1.5 µs a user
#: HASH, ~3.9 with its vector, ~2.5 an item vector, replayed alone; these are near the 90th
#: percentiles).
LOAD_COST = {"hk": 2.5, "uk": 2.5, "ik": 3.5}
#: Milliseconds a write-ahead copy stored ahead of its begin lives unless the begin keeps it.
COPY_TTL_MS = 600_000
#: Script reply codes of begin / finish (``begin_batch.lua``, ``finish_batch.lua``).
BEGUN, FINISHED, ALREADY_FINISHED, CHUNKS_MISSING = 1, 1, 0, -2
#: Script names (under streams/lua) of the three steps.
BEGIN, APPLY_CHUNK, FINISH = "begin_batch.lua", "apply_chunk.lua", "finish_batch.lua"

# Redis' Lua cmsgpack predates the msgpack str8/bin types: pack with the old raw types only.
_pack = msgpack.Packer(use_bin_type=False).pack
_STEP = {"z": 2, "s": 2, "x": 1, "g": 2, "r": 1}  # flat list entries per element of the splittable ops


def inflight_key(keys: Keys) -> str:
    """HASH ``<topic>:<partition>`` -> id of the batch being applied to that partition."""
    return f"{keys.prefix}:{{g}}:inflight"


def wal_key(keys: Keys, batch_id: str) -> str:
    """STRING: the write-ahead copy of one batch in flight."""
    return f"{keys.prefix}:{{g}}:wal:{batch_id}"


def chunks_key(keys: Keys) -> str:
    """HASH batch id -> chunks of that batch applied so far (single node, batches in flight)."""
    return f"{keys.prefix}:{{g}}:chunks"


def _each(kind: str, cap: int) -> float:
    """Cost of one element of a splittable op. A ``z`` op on an unbounded or large set, or one
    split (cap 0 or negative: too many pairs for one chunk, so past a listpack's size), is ``Z``."""
    if kind == "z" and (cap <= 0 or cap > _LISTPACK):
        return PER_ELEMENT["Z"]
    return PER_ELEMENT[kind]


def op_cost(kind: str, cap: int, flat: Sequence[Any]) -> float:
    """Estimated Redis cost of one op (see :data:`PER_ELEMENT`)."""
    base = OP_COST + PER_OP.get(kind, 0.0)
    if kind == "v":
        return base + PER_ELEMENT["v"] * abs(cap)
    step = _STEP.get(kind)
    return base + (_each(kind, cap) * (len(flat) // step) if step else 0.0)


def cut_ops(keys: Sequence[str], ops: Sequence[list[Any]], budget: float,
            ) -> list[tuple[int, list[str], list[list[Any]]]]:
    """``ops`` (``[index into keys (1-based), op, cap, flat]``, in order, op ``i`` on key ``i``:
    each op names its own key, as the apply payloads are built) as chunks of at most ``budget``
    cost each, in order: ``(o, keys, ops)``, where an op's key is ``keys[index - o]`` (1-based),
    so the ops go as they are, not renumbered copies. An op costlier than the budget is split
    (``z``, ``s``, ``x``) or, when it cannot be (a vector), gets a chunk of its own. (Costs are
    :func:`op_cost`'s, inlined: this runs per op of every batch, ~10,000 for 2,000 clicks.)"""
    out: list[tuple[int, list[str], list[list[Any]]]] = []
    rows: list[list[Any]] = []
    first, used = 0, 0.0  # the chunk being filled: its first op's position, its cost so far
    small, large, field, gone = PER_ELEMENT["z"], PER_ELEMENT["Z"], PER_ELEMENT["s"], PER_ELEMENT["x"]
    index_each = PER_ELEMENT["g"]
    fixed = {kind: OP_COST + c for kind, c in PER_OP.items() if kind != "v"}
    vec_base, vec_each = OP_COST + PER_OP["v"], PER_ELEMENT["v"]
    for op in ops:
        index, kind, cap, flat = op
        if kind == "z":
            cost = OP_COST + (small if 0 < cap <= _LISTPACK else large) * (len(flat) >> 1)
        elif kind == "s":
            cost = OP_COST + field * (len(flat) >> 1)
        elif kind in ("x", "r"):
            cost = OP_COST + gone * len(flat)
        elif kind == "g":
            cost = OP_COST + index_each * (len(flat) >> 1)
        elif kind == "v":
            cost = vec_base + vec_each * abs(cap)
        else:
            cost = fixed.get(kind, OP_COST)
        if used + cost > budget and rows:
            out.append((first, list(keys[first:rows[-1][0]]), rows))
            rows, used = [], 0.0
        if not rows:
            first = index - 1
        if cost <= budget or kind not in _STEP:
            rows.append(op)
            used += cost
            continue
        # Split: as many elements as fit what is left of the chunk, the rest in the next ones.
        step, each = _STEP[kind], _each(kind, 0)
        start, n = 0, len(flat)
        while start < n:
            room = budget - used - OP_COST
            if room < each and rows:
                out.append((first, list(keys[first:rows[-1][0]]), rows))
                rows, used, first = [], 0.0, index - 1
                continue
            part = flat[start:start + max(1, int(room // each)) * step]
            start += len(part)
            last = start >= n
            rows.append([index, kind, cap if kind not in ("z", "g") or cap == 0 else (-cap if last else 0), part])
            used += OP_COST + each * (len(part) // step)
            if not last:
                out.append((first, list(keys[first:index]), rows))
                rows, used, first = [], 0.0, index - 1
    if rows:
        out.append((first, list(keys[first:rows[-1][0]]), rows))
    return out


def load_parts(users: int, items: int, user_vectors: bool, budget: float) -> list[tuple[range, range]]:
    """The users and items (index ranges) each call of a batch's load reads, so that none costs
    more than ``budget`` (:data:`LOAD_COST`); one call for everything when ``budget`` is 0."""
    if budget <= 0:
        return [(range(users), range(items))]
    per_user = LOAD_COST["hk"] + (LOAD_COST["uk"] if user_vectors else 0.0)
    u_step, i_step = max(1, int(budget // per_user)), max(1, int(budget // LOAD_COST["ik"]))
    out = [(range(a, min(a + u_step, users)), range(0)) for a in range(0, users, u_step)]
    out += [(range(0), range(a, min(a + i_step, items))) for a in range(0, items, i_step)]
    return out or [(range(0), range(0))]


@dataclass(frozen=True)
class ChunkedApply:
    """One batch's chunked apply, packed: the scripts' arguments."""

    batch_id: str
    #: begin_batch.lua's ARGV[1] (guards) and ARGV[2] (the write-ahead copy).
    begin: bytes
    copy: bytes
    #: apply_chunk.lua's payload of each chunk, in order.
    chunks: tuple[bytes, ...]
    #: finish_batch.lua's ARGV[1].
    finish: bytes


def build(keys: Sequence[str], ops: Sequence[list[Any]], budget: float, *, guards: dict[str, str],
          landmark: str, offsets: dict[str, str], last_time: str, applied: int) -> ChunkedApply:
    """The chunked apply of one batch: ``guards`` (field -> expected stored offset), ``landmark``
    ('' for none), ``offsets`` (field -> new offset), ``last_time`` and ``applied`` as in
    ``apply_batch.lua``'s payload."""
    batch_id = uuid.uuid4().hex
    chunks = tuple(_pack({"o": o, "k": k, "ops": rows}) for o, k, rows in cut_ops(keys, ops, budget))
    finish = _pack({"id": batch_id, "off": offsets, "t": last_time, "n": applied, "c": len(chunks)})
    return ChunkedApply(batch_id, _pack({"g": guards, "lm": landmark, "id": batch_id}),
                        _pack({"chunks": list(chunks), "finish": finish}), chunks, finish)


class Scripts:
    """begin / chunk / finish registered on one client, and the keys they run on."""

    def __init__(self, client: Any, keys: Keys, sources: dict[str, str]) -> None:
        self.client = client
        self.keys = keys
        self.sources = sources  # script name -> Lua source (streams/lua, includes resolved)
        self.sha = {name: client.register_script(src).sha for name, src in sources.items()}

    def commands(self, c: ChunkedApply, *, begin: bool = True, upto: int | None = None) -> list[tuple[Any, ...]]:
        """The commands of ``c``: begin (unless ``begin`` is False: finishing a copy), its chunks
        (only the first ``upto``, without the finish, when given) and the finish."""
        k = self.keys
        g = (k.offsets, k.meta, inflight_key(k), wal_key(k, c.batch_id), chunks_key(k))
        out: list[tuple[Any, ...]] = []
        if begin:
            out.append(("SET", g[3], c.copy, "PX", COPY_TTL_MS))
            out.append(("EVALSHA", self.sha[BEGIN], len(g), *g, c.begin))
        for i, payload in enumerate(c.chunks[:upto], 1):
            out.append(("EVALSHA", self.sha[APPLY_CHUNK], 1, g[4], c.batch_id, i, payload))
        if upto is None:
            out.append(("EVALSHA", self.sha[FINISH], len(g), *g, c.finish))
        return out

    async def send(self, commands: list[tuple[Any, ...]]) -> Callable[[], Awaitable[list[Any]]]:
        """Send ``commands`` now, as one pipeline on a connection of their own (anything sent to
        Redis afterwards runs after the first of them); returns a coroutine function that reads
        every reply, a command's error as its reply. A script Redis lacks (restarted, flushed) is
        loaded and the commands from the first that lacked one are sent again: each is guarded."""
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
        except BaseException:
            await conn.disconnect()
            await pool.release(conn)
            raise

        async def read(n: int) -> list[Any]:
            out: list[Any] = []
            for _ in range(n):
                try:
                    out.append(await conn.read_response())
                except ResponseError as exc:  # the reply is read: the connection is still in step
                    out.append(exc)
            return out

        async def replies() -> list[Any]:
            try:
                got = await read(len(commands))
                first = next((j for j, r in enumerate(got) if isinstance(r, NoScriptError)), None)
                if first is not None:
                    for src in self.sources.values():
                        await conn.send_command("SCRIPT", "LOAD", src)
                        await conn.read_response()
                    await conn.send_packed_command(conn.pack_commands(commands[first:]))
                    got[first:] = await read(len(commands) - first)
                return got
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
        return replies

    async def finish_copy(self, batch_id: str) -> bool | None:
        """Finish batch ``batch_id`` from its write-ahead copy: its chunks not yet in, then the
        finish. None when it is no longer in flight (finished meanwhile), False when it is but
        its copy is gone (evicted, deleted by hand: it cannot be finished)."""
        raw = await self.client.get(wal_key(self.keys, batch_id))
        if raw is None:
            busy = {v.decode() if isinstance(v, bytes) else v
                    for v in await self.client.hvals(inflight_key(self.keys))}
            return False if batch_id in busy else None
        copy = msgpack.unpackb(raw, raw=True)  # payloads are binary: keep every string as bytes
        c = ChunkedApply(batch_id, b"", b"", tuple(copy[b"chunks"]), copy[b"finish"])
        replies = await (await self.send(self.commands(c, begin=False)))()
        for r in replies:
            if isinstance(r, Exception):
                raise r
        if int(replies[-1]) == CHUNKS_MISSING:
            raise RuntimeError(f"batch {batch_id}: a chunk was refused while finishing it from its copy")
        return True


def outcome(replies: list[Any]) -> int:
    """What the replies of :meth:`Scripts.commands` (with begin and finish) say: 1 the batch is
    applied (by this pipeline or, when another worker finished it first, by that one), 0 its
    offsets moved or another batch of its partitions is in flight, -1 the landmark differs or a
    rescale runs, -2 a chunk is missing (the batch stays in flight: the next load finishes it).
    Raises a command's error once every reply is read."""
    for r in replies:
        if isinstance(r, Exception):
            raise r
    code = int(replies[1][0])  # replies[0]: the copy's SET
    if code != BEGUN:
        return -1 if code == -1 else 0
    return CHUNKS_MISSING if int(replies[-1]) == CHUNKS_MISSING else 1
