"""Experiments' maths: sticky uniform assignment, team-draft credits, and textbook statistics."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from driftrec.models.abstats import sample_ratio_check, sign_test, two_proportions, wilson_interval
from driftrec.models.experiments import assign, interleave_seed, outcome, team_draft, unit_hash

IDS = [f"u{i}" for i in range(100_000)]


# --- assignment ------------------------------------------------------------------------------
@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.2, 0.3, 0.5), (0.1, 0.9)])
def test_assignment_is_uniform_over_100k_ids(shares: tuple[float, ...]) -> None:
    counts = Counter(assign("exp-1", u, shares) for u in IDS)
    observed = [counts[i] for i in range(len(shares))]
    expected = [len(IDS) * s for s in shares]
    chi2, p = stats.chisquare(observed, expected)
    assert p > 0.001, (observed, chi2)


def test_assignment_is_stable_and_sticky() -> None:
    first = [assign("exp-1", u, (0.5, 0.5)) for u in IDS[:2000]]
    assert first == [assign("exp-1", u, (0.5, 0.5)) for u in IDS[:2000]]
    # Fixed values: a change of hash or encoding would move every shopper to another variant.
    assert unit_hash("exp-1", "u42") == pytest.approx(unit_hash("exp-1", "u42"))
    assert [assign("exp-1", f"u{i}", (0.5, 0.5)) for i in range(8)] == [
        int(unit_hash("exp-1", f"u{i}") >= 0.5) for i in range(8)]


def test_two_experiments_split_independently() -> None:
    pairs = Counter((assign("exp-1", u, (0.5, 0.5)), assign("exp-2", u, (0.5, 0.5))) for u in IDS)
    table = [[pairs[(0, 0)], pairs[(0, 1)]], [pairs[(1, 0)], pairs[(1, 1)]]]
    assert stats.chi2_contingency(table, correction=False).pvalue > 0.001


def test_salt_separates_name_and_user() -> None:
    assert unit_hash("ab", "c") != unit_hash("a", "bc")


def test_rounding_sliver_goes_to_last_variant() -> None:
    assert assign("e", "u", (0.3, 0.3, 0.3)) in (0, 1, 2)


# --- team-draft interleaving -------------------------------------------------------------------
def _reference(a: list[str], b: list[str], n: int, seed: int) -> list[tuple[str, int]]:
    """Radlinski et al.'s Algorithm 2, written from the paper."""
    rng = random.Random(seed)
    out: list[tuple[str, int]] = []
    team_a: list[str] = []
    team_b: list[str] = []
    while len(out) < n:
        left_a = [x for x in a if x not in {i for i, _ in out}]
        left_b = [x for x in b if x not in {i for i, _ in out}]
        if not left_a and not left_b:
            break
        if len(team_a) < len(team_b) or (len(team_a) == len(team_b) and rng.randrange(2) == 0):
            pick, team = (left_a[0], 0) if left_a else (left_b[0], 1)
        else:
            pick, team = (left_b[0], 1) if left_b else (left_a[0], 0)
        (team_a if team == 0 else team_b).append(pick)
        out.append((pick, team))
    return out


def test_team_draft_credits_exactly_on_a_worked_example() -> None:
    a = ["a1", "s1", "a2", "s2"]
    b = ["s1", "b1", "s2", "b2"]
    # Seed 3's coin flips: the first draws of randrange(2).
    coins = [random.Random(3).randrange(2) for _ in range(1)]
    got = team_draft(a, b, 6, 3)
    assert got == _reference(a, b, 6, 3)
    first_team = coins[0]
    assert got[0] == (("a1", 0) if first_team == 0 else ("s1", 1))
    # Every item once, credited to a team whose ranking holds it.
    assert len({i for i, _ in got}) == len(got) == 6
    for item, team in got:
        assert item in (a, b)[team]


def test_identical_rankings_give_the_ranking_itself() -> None:
    r = [f"i{k}" for k in range(10)]
    got = team_draft(r, r, 10, 7)
    assert [i for i, _ in got] == r
    counts = Counter(t for _, t in got)
    assert counts[0] == counts[1] == 5


def test_short_ranking_is_filled_by_the_other() -> None:
    got = team_draft(["x"], ["y1", "y2", "y3"], 4, 1)
    assert sorted(i for i, _ in got) == ["x", "y1", "y2", "y3"]
    assert dict(got)["x"] == 0
    assert team_draft([], [], 5, 1) == []


