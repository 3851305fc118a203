"""Query and path parameter parsing of the reader: bad input is a 400, ids stay inside their keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftrec.errors import InvalidRequestError
from driftrec.keys import Keys
from driftrec.models.blend import BlendWeights
from driftrec.online.params import (
    category_param,
    check_id,
    float_param,
    id_list_param,
    int_param,
    reject_unknown,
)
from driftrec.online.routes_recs import parse_weights


def test_ids() -> None:
    assert check_id("sku-1:a/b@c+d.e_f", "item_id") == "sku-1:a/b@c+d.e_f"
    for bad in ["", "a b", "a{b}", "x*", "é", "a" * 129, "a\nb", "a}b"]:
        with pytest.raises(InvalidRequestError):
            check_id(bad, "item_id")


@given(st.text(max_size=200))
def test_an_accepted_id_stays_in_its_own_key(text: str) -> None:
    """No accepted id can add a hash tag or a glob: the key keeps its prefix and its slot tag."""
    try:
        user = check_id(text, "user_id")
    except InvalidRequestError:
        return
    key = Keys("p").user_state(user)
    assert key == "p:{u:" + user + "}:iw"
    assert key.count("{") == 1 and key.count("}") == 1
    assert not set(user) & set("{}*?[] \\")


def test_int_param() -> None:
    assert int_param({}, "n", 10, 1, 100) == 10
    assert int_param({"n": "7"}, "n", 10, 1, 100) == 7
    for bad in ["0", "101", "x", "1.5", "", "9" * 30, "1e3"]:
        with pytest.raises(InvalidRequestError):
            int_param({"n": bad}, "n", 10, 1, 100)


def test_float_param() -> None:
    assert float_param({}, "w", 0, 1) is None
    assert float_param({"w": "0.5"}, "w", 0, 1) == 0.5
    for bad in ["nan", "inf", "-1", "2", "x"]:
        with pytest.raises(InvalidRequestError):
            float_param({"w": bad}, "w", 0, 1)


def test_id_lists_and_categories() -> None:
    assert id_list_param({"exclude": "a,b,,a"}, "exclude") == ["a", "b"]
    with pytest.raises(InvalidRequestError):
        id_list_param({"exclude": "a,{b}"}, "exclude")
    with pytest.raises(InvalidRequestError):
        id_list_param({"exclude": ",".join(f"i{k}" for k in range(101))}, "exclude")
    assert category_param({"category": "Home & Garden"}) == "Home & Garden"
    for bad in ["", "x" * 65, "a\x00b", "a\nb"]:
        with pytest.raises(InvalidRequestError):
            category_param({"category": bad})


def test_unknown_parameters_are_refused() -> None:
    reject_unknown({"n": "1"}, frozenset({"n"}))
    with pytest.raises(InvalidRequestError):
        reject_unknown({"nn": "1"}, frozenset({"n"}))


def test_weights_and_strategies() -> None:
    base = BlendWeights()
    assert parse_weights({}, base) == base
    only = parse_weights({"strategy": "item_item"}, base)
    assert only.item_item == 1.0 and only.trending == 0.0 and only.user_vector == 0.0
    w = parse_weights({"weights": "trending:0.5,tf:0"}, base)
    assert w.trending == 0.5 and w.tf == 0.0 and w.item_item == base.item_item
    for bad in [{"strategy": "magic"}, {"weights": "nope:1"}, {"weights": "tf"}, {"weights": "tf:x"},
                {"weights": "tf:-1"}, {"weights": "tf:nan"}, {"weights": "tf:inf"}]:
        with pytest.raises(InvalidRequestError):
            parse_weights(bad, base)
