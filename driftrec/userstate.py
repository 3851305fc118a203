"""Value codecs of the worker's compact keys: the per-user item HASH ``P:{u:U}:iw`` (item ->
(last event time, forward weight), 16 bytes each) and the vector STRINGs ``P:{u:U}:vec`` /
``P:{i:I}:vec`` (``<model tag> NUL <float32 bytes>``).

One key holds what used to be two sorted sets (``hist``: item -> time, ``w``: item -> weight).
Redis 7.0 writes a non-integer sorted-set score as ``%.17g`` text (about 20 bytes), and every
item id was stored twice; here each item is stored once with its two doubles as raw
little-endian bytes (``<dd``), so the numbers stay bit for bit what the worker computed and the
hash stays in Redis' compact listpack encoding (values of 16 bytes, at most ``2 · history_len``
fields, both far below the defaults ``hash-max-listpack-value 64`` and ``-entries 128``).

The two halves are bounded separately, as the sorted sets were: the time half keeps the
``history_len`` newest items, the weight half the ``history_len`` strongest, so an item can have
one half only; the missing half is a NaN (never a valid time or weight). A field whose halves
are both missing is deleted. Orders follow Redis sorted sets: by (value, item) with ties broken
by the item's bytes.

A shopper's click log (``P:{u:U}:clk``) is the time half of their item HASH as one STRING, oldest
click first: a little-endian uint32 count ``n``, ``n`` float64 times (ascending, ties by item as
Redis orders them), then the ``n`` item ids joined by NUL bytes (ids never hold one:
driftrec/events.py). The session_knn source reads a few dozen per request: one bulk string whose
times unpack in one C call and are already sorted, so the session around a time is a bisect,
where a whole HASH cost a reply of 100 bulk strings, a sort and a pass over every entry.

A vector with its tag used to be a HASH ``{vec, model}``; its 128-byte value is above
``hash-max-listpack-value`` (64), so Redis kept it as a hashtable (~390 bytes). As one STRING it
is about half that. The tag (a model version or ``isgd``) never holds a NUL byte.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any

__all__ = [
    "ENTRY_BYTES", "pack_entry", "unpack_entry", "decode_fields", "split_state",
    "newest", "strongest", "encode_state", "pack_vector", "unpack_vector", "pack_clicks", "unpack_clicks",
]

logger = logging.getLogger(__name__)

_ENTRY = struct.Struct("<dd")
_VALUE_THEN_ITEM = itemgetter(1, 0)
ENTRY_BYTES = _ENTRY.size
_NAN = math.nan


def pack_entry(time: float | None, weight: float | None) -> bytes:
    """The 16-byte value of one item: event time and forward weight, NaN for a missing half."""
    return _ENTRY.pack(_NAN if time is None else time, _NAN if weight is None else weight)


def unpack_entry(raw: bytes) -> tuple[float | None, float | None]:
    """``(time, weight)`` of one value; None for a missing half (or a value of the wrong size)."""
    if len(raw) != ENTRY_BYTES:
        return None, None
    t, w = _ENTRY.unpack(raw)
    return (None if t != t else t), (None if w != w else w)


def _bytes(x: Any) -> bytes:
    # Readers that decode replies to str use surrogateescape, which turns back into the bytes.
    return x.encode("utf-8", "surrogateescape") if isinstance(x, str) else bytes(x)


def _text(x: Any) -> str:
    return x.decode("utf-8", "surrogateescape") if isinstance(x, bytes | bytearray) else str(x)


def decode_fields(flat: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Split an ``HGETALL`` reply (flat ``[field, value, ...]`` list or a mapping) into
    ``(times, weights)``: item -> event time and item -> stored forward weight.

    Values of the wrong size are ignored (logged), like a vector of the wrong length.
    """
    if isinstance(flat, Mapping):
        fields, values = list(flat.keys()), list(flat.values())
    else:
        fields, values = flat[0::2], flat[1::2]
    if not fields:
        return {}, {}
    items = [_text(f) for f in fields]
    raws = [_bytes(v) for v in values]
    joined = b"".join(raws)
    if len(joined) != ENTRY_BYTES * len(raws) or any(len(r) != ENTRY_BYTES for r in raws):
        logger.warning("ignoring %d malformed user item entries", sum(len(r) != ENTRY_BYTES for r in raws))
        keep = [j for j, r in enumerate(raws) if len(r) == ENTRY_BYTES]
        items, joined = [items[j] for j in keep], b"".join(raws[j] for j in keep)
    vals = struct.unpack(f"<{len(items) * 2}d", joined)  # one call: ~2x faster than numpy here
    times = {i: t for i, t in zip(items, vals[0::2], strict=True) if t == t}
    weights = {i: w for i, w in zip(items, vals[1::2], strict=True) if w == w}
    return times, weights