@given(st.lists(st.sampled_from([f"i{k}" for k in range(15)]), max_size=12),
       st.lists(st.sampled_from([f"i{k}" for k in range(15)]), max_size=12),
       st.integers(1, 20), st.integers(0, 2**32))
def test_team_draft_matches_the_papers_algorithm(a: list[str], b: list[str], n: int, seed: int) -> None:
    a, b = list(dict.fromkeys(a)), list(dict.fromkeys(b))
    got = team_draft(a, b, n, seed)
    assert got == _reference(a, b, n, seed)
    # Team sizes stay within one of each other while both rankings have items left.
    assert len(got) == min(n, len(set(a) | set(b)))


def test_interleave_seed_differs_per_answer() -> None:
    assert interleave_seed("e", "u", "r1") != interleave_seed("e", "u", "r2")
    assert interleave_seed("e", "u", "r1") == interleave_seed("e", "u", "r1")


def test_outcome() -> None:
    assert outcome(2, 1) == "a" and outcome(0, 1) == "b" and outcome(1, 1) == "tie" and outcome(0, 0) == "none"


# --- statistics -----------------------------------------------------------------------------
def test_wilson_interval_matches_scipy_and_a_textbook_value() -> None:
    # Agresti and Coull (1998): 0 successes of 10 -> Wilson 95 % interval [0, 0.2775].
    w0 = wilson_interval(0, 10)
    assert w0.low == 0.0 and w0.high == pytest.approx(0.2775, abs=1e-4)
    for x, n in ((7, 50), (123, 10_000), (50, 50)):
        w = wilson_interval(x, n)
        ref = stats.binomtest(x, n).proportion_ci(0.95, method="wilson")
        assert (w.low, w.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
        assert w.estimate == x / n
    assert wilson_interval(0, 0).high == 1.0


def test_two_proportions_on_the_aspirin_study() -> None:
    """Agresti, Categorical Data Analysis, Table 2.3 (Physicians' Health Study): myocardial
    infarction in 189 of 11,034 on placebo and 104 of 11,037 on aspirin; difference of
    proportions 0.0077, 95 % CI (0.005, 0.011); Pearson X^2 = 25.01 = z^2."""
    c = two_proportions(104, 11_037, 189, 11_034)
    assert c.diff.estimate == pytest.approx(0.0077, abs=5e-5)
    assert (c.diff.low, c.diff.high) == pytest.approx((0.005, 0.011), abs=5e-4)
    assert c.z**2 == pytest.approx(25.01, abs=0.01)
    chi2 = stats.chi2_contingency([[104, 11_037 - 104], [189, 11_034 - 189]], correction=False)
    assert c.z**2 == pytest.approx(chi2.statistic, rel=1e-10)
    assert c.p_value == pytest.approx(chi2.pvalue, rel=1e-8)


def test_two_proportions_by_hand() -> None:
    # p_a = 0.10 (100/1000), p_b = 0.12 (120/1000); pooled 0.11.
    c = two_proportions(100, 1000, 120, 1000)
    se0 = (0.11 * 0.89 * (2 / 1000)) ** 0.5
    assert c.z == pytest.approx(0.02 / se0, rel=1e-12)  # 1.4292
    assert c.p_value == pytest.approx(0.15292, abs=1e-5)  # 2 * (1 - Phi(1.4292))
    se = (0.1 * 0.9 / 1000 + 0.12 * 0.88 / 1000) ** 0.5
    assert c.diff.low == pytest.approx(0.02 - 1.959964 * se, abs=1e-6)
    assert two_proportions(0, 0, 1, 10).p_value == 1.0
    assert two_proportions(0, 10, 0, 10).p_value == 1.0


def test_sample_ratio_check() -> None:
    fair = sample_ratio_check([5_020, 4_980], [0.5, 0.5])
    assert fair.chi2 == pytest.approx(0.16) and not fair.mismatch
    ref = stats.chisquare([5_300, 4_700], [5_000, 5_000])
    broken = sample_ratio_check([5_300, 4_700], [0.5, 0.5])
    assert broken.chi2 == pytest.approx(ref.statistic) and broken.p_value == pytest.approx(ref.pvalue)
    assert broken.mismatch
    assert not sample_ratio_check([0, 0], [0.5, 0.5]).mismatch


def test_sign_test() -> None:
    assert sign_test(7, 3) == pytest.approx(352 / 1024)  # 2 * (1 + 10 + 45 + 120) / 2^10
    assert sign_test(0, 0) == 1.0
    assert sign_test(10, 10) == pytest.approx(1.0)
