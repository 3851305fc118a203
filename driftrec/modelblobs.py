"""Published model parts larger than one Redis value, stored in chunks.

A part of at most :data:`CHUNK_BYTES` is one STRING under ``Keys.model_blob(version, part)``, as
it always was. A larger part leaves a short *head* there, ``HEAD + b"<chunks> <bytes>"``, and its
bytes in STRINGs ``<that key>#0``, ``#1``, ... of at most :data:`CHUNK_BYTES` each. Redis refuses
a value over ``proto-max-bulk-len`` (512 MB by default), which a TF layer or the user factors
pass on a million-item, ten-million-user shop (docs/capacity.md), and one command moving a
gigabyte would hold Redis for its whole copy; 64 MB pieces avoid both. Chunk keys sit under the
version's pattern, so deleting a version (``model_blob(version, "*")``) removes them too.

Readers fetch the heads first and then, in a second pipeline, the chunks of the parts that have
them: :func:`read_parts` (redis-py) and :func:`aread_parts` (redis-py asyncio) do both;
:func:`chunk_requests` says which keys, :func:`assemble` joins and checks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import redis
import redis.asyncio as aioredis

from driftrec.errors import ModelError

__all__ = ["CHUNK_BYTES", "HEAD", "chunk_key", "split", "head_of", "chunk_requests", "assemble",
           "read_parts", "aread_parts"]

#: Largest value written as one STRING.
CHUNK_BYTES = 64 * 2**20
#: Starts a head. No ``.npy`` file (``\x93NUMPY``) or UTF-8 id list starts with a NUL byte.
HEAD = b"\x00driftrec-chunked-v1\x00"


def chunk_key(key: str, index: int) -> str:
    return f"{key}#{index}"


def split(value: bytes, chunk_bytes: int = CHUNK_BYTES) -> tuple[bytes, list[bytes]]:
    """``(value, [])`` when it fits one STRING, else ``(head, chunks)``."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be >= 1")
    if len(value) <= chunk_bytes and not value.startswith(HEAD):
        return value, []
    view = memoryview(value)
    chunks = [bytes(view[i:i + chunk_bytes]) for i in range(0, len(value), chunk_bytes)]
    return HEAD + b"%d %d" % (len(chunks), len(value)), chunks


def head_of(part: str, raw: bytes | None) -> tuple[int, int] | None:
    """``(chunks, total bytes)`` when ``raw`` is a head, None for a whole value or a missing part."""
    if raw is None or not raw.startswith(HEAD):
        return None
    try:
        count, total = (int(x) for x in raw[len(HEAD):].split(b" "))
    except ValueError:
        raise ModelError(f"part {part!r} has a malformed chunk head") from None
    if count < 1 or total < 0:
        raise ModelError(f"part {part!r} has a malformed chunk head")
    return count, total


def chunk_requests(parts: Mapping[str, bytes | None], key_of: Callable[[str], str]) -> list[tuple[str, str]]:
    """``(part, chunk key)`` for every chunk of the chunked ``parts``, in order."""
    out: list[tuple[str, str]] = []
    for part, raw in parts.items():
        head = head_of(part, raw)
        if head is not None:
            out += [(part, chunk_key(key_of(part), i)) for i in range(head[0])]
    return out


def assemble(parts: Mapping[str, bytes | None], requests: Sequence[tuple[str, str]],
             chunks: Sequence[bytes | None]) -> dict[str, bytes | None]:
    """``parts`` with every head replaced by its joined chunks (``chunks`` answer ``requests``).

    Raises :class:`ModelError` when a chunk is missing or the bytes do not add up to the head's
    total (a version deleted or rewritten while it was read).
    """
    got: dict[str, list[bytes]] = {}
    for (part, key), raw in zip(requests, chunks, strict=True):
        if raw is None:
            raise ModelError(f"part {part!r} lacks its chunk {key!r}")
        got.setdefault(part, []).append(raw)
    out = dict(parts)
    for part, raw in parts.items():
        head = head_of(part, raw)
        if head is None:
            continue
        pieces = got.get(part, [])
        value = b"".join(pieces)
        if len(pieces) != head[0] or len(value) != head[1]:
            raise ModelError(f"part {part!r}: {len(pieces)} chunks of {len(value)} bytes, "
                             f"its head says {head[0]} of {head[1]}")
        out[part] = value
    return out


def read_parts(client: redis.Redis, names: Sequence[str], key_of: Callable[[str], str]) -> dict[str, bytes | None]:
    """Parts by name (None when missing), chunked ones joined; ``client`` returns bytes."""
    parts = dict(zip(names, _get(client, [key_of(n) for n in names]), strict=True))
    requests = chunk_requests(parts, key_of)
    return assemble(parts, requests, _get(client, [k for _, k in requests])) if requests else parts


async def aread_parts(client: aioredis.Redis, names: Sequence[str],
                      key_of: Callable[[str], str]) -> dict[str, bytes | None]:
    """:func:`read_parts` on an asyncio client (the reader's and the worker's loaders)."""
    parts = dict(zip(names, await _aget(client, [key_of(n) for n in names]), strict=True))
    requests = chunk_requests(parts, key_of)
    return assemble(parts, requests, await _aget(client, [k for _, k in requests])) if requests else parts


def _get(client: redis.Redis, keys: Sequence[str]) -> list[bytes | None]:
    """GET of every key, one pipeline."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return list(pipe.execute())


async def _aget(client: aioredis.Redis, keys: Sequence[str]) -> list[bytes | None]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return list(await pipe.execute())
