"""Chunked model parts (driftrec/modelblobs.py): split and joined back exactly; damage refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftrec import modelblobs
from driftrec.errors import ModelError


def _roundtrip(value: bytes, chunk_bytes: int) -> tuple[bytes, dict[str, bytes | None]]:
    head, chunks = modelblobs.split(value, chunk_bytes)
    store = {"k:p": head, **{modelblobs.chunk_key("k:p", i): c for i, c in enumerate(chunks)}}
    parts: dict[str, bytes | None] = {"p": store["k:p"], "other": b"small"}
    requests = modelblobs.chunk_requests(parts, lambda p: f"k:{p}")
    return head, modelblobs.assemble(parts, requests, [store.get(k) for _, k in requests])


@given(st.binary(max_size=300), st.integers(1, 64))
def test_a_part_comes_back_byte_for_byte(value: bytes, chunk_bytes: int) -> None:
    head, parts = _roundtrip(value, chunk_bytes)
    assert parts == {"p": value, "other": b"small"}
    whole = len(value) <= chunk_bytes and not value.startswith(modelblobs.HEAD)
    assert (head == value) == whole


def test_only_parts_over_the_limit_are_chunked_and_each_chunk_keeps_to_it() -> None:
    assert modelblobs.split(b"x" * 10, 10) == (b"x" * 10, [])
    head, chunks = modelblobs.split(b"abcdefghijk", 4)
    assert head.startswith(modelblobs.HEAD) and chunks == [b"abcd", b"efgh", b"ijk"]
    assert modelblobs.head_of("p", head) == (3, 11)
    # A small value that happens to start like a head is chunked, so it is never misread.
    tricky = modelblobs.HEAD + b"1 5"
    head, chunks = modelblobs.split(tricky, 1000)
    assert head != tricky and b"".join(chunks) == tricky


@pytest.mark.parametrize("damage", ["missing", "short", "extra-long", "bad-head"])
def test_damaged_chunks_are_model_errors(damage: str) -> None:
    head, chunks = modelblobs.split(b"0123456789", 3)
    if damage == "bad-head":
        head = modelblobs.HEAD + b"x y"
    parts: dict[str, bytes | None] = {"p": head}
    with pytest.raises(ModelError):
        requests = modelblobs.chunk_requests(parts, lambda p: p)
        got: list[bytes | None] = list(chunks)
        if damage == "missing":
            got[1] = None
        elif damage == "short":
            got[2] = b""
        elif damage == "extra-long":
            got[0] = b"0123"
        modelblobs.assemble(parts, requests, got)
