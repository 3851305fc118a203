"""The reader's fast decode of a user's item hash equals driftrec.userstate's, on every reply shape."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.online.store import user_state
from driftrec.userstate import decode_fields, pack_entry

halves = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.5, 1.7e9]), st.floats(allow_nan=False, allow_infinity=False))
items = st.text(alphabet="ab01._:é", min_size=1, max_size=6)


def _resp3(fields: dict[str, bytes]) -> dict[str, str]:
    # What the raw pool's hiredis parser (utf-8, surrogateescape) hands the store.
    return {f: v.decode("utf-8", "surrogateescape") for f, v in fields.items()}


@settings(max_examples=300, deadline=None)
@given(entries=st.dictionaries(items, st.tuples(halves, halves), max_size=12),
       junk=st.dictionaries(items, st.binary(max_size=20), max_size=2))
def test_user_state_equals_decode_fields(entries: dict[str, tuple[float | None, float | None]],
                                         junk: dict[str, bytes]) -> None:
    fields = {i: pack_entry(t, w) for i, (t, w) in entries.items()}
    fields.update(junk)  # values of the wrong size (or, by chance, of the right one)
    assert user_state(_resp3(fields)) == decode_fields(_resp3(fields))
    flat: list[bytes] = [x for f, v in fields.items() for x in (f.encode(), v)]
    assert user_state(flat) == decode_fields(flat)  # RESP2 / redis-py replies: decode_fields itself
