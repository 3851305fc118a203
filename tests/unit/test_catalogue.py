"""The catalogue schema (driftrec/catalogue.py): validation, encoding, filters and file rows."""

from __future__ import annotations

import orjson
import pytest

from driftrec.catalogue import (
    ItemFilter,
    encode_item_event,
    item_info,
    parse_item_event,
    read_item_file,
    validate_item_event,
)
from driftrec.errors import InvalidEventError
from driftrec.runtime import topic_plan
from driftrec.settings import Settings

FULL = {"item_id": "sku-1", "title": "Trail shoe", "category": "shoes", "tags": ["run", "run", "wet"],
        "price": 59.9, "available": True, "image_url": "https://shop.example/1.jpg",
        "properties": {"brand": "Acme"}, "updated_at": 1764275000}


def test_a_full_upsert_round_trips_through_its_encoding() -> None:
    event = validate_item_event(FULL)
    assert event.op == "upsert" and event.tags == ("run", "wet") and event.price == 59.9
    again = parse_item_event(encode_item_event(event), key=b"sku-1")
    assert again == event
    info = item_info(encode_item_event(event))
    assert not info.hidden and info.tags == frozenset({"run", "wet"}) and info.category == "shoes"
    assert info.fields(["title", "price", "tags"]) == {"title": "Trail shoe", "price": 59.9, "tags": ["run", "wet"]}


def test_unavailable_and_deleted_items_are_hidden() -> None:
    assert item_info(encode_item_event(validate_item_event({"item_id": "a", "available": False}))).hidden
    deleted = item_info(encode_item_event(validate_item_event({"op": "delete", "item_id": "a"})))
    assert deleted.hidden and deleted.deleted
    assert not item_info(encode_item_event(validate_item_event({"item_id": "a"}))).hidden


@pytest.mark.parametrize(("bad", "field"), [
    ({"item_id": "has space"}, "item_id"),
    ({"item_id": "a{b}"}, "item_id"),
    ({"title": "no id"}, "item_id"),
    ({"item_id": "a", "price": -1}, "price"),
    ({"item_id": "a", "price": float("nan")}, "price"),
    ({"item_id": "a", "price": "12"}, "price"),
    ({"item_id": "a", "price": True}, "price"),
    ({"item_id": "a", "available": "yes"}, "available"),
    ({"item_id": "a", "tags": "one"}, "tags"),
    ({"item_id": "a", "tags": ["a,b"]}, "tags"),
    ({"item_id": "a", "tags": [f"t{i}" for i in range(33)]}, "tags"),
    ({"item_id": "a", "title": ""}, "title"),
    ({"item_id": "a", "title": "x\ny"}, "title"),
    ({"item_id": "a", "image_url": "javascript:alert(1)"}, "image_url"),
    ({"item_id": "a", "category": "x" * 65}, "category"),
    ({"item_id": "a", "properties": [1]}, "properties"),
    ({"item_id": "a", "op": "remove"}, "op"),
    ({"item_id": "a", "op": "delete", "title": "x"}, "title"),
    ({"item_id": "a", "colour": "red"}, "colour"),
    ({"item_id": "a", "updated_at": "yesterday"}, "updated_at"),
])
def test_bad_items_are_refused_naming_the_field(bad: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidEventError) as err:
        validate_item_event(bad)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:")


def test_the_id_it_was_sent_under_fills_in_or_must_match() -> None:
    assert validate_item_event({"title": "x"}, "sku-9").item_id == "sku-9"
    with pytest.raises(InvalidEventError, match="differs"):
        validate_item_event({"item_id": "sku-1"}, "sku-9")
    with pytest.raises(InvalidEventError, match="differs"):
        parse_item_event(b'{"item_id": "sku-1"}', key=b"sku-2")


def test_raw_messages_that_are_not_items_are_refused() -> None:
    for raw, why in [(None, "no value"), (b"{", "not valid JSON"), (b"[1]", "JSON object"),
                     (b"x" * 20000, "limit"), (b'{"title": "x"}', "item_id")]:
        with pytest.raises(InvalidEventError, match=why):
            parse_item_event(raw, key=b"k")
    with pytest.raises(InvalidEventError, match="encoded"):
        validate_item_event({"item_id": "a", "properties": {f"k{i}": "x" * 600 for i in range(30)}})


def test_a_delete_encodes_only_its_id() -> None:
    raw = encode_item_event(validate_item_event({"op": "delete", "item_id": "a", "updated_at": 5}))
    assert orjson.loads(raw) == {"op": "delete", "item_id": "a", "updated_at": 5.0}


def test_filters_match_tag_and_price_and_never_an_unknown_item() -> None:
    info = item_info(encode_item_event(validate_item_event(FULL)))
    assert ItemFilter().matches(None) and not ItemFilter().active
    assert ItemFilter(tag="run").matches(info) and not ItemFilter(tag="dry").matches(info)
    assert ItemFilter(price_min=59.9, price_max=59.9).matches(info)
    assert not ItemFilter(price_max=50).matches(info) and not ItemFilter(price_min=60).matches(info)
    assert not ItemFilter(tag="run").matches(None)
    no_price = item_info(encode_item_event(validate_item_event({"item_id": "b", "tags": ["run"]})))
    assert ItemFilter(tag="run").matches(no_price) and not ItemFilter(price_max=100).matches(no_price)


def test_csv_rows_become_items() -> None:
    text = ("item_id,title,category,tags,price,available,brand,properties\n"
            'm1,"Toy Story (1995)",Animation,Adventure|Comedy,9.5,no,Pixar,"{""year"": 1995}"\n'
            "m2,Heat,,,,1,,\n")
    rows = list(read_item_file(text))
    assert rows[0] == (2, {"item_id": "m1", "title": "Toy Story (1995)", "category": "Animation",
                           "tags": ["Adventure", "Comedy"], "price": 9.5, "available": False,
                           "properties": {"brand": "Pixar", "year": 1995}})
    assert rows[1] == (3, {"item_id": "m2", "title": "Heat", "available": True})
    assert validate_item_event(rows[0][1]).hidden


def test_json_lines_report_bad_lines_by_number() -> None:
    rows = list(read_item_file('{"item_id": "a"}\n\n{nope\n{"item_id": "b"}\n'))
    assert rows[0] == (1, {"item_id": "a"}) and rows[2] == (4, {"item_id": "b"})
    assert rows[1][0] == 3 and isinstance(rows[1][1], str) and "JSON" in rows[1][1]


def test_the_items_topic_is_created_compacted() -> None:
    s = Settings(items_topic="it", items_dead_letter_topic="it.dlq")
    topics, configs = topic_plan(s)
    assert topics["it"] == s.items_partitions and topics["it.dlq"] == 1
    assert configs == {"it": {"cleanup.policy": "compact"}}


def test_the_readers_fast_decode_of_stored_records_equals_the_validated_one() -> None:
    from driftrec.catalogue import stored_item_info

    for data in (FULL, {"item_id": "a", "available": False}, {"op": "delete", "item_id": "d", "updated_at": 5},
                 {"item_id": "p", "price": 3}, {"item_id": "q", "tags": ["x"], "properties": {"n": [1, 2]}}):
        record = encode_item_event(validate_item_event(data))
        assert stored_item_info(record) == item_info(record) == stored_item_info(record.decode())
    # Not what the worker writes: validated the slow way, which names the problem.
    for bad in (b'{"item_id": "x", "price": "1"}', b'{"item_id": "x", "op": "nope"}', b"{", b"[]"):
        with pytest.raises(InvalidEventError):
            stored_item_info(bad)