def split_state(flat: Any) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """:func:`decode_fields` as ``(item, value)`` lists, each in no particular order."""
    times, weights = decode_fields(flat)
    return list(times.items()), list(weights.items())


def _desc(rows: Iterable[tuple[str, float]], n: int | None) -> list[tuple[str, float]]:
    # Ties by item as Redis orders members: by their UTF-8 bytes, which is code-point order, so
    # the str itself compares alike (a C-level key: ~3x cheaper than encoding each item). Not for
    # lone surrogates (invalid bytes), which valid item ids never hold (driftrec/events.py).
    out = sorted(rows, key=_VALUE_THEN_ITEM, reverse=True)
    return out if n is None or n < 0 else out[:n]


def newest(times: Mapping[str, float] | Iterable[tuple[str, float]], n: int | None = None) -> list[tuple[str, float]]:
    """The ``n`` newest ``(item, time)`` entries, newest first (``ZREVRANGE ... WITHSCORES``)."""
    return _desc(times.items() if isinstance(times, Mapping) else times, n)


def strongest(weights: Mapping[str, float] | Iterable[tuple[str, float]], n: int | None = None) -> list[tuple[str, float]]:
    """The ``n`` strongest ``(item, weight)`` entries, strongest first."""
    return _desc(weights.items() if isinstance(weights, Mapping) else weights, n)


def encode_state(times: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, bytes]:
    """Field -> value mapping of a whole user (for ``HSET key mapping=...``; tests and seeding)."""
    return {item: pack_entry(times.get(item), weights.get(item)) for item in times.keys() | weights.keys()}


def pack_vector(vec: bytes, tag: str) -> bytes:
    """The STRING value of a vector key: the model tag, a NUL byte, the float32 bytes."""
    return tag.encode() + b"\0" + vec


def unpack_vector(raw: Any) -> tuple[bytes | None, str | None]:
    """``(float32 bytes, model tag)`` of a vector key's value; ``(None, None)`` when absent or
    not in this format (the caller treats that as no vector, as it treats a wrong length)."""
    if not raw:
        return None, None
    b = _bytes(raw)
    tag, sep, vec = b.partition(b"\0")
    if not sep:
        return None, None
    return (vec or None), tag.decode("utf-8", "surrogateescape")


_COUNT = struct.Struct("<I")


def pack_clicks(times: Mapping[str, float]) -> bytes:
    """The STRING value of a click-log key from a history (item -> last click time)."""
    if not times:
        return _COUNT.pack(0)
    # (time, item) tuples sort in C with no key function, ties by item as a sorted set orders them.
    ts, ids = zip(*sorted(zip(times.values(), times.keys(), strict=True)), strict=True)
    return struct.pack(f"<I{len(ts)}d", len(ts), *ts) + "\0".join(ids).encode("utf-8", "surrogateescape")


def unpack_clicks(raw: Any) -> tuple[tuple[float, ...], str]:
    """``(times, ids)`` of a click-log value, oldest first, the ids still joined by NUL (the
    session_knn source splits off only the few it takes: ``ids.rsplit("\0", k)``); ``((), "")``
    when absent or malformed."""
    if not raw:
        return (), ""
    b = _bytes(raw)
    end = 4 + 8 * _COUNT.unpack_from(b)[0] if len(b) >= 4 else 0
    if end <= 4 or len(b) <= end:
        return (), ""
    times = struct.unpack_from(f"<{(end - 4) >> 3}d", b, 4)
    ids = b[end:].decode("utf-8", "surrogateescape")
    if ids.count("\0") != len(times) - 1:
        logger.warning("ignoring a malformed click log (%d times, %d ids)", len(times), ids.count("\0") + 1)
        return (), ""
    return times, ids
