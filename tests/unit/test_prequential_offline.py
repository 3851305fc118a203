"""The offline protocol reads MovieLens-100k's ``u.data`` layout and scores by hand-checkable numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftrec.evaluate import offline

U_DATA = """1\t10\t5\t881250949
1\t20\t3\t881250950
1\t30\t4\t881250951
1\t40\t4\t881250952
2\t10\t3\t881250949
2\t20\t4\t881250950
2\t50\t4\t881250953
2\t30\t1\t881250954
3\t20\t5\t881250955
3\t30\t4\t881250956
3\t40\t2\t881250957
3\t60\t2\t881250958
"""


@pytest.mark.parametrize("split", ["stratified", "time"])
def test_offline_reads_u_data_and_scores_by_hand(tmp_path: Path, split: str) -> None:
    f = tmp_path / "u.data"
    f.write_text(U_DATA)
    report = offline(f, models=("pop", "itemknn"), split=split)
    assert (report["users"], report["items"], report["train"], report["test"]) == (3, 6, 9, 3)
    for m in report["models"].values():
        # each user keeps 3 of 4 ratings; 6 - 3 = 3 candidates remain, so the held-out item is
        # always in the top 10: one hit out of k=10 slots, all of the user's one test item
        assert m["precision"] == pytest.approx(0.1) and m["recall"] == pytest.approx(1.0)
        assert 0.0 < m["ndcg"] <= 1.0 and m["users"] == 3


def test_time_split_holds_out_each_users_latest(tmp_path: Path) -> None:
    f = tmp_path / "u.data"
    f.write_text(U_DATA)
    report = offline(f, models=("pop",), split="time")
    # train popularity (users): 10:2 20:3 30:2 40:1 50:1 60:0. Held out: u1 40, u2 30, u3 60.
    # u1 unseen 40,50,60 -> 40 first; u2 unseen 30,40,60 -> 30 first; u3 unseen 10,50,60 -> 60 third
    pop = report["models"]["pop"]
    assert pop["ndcg"] == pytest.approx((1 + 1 + 1 / 2) / 3)  # 1/log2(3+1) = 1/2
    assert pop["map"] == pytest.approx((1 + 1 + 1 / 3) / 3)
