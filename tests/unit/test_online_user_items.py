"""The per-user item HASH (``P:{u}:iw``): its 16-byte codec and the worker's merge-and-diff writes
replayed on a dict, against the in-memory oracle's separate history and weights."""

from __future__ import annotations

import random
import struct

import pytest

from driftrec.keys import Keys
from driftrec.models.decay import DecayPolicy, EventWeights
from driftrec.models.online import EventView, InMemoryState
from driftrec.streams.redis_state import BatchContext, loaded_context, user_item_ops
from driftrec.userstate import (
    decode_fields,
    encode_state,
    newest,
    pack_entry,
    split_state,
    strongest,
    unpack_entry,
)

KEYS = Keys("t")
WEIGHTS = EventWeights({"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0})


def test_entry_round_trips_bit_for_bit_and_marks_missing_halves() -> None:
    t, w = 1764275000.123, 0.1 + 0.2  # neither has a short decimal form
    raw = pack_entry(t, w)
    assert len(raw) == 16 and raw == struct.pack("<dd", t, w)
    assert unpack_entry(raw) == (t, w)
    assert unpack_entry(pack_entry(t, None)) == (t, None)
    assert unpack_entry(pack_entry(None, w)) == (None, w)
    assert unpack_entry(b"short") == (None, None)


def test_decode_accepts_flat_lists_mappings_and_surrogate_text() -> None:
    state = {"a": 1.5, "b": 2.5}
    enc = encode_state(state, {"b": 7.0, "c": 0.25})
    flat = [x for kv in enc.items() for x in kv]
    as_text = {k: v.decode("utf-8", "surrogateescape") for k, v in enc.items()}  # the reader's client
    for reply in (flat, enc, {k.encode(): v for k, v in enc.items()}, as_text):
        times, weights = decode_fields(reply)
        assert times == state and weights == {"b": 7.0, "c": 0.25}
    assert decode_fields([]) == ({}, {})
    assert decode_fields({"x": b"bad", "a": pack_entry(3.0, None)}) == ({"a": 3.0}, {})


def test_the_loads_fast_decoding_equals_split_state() -> None:
    """The load script's reply (flat lists of bytes) takes a fast path; it must read what
    ``split_state`` reads, malformed values and non-UTF-8 ids included."""
    rng = random.Random(5)
    replies: list[list[bytes]] = [[]]
    for n in range(1, 40):
        flat: list[bytes] = []
        for j in range(n):
            t = rng.choice([None, rng.uniform(0, 2e9)])
            w = rng.choice([None, rng.uniform(-3.0, 1e6)])
            flat += [rng.choice([f"i{j}", f"é{j}", f"x\udcff{j}"]).encode("utf-8", "surrogateescape"),
                     pack_entry(t, w)]
        replies.append(flat)
    replies[7][1] = replies[7][1][:8]  # one malformed value: skipped, the rest kept
    users = [f"u{j}" for j in range(len(replies))]
    ctx = loaded_context([], users, [], "", [], None, None, replies, [], [])
    for user, flat in zip(users, replies, strict=True):
        times, weights = split_state(flat)
        assert ctx.histories[user] == times and ctx.user_weights[user] == weights
    assert len(ctx.histories["u7"]) + len(ctx.user_weights["u7"]) > 0


def test_orders_follow_redis_sorted_sets() -> None:
    rows = {"b": 2.0, "a": 2.0, "c": 1.0, "d": 3.0}
    assert newest(rows) == [("d", 3.0), ("b", 2.0), ("a", 2.0), ("c", 1.0)]  # ties: larger member first
    assert strongest(rows, 2) == [("d", 3.0), ("b", 2.0)]
    assert newest(rows, 0) == []


def _apply_ops(store: dict[str, dict[str, bytes]], ops: list[tuple[str, str, list[object]]]) -> None:
    for key, kind, flat in ops:
        row = store.setdefault(key, {})
        if kind == "s":
            for j in range(0, len(flat), 2):
                row[str(flat[j])] = flat[j + 1]  # type: ignore[assignment]
        elif kind == "x":
            for f in flat:
                row.pop(str(f), None)
        if not row:
            del store[key]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_writes_equal_the_oracle(seed: int) -> None:
    """Small bounds (history 4) so both halves get cut, different items on each side; tombstones."""
    rng = random.Random(seed)
    policy = DecayPolicy(3600.0)
    hist_len = 4
    oracle = InMemoryState(policy, WEIGHTS, window=3, window_s=600.0, history_len=hist_len,
                           neighbours_k=5, trending_k=5, user_items_k=hist_len, user_cats_k=8)
    store: dict[str, dict[str, bytes]] = {}
    users, items = [f"u{j}" for j in range(4)], [f"i{j}" for j in range(12)]
    t, offset = 1_700_000_000.0, 0
    for _ in range(40):
        batch = []
        for _ in range(rng.randint(1, 12)):
            t += rng.choice([0.0, 0.5, 7.25, 90.0])
            typ = rng.choices(["view", "add_to_cart", "purchase", "forget_user"], [8, 3, 2, 0.3])[0]
            batch.append(EventView(rng.choice(users), rng.choice(items), typ, t - rng.choice([0, 0, 30]),
                                   "c", offset, 0))
            offset += 1
        states = {u: split_state(store.get(KEYS.user_state(u), {})) for u in users}
        ctx = BatchContext({0: str(oracle.offsets.get(0, -1))}, oracle.landmark,
                           {u: s[0] for u, s in states.items()},
                           user_weights={u: s[1] for u, s in states.items()})
        delta = oracle.plan(batch)
        for user in delta.forgotten:
            store.pop(KEYS.user_state(user), None)  # the "d" op the state adds first
        _apply_ops(store, user_item_ops(KEYS, delta, ctx, hist_len))
        assert oracle.apply(delta)
        for u in users:
            times, weights = decode_fields(store.get(KEYS.user_state(u), {}))
            assert times == oracle.hist.get(u, {}), u
            assert weights == oracle.user_items.get(u, {}), u  # the same additions: exact
            assert all(len(v) == 16 for v in store.get(KEYS.user_state(u), {}).values())
            assert len(times) <= hist_len and len(weights) <= hist_len
    assert any(None in unpack_entry(v) for row in store.values() for v in row.values()), \
        "no entry kept one half only: the bounds were never cut apart"
