"""Unit tests of the data-set loaders: each layout from small files, then the real files."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from driftrec.datasets import (
    DatasetError,
    EventLog,
    detect_layout,
    load_any,
    load_generic_csv,
    load_movielens,
    load_online_retail,
    load_retailrocket,
    shared_datasets_dir,
)
from driftrec.errors import DriftrecError
from driftrec.events import validate_event

SHARED = shared_datasets_dir()


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def _check(log: EventLog) -> list[dict[str, Any]]:
    """Every event valid, time-sorted, ids unique; the stats add up."""
    evs = list(log)
    for ev in evs:
        validate_event(ev)
    assert all(a["timestamp"] <= b["timestamp"] for a, b in itertools.pairwise(evs))
    assert len({e["event_id"] for e in evs}) == len(evs) == len(log) == log.stats.events
    assert log.stats.rows_read == log.stats.events + log.stats.rows_dropped
    return evs


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- MovieLens -----------------------------------------------------------------------------
def test_movielens_csv_with_genres(tmp_path: Path) -> None:
    ratings = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n"
                     "1,10,5.0,964982703\n1,20,3.5,964982000\n2,30,2.0,964981000\n"
                     "2,40,oops,964981500\n2,10,4.5,964981000\n")
    _write(tmp_path / "movies.csv", 'movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n'
           "20,Up (2009),Animation\n30,Odd (2000),(no genres listed)\n")
    log = load_movielens(ratings)
    evs = _check(log)
    assert [(e["event_id"], e["type"]) for e in evs] == [
        ("movielens:3", "view"), ("movielens:5", "purchase"), ("movielens:2", "add_to_cart"),
        ("movielens:1", "purchase")]  # time order; ties keep file order
    assert evs[0]["timestamp"] == 964981000.0 and evs[0]["properties"] == {"rating": 2.0}
    assert "category" not in evs[0]  # "(no genres listed)"
    assert evs[1]["category"] == "Action" and evs[2]["category"] == "Animation"
    assert log.stats.dropped == {"bad_row": 1}
    assert [e["event_id"] for e in load_movielens(tmp_path)] == [e["event_id"] for e in evs]
    custom = list(load_movielens(ratings, purchase_at=5.0, cart_at=4.5))
    assert [e["type"] for e in custom] == ["view", "add_to_cart", "view", "purchase"]


def test_movielens_100k_layout(tmp_path: Path) -> None:
    data = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t5\t891717742\n"
                  "22\t377\t1\t878887116\n")
    flags = lambda on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    _write(tmp_path / "u.item",
           f"242|Kolya (1996)|24-Jan-1997||http://x|{flags({8})}\n"
           f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|{flags({6, 10, 16})}\n"
           f"377|Heavyweights (1994)|01-Jan-1994||http://x|{flags({0})}\n", encoding="latin-1")
    evs = _check(load_any(data))
    assert [e["event_id"] for e in evs] == ["ml100k:3", "ml100k:1", "ml100k:2"]
    assert [e["type"] for e in evs] == ["view", "view", "purchase"]
    assert [e.get("category") for e in evs] == [None, "Drama", "Crime"]


# --- UCI Online Retail ---------------------------------------------------------------------
RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def test_online_retail_purchases_and_drops(tmp_path: Path) -> None:
    path = _write(tmp_path / "online_retail.csv", RETAIL_HEADER +
                  "536365,85123A,\"HEART, WHITE\",6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
                  "536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,United Kingdom\n"
                  "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom\n"
                  "A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,11062.06,12345.0,United Kingdom\n"
                  "536370,POST,POSTAGE,3,2010-12-01 08:45:00,18.0,12583.0,France\n"
                  "536371,22728,ALARM CLOCK,-2,2010-12-01 09:00:00,3.75,12583.0,France\n"
                  "536372,BANK CHARGES,Bank,1,2010-12-01 09:01:00,15.0,12583.0,France\n"
                  "555000,21212,CAKE CASES,24,2011-06-01 12:00:00,0.55,13047.0,United Kingdom\n"
                  "555001,21212,CAKE CASES,24,not a date,0.55,13047.0,United Kingdom\n"
                  "555002,21212,short row\n")
    log = load_online_retail(path)
    evs = _check(log)
    assert [(e["user_id"], e["item_id"]) for e in evs] == [("17850", "85123A"), ("13047", "21212")]
    assert all(e["type"] == "purchase" for e in evs)
    assert evs[0]["timestamp"] == _utc("2010-12-01 08:26:00")  # GMT in winter
    assert evs[1]["timestamp"] == _utc("2011-06-01 11:00:00")  # BST: UK clock is UTC+1
    assert evs[0]["session_id"] == "inv-536365" and evs[0]["event_id"] == "online-retail:1"
    assert evs[0]["properties"] == {"quantity": 6, "unit_price": 2.55}
    assert log.stats.dropped == {"no_customer": 1, "cancellation": 1, "adjustment": 1,
                                 "non_product": 2, "non_positive_quantity": 1,
                                 "bad_timestamp": 1, "bad_row": 1}
    kept = load_online_retail(path, drop_non_products=False)
    assert {e["item_id"] for e in kept} == {"85123A", "21212", "POST"}  # "BANK CHARGES": bad_id
    assert kept.stats.dropped["bad_id"] == 1


def test_online_retail_uci_original_layout(tmp_path: Path) -> None:
    path = _write(tmp_path / "retail.csv", RETAIL_HEADER +
                  "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom\n")
    assert detect_layout(path)[0] == "online_retail"
    (ev,) = _check(load_any(path))
    assert ev["timestamp"] == _utc("2010-12-01 08:26:00") and ev["user_id"] == "17850"


# --- RetailRocket --------------------------------------------------------------------------
def test_retailrocket_is_sorted_and_mapped(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.csv", "timestamp,visitorid,event,itemid,transactionid\n"
                  "1433222276276,599528,transaction,356475,4000\n"
                  "1433221332117,257597,view,355908,\n"
                  "1433224214164,992329,addtocart,248676,\n"
                  "1433221999827,111016,like,318965,\n"
                  "x,1,view,2,\n")
    log = load_retailrocket(path)
    evs = _check(log)
    assert [(e["event_id"], e["type"]) for e in evs] == [
        ("retailrocket:2", "view"), ("retailrocket:1", "purchase"),
        ("retailrocket:3", "add_to_cart")]
    assert evs[0]["timestamp"] == 1433221332.117
    assert evs[1]["properties"] == {"transaction_id": "4000"} and "properties" not in evs[0]
    assert log.stats.dropped == {"unknown_type": 1, "bad_row": 1}


# --- generic CSV ---------------------------------------------------------------------------
def test_generic_csv(tmp_path: Path) -> None:
    path = _write(tmp_path / "clicks.csv", "\ufefftimestamp,user,item,type,category,session_id\n"
                  "2024-05-01T10:00:00Z,u1,sku-1,view,shoes,s1\n"
                  "1714557600500,u1,sku-2,addtocart,shoes,s1\n"
                  "1714557500,u2,sku-3,Transaction,,\n"
                  "1714557700,u2,sku-3,wishlist,,\n"
                  "2024-05-01T10:00:00,u3,sku-4,view,,\n"
                  "1714557800,bad user,sku-4,view,,\n"
                  "1714557900,u4,sku-5\n")
    log = load_generic_csv(path)
    evs = _check(log)
    assert [(e["event_id"], e["type"]) for e in evs] == [
        ("clicks:3", "purchase"), ("clicks:1", "view"), ("clicks:2", "add_to_cart")]
    assert evs[1]["timestamp"] == 1714557600.0 and evs[2]["timestamp"] == 1714557600.5
    assert evs[1]["category"] == "shoes" and evs[1]["session_id"] == "s1"
    assert "category" not in evs[0] and "session_id" not in evs[0]
    assert log.stats.dropped == {"unknown_type": 1, "bad_timestamp": 1, "bad_id": 1,
                                 "bad_row": 1}
    utc = load_generic_csv(path, assume_tz="UTC", allowed_types=("view", "add_to_cart",
                                                                 "purchase", "wishlist"))
    assert len(utc) == 5 and utc.stats.dropped == {"bad_id": 1, "bad_row": 1}


# --- detection and errors ------------------------------------------------------------------
def test_load_any_detects_each_layout(tmp_path: Path) -> None:
    files = {
        "movielens": ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,4.0,964982703\n"),
        "online_retail": ("o.csv", RETAIL_HEADER + "1,2,x,1,2011-01-01 00:00:00,1.0,3.0,UK\n"),
        "retailrocket": ("e.csv", "timestamp,visitorid,event,itemid,transactionid\n1,2,view,3,\n"),
        "generic": ("g.csv", "user_id,item_id,event_type,ts\n1,2,view,1700000000\n"),
    }
    for layout, (name, text) in files.items():
        folder = tmp_path / layout
        folder.mkdir()
        path = _write(folder / name, text)
        assert detect_layout(path) == (layout, path)
        assert len(_check(load_any(path))) == 1
    assert detect_layout(tmp_path / "movielens")[0] == "movielens"  # a folder works too
    assert len(load_any(tmp_path / "movielens" / "ratings.csv", max_rows=0)) == 0


def test_unknown_or_missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(DatasetError):
        load_any(_write(tmp_path / "x.csv", "a,b,c\n1,2,3\n"))
    with pytest.raises(DriftrecError):
        load_any(tmp_path / "missing.csv")
    with pytest.raises(DatasetError):
        load_movielens(_write(tmp_path / "r.csv", "user,item,type,timestamp\n"))
    with pytest.raises(DatasetError):
        load_retailrocket(_write(tmp_path / "e.csv", "ts,visitor\n"))


# --- the real files (../shared/datasets) ---------------------------------------------------------
def _real(relative: str) -> Path:
    """A real data set's file. The data sets are licensed and never committed: a clone without
    the folder (``$DRIFTREC_DATASETS`` or ``../shared/datasets``) skips these tests and says so;
    a folder that is there but lacks a file fails."""
    if not SHARED.is_dir():
        pytest.skip(f"no real data sets here ({SHARED} does not exist; see docs/datasets.md)")
    path = SHARED / relative
    assert path.is_file(), f"real data set missing: {path} (see docs/datasets.md)"
    return path


def test_real_movielens_small() -> None:
    log = load_any(_real("ml-latest-small/ratings.csv"), max_rows=3000)
    evs = _check(log)
    assert log.stats.rows_read == 3000 and len(evs) == 3000
    assert sum("category" in e for e in evs) > 0.99 * len(evs)  # genres joined from movies.csv
    assert {e["type"] for e in evs} == {"view", "add_to_cart", "purchase"}
    assert evs[0]["timestamp"] >= _utc("1996-03-29 18:36:55")


def test_real_online_retail() -> None:
    log = load_any(_real("uci-online-retail/online_retail.csv"), max_rows=5000)
    evs = _check(log)
    assert log.stats.rows_read == 5000
    assert log.stats.dropped["no_customer"] > 0 and len(evs) > 3000
    assert all(e["type"] == "purchase" for e in evs)
    assert evs[0]["event_id"] == "online-retail:1" and evs[0]["item_id"] == "85123A"
    assert evs[0]["timestamp"] == _utc("2010-12-01 08:26:00")


def test_real_retailrocket_sample() -> None:
    log = load_any(_real("retailrocket-sample/events.csv"), max_rows=3000)
    evs = _check(log)
    assert log.stats.rows_read == 3000 and len(evs) == 3000
    assert {e["type"] for e in evs} <= {"view", "add_to_cart", "purchase"}
    assert sum(e["type"] == "view" for e in evs) > 0.9 * len(evs)
    assert _utc("2015-05-03 00:00:00") <= evs[0]["timestamp"] < _utc("2015-09-19 00:00:00")
