"""Statistics of online experiments (no I/O): rates with intervals, two-variant tests, split checks.

The unit of an A/B split is the served answer: a rate is answers with at least one click of a
kind over answers served. Shoppers, not answers, are randomised, so answers of one shopper are
correlated; the A/A runs of ``benchmarks/experiments.py`` measure how far that moves the false-
positive rate from its nominal level. An interleaved answer is one paired comparison: the
variant credited with more of its clicks wins it, and a sign test asks whether wins split evenly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

__all__ = [
    "Interval",
    "Comparison",
    "SplitCheck",
    "wilson_interval",
    "two_proportions",
    "sample_ratio_check",
    "sign_test",
    "SRM_ALPHA",
]

logger = logging.getLogger(__name__)

#: p-value under which a split is flagged as broken. Strict on purpose: with millions of answers
#: a real sample-ratio mismatch gives p-values far below it, while a fair split trips a 5 % test
#: in one experiment in twenty (Fabijan et al., KDD 2019, use 0.0005).
SRM_ALPHA = 0.001


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with its two-sided confidence interval."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Comparison:
    """Variant ``b`` against variant ``a``: ``diff`` = rate(b) - rate(a), its interval, the test."""

    diff: Interval
    z: float
    p_value: float


@dataclass(frozen=True, slots=True)
class SplitCheck:
    """Pearson chi-square of observed answers per variant against the configured shares."""

    chi2: float
    p_value: float
    mismatch: bool


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion (Wilson 1927; Agresti and Coull 1998).

    Unlike the Wald interval it stays inside ``[0, 1]`` and keeps its coverage at the small
    rates clicks have. With ``n = 0`` the estimate is 0 and the interval ``[0, 1]``.
    """
    if n <= 0:
        return Interval(0.0, 0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def two_proportions(x_a: int, n_a: int, x_b: int, n_b: int, confidence: float = 0.95) -> Comparison:
    """Two-proportion z-test of rate(b) = rate(a), and the interval of their difference.

    The test uses the pooled rate under the null, ``se0 = sqrt(p(1-p)(1/n_a + 1/n_b))``; the
    interval the unpooled (Wald) standard error ``sqrt(p_a(1-p_a)/n_a + p_b(1-p_b)/n_b)``, as
    textbooks pair them (e.g. Agresti, *Categorical Data Analysis*, 3rd ed., 3.1.4 and 3.1.2).
    With no answers, or no variance, the p-value is 1.
    """
    if n_a <= 0 or n_b <= 0:
        return Comparison(Interval(0.0, -1.0, 1.0), 0.0, 1.0)
    p_a, p_b = x_a / n_a, x_b / n_b
    diff = p_b - p_a
    pooled = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = diff / se0 if se0 > 0 else 0.0
    p_value = float(2 * stats.norm.sf(abs(z))) if se0 > 0 else 1.0
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    half = _z(confidence) * se
    return Comparison(Interval(diff, diff - half, diff + half), z, p_value)


def sample_ratio_check(observed: Sequence[int], shares: Sequence[float], alpha: float = SRM_ALPHA) -> SplitCheck:
    """Sample-ratio-mismatch check: chi-square goodness of fit of ``observed`` to ``shares``.

    ``mismatch`` is True when the p-value is below ``alpha``: the split itself is broken (a
    variant crashes, a cache serves one variant's answers, bots hash to one side), and no
    comparison of the variants can be trusted.
    """
    total = sum(observed)
    if total <= 0 or len(observed) < 2:
        return SplitCheck(0.0, 1.0, False)
    expected = [total * s for s in shares]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True) if e > 0)
    p_value = float(stats.chi2.sf(chi2, len(observed) - 1))
    return SplitCheck(chi2, p_value, p_value < alpha)


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact binomial (sign) test p-value of ``wins_b`` out of ``wins_a + wins_b`` at 1/2.

    The interleaving test of Chapelle et al. (*Large-scale validation and analysis of
    interleaved search evaluation*, TOIS 2012): ties and answers without clicks carry no
    preference and are left out.
    """
    m = wins_a + wins_b
    if m <= 0:
        return 1.0
    return float(stats.binomtest(wins_b, m, 0.5).pvalue)
