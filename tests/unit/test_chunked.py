"""Cutting a batch's apply ops into chunks of bounded cost (streams/chunked.py): nothing lost,
nothing reordered, every chunk within the budget, split sorted-set ops cut once at their end."""

from __future__ import annotations

import random
from typing import Any

import msgpack

from driftrec.settings import Settings
from driftrec.streams import chunked
from driftrec.streams.chunked import LOAD_COST, OP_COST, build, cut_ops, load_parts, op_cost


def _ops(seed: int) -> tuple[list[str], list[list[Any]]]:
    r = random.Random(seed)
    keys: list[str] = []
    ops: list[list[Any]] = []
    for j in range(300):
        kind = r.choice("zzzzsxvtd")
        n = r.choice([0, 1, 3, 40, 400, 3000])
        if kind == "z":
            flat: list[Any] = [x for m in range(n) for x in (f"m{m}", float(m + 1))]
            cap = r.choice([0, 50, 500])
        elif kind == "s":
            flat, cap = [x for m in range(n) for x in (f"f{m}", b"v" * 16)], 0
        elif kind == "x":
            flat, cap = [f"f{m}" for m in range(n)], 0
        elif kind == "v":
            flat, cap = ["m1", b"\0" * 512, b"\0" * 512], 128
        elif kind == "t":
            flat, cap = [b"m1\0" + b"\0" * 128], 0
        else:
            flat, cap = [], 0
        keys.append(f"k{j % 97}")  # a key may take several ops
        ops.append([len(keys), kind, cap, flat])
    return keys, ops


def _atoms(names: list[str], rows: list[list[Any]], o: int = 0) -> list[tuple[Any, ...]]:
    """Each op as its elements ``(key, op, element)`` (a vector, a SET or a DEL as one element)."""
    out: list[tuple[Any, ...]] = []
    for index, kind, _, flat in rows:
        key, step = names[index - 1 - o], {"z": 2, "s": 2, "x": 1}.get(kind)
        if step is None:
            out.append((key, kind, tuple(flat)))
        else:
            out.extend((key, kind, tuple(flat[i:i + step])) for i in range(0, len(flat), step))
    return out


def test_chunks_keep_every_op_in_order_within_the_budget() -> None:
    for seed in range(5):
        keys, ops = _ops(seed)
        want = _atoms(keys, ops)
        for budget in (50, 300, 800, 5000):
            chunks = cut_ops(keys, ops, budget)
            got = []
            for o, names, rows in chunks:
                # The ops keep their batch-wide index, the keys are the slice after o.
                assert sorted({r[0] for r in rows}) == list(range(o + 1, o + len(names) + 1))
                cost = sum(op_cost(kind, cap, flat) for _, kind, cap, flat in rows)
                # Over the budget only: one vector op alone (it cannot be split).
                assert cost <= budget or (len(rows) == 1 and rows[0][1] == "v"), (budget, cost, rows[0][1])
                got += _atoms(names, rows, o)
            assert got == want
            assert max(len(rows) for _, _, rows in chunks) > 1 or budget == 50


def test_a_split_sorted_set_op_is_cut_to_its_bound_once_at_the_end() -> None:
    flat = [x for m in range(1000) for x in (f"m{m}", 1.0)]
    chunks = cut_ops(["row", "other"], [[1, "z", 50, flat], [2, "z", 50, ["a", 1.0]]], 200)
    caps = [row[2] for o, names, rows in chunks for row in rows if names[row[0] - 1 - o] == "row"]
    assert len(caps) > 3 and caps[:-1] == [0] * (len(caps) - 1) and caps[-1] == -50
    assert [row[2] for o, names, rows in chunks for row in rows if names[row[0] - 1 - o] == "other"] == [50]
    # An unbounded set's parts stay unbounded; hash writes are split by field pairs.
    for kind in ("z", "s"):
        caps = [row[2] for _, _, rows in cut_ops(["k"], [[1, kind, 0, flat]], 200) for row in rows]
        assert set(caps) == {0} and len(caps) > 3
    for _, _, rows in cut_ops(["k"], [[1, "s", 0, flat]], 200):
        assert len(rows[0][3]) % 2 == 0


def test_a_tiny_budget_still_makes_progress() -> None:
    flat = [x for m in range(10) for x in (f"m{m}", 1.0)]
    chunks = cut_ops(["k"], [[1, "z", 5, flat]], 1)
    assert len(chunks) == 10 and [c[2][0][2] for c in chunks] == [0] * 9 + [-5]
    assert op_cost("z", 5, flat[:2]) == OP_COST + chunked.PER_ELEMENT["z"]


def test_build_packs_a_copy_that_holds_every_chunk_and_the_finish() -> None:
    keys, ops = _ops(1)
    c = build(keys, ops, 800, guards={"t:0": "-1"}, landmark="1.5", offsets={"t:0": "9"}, last_time="2.0",
              applied=10)
    copy = msgpack.unpackb(c.copy, raw=True)  # old raw types only: binary payloads come back as bytes
    assert copy[b"chunks"] == list(c.chunks) and copy[b"finish"] == c.finish
    finish = msgpack.unpackb(c.finish, raw=False)
    assert finish == {"id": c.batch_id, "off": {"t:0": "9"}, "t": "2.0", "n": 10, "c": len(c.chunks)}
    assert msgpack.unpackb(c.begin, raw=False) == {"g": {"t:0": "-1"}, "lm": "1.5", "id": c.batch_id}


def test_the_settings_default_is_the_chunkers() -> None:
    assert Settings.model_fields["apply_chunk_cost"].default == chunked.CHUNK_COST


def test_load_parts_cover_every_user_and_item_once_within_the_budget() -> None:
    assert load_parts(1700, 900, True, 0) == [(range(1700), range(900))]
    assert load_parts(0, 0, False, 500) == [(range(0), range(0))]
    for users, items, vecs in ((1700, 900, True), (1, 0, False), (0, 5, False), (83, 0, False)):
        parts = load_parts(users, items, vecs, 500)
        assert [u for us, _ in parts for u in us] == list(range(users))
        assert [i for _, its in parts for i in its] == list(range(items))
        per_user = LOAD_COST["hk"] + (LOAD_COST["uk"] if vecs else 0)
        assert all(len(us) * per_user + len(its) * LOAD_COST["ik"] <= 500 for us, its in parts)
