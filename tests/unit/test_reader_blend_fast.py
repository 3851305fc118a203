"""models.blend.blend equals its plain definition (the loop the reader was first written with).

The fast version ranks only the items that can make the top n and names each shown item's
source and "because" item afterwards; this checks, on generated candidates with many ties,
zeros, negatives and non-finite scores, that items, scores (bit for bit), sources and reasons
are those of the definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from driftrec.models.blend import (
    SOURCES,
    BlendWeights,
    Candidates,
    Scored,
    _reason,
    blend,
    blend_each,
)


def _definition(c: Candidates, n: int, exclude: set[str], weights: BlendWeights, shrinkage: float) -> list[Scored]:
    scores: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    top_weight = max((w for _, w in c.recent), default=0.0)
    if weights.item_item > 0 and top_weight > 0:
        for r, w in c.recent:
            for j, co in c.neighbours.get(r, ()):
                den = math.sqrt(c.norms.get(r, 0.0)) * math.sqrt(c.norms.get(j, 0.0)) + shrinkage
                s = (w / top_weight) * (co / den) if den > 0 else 0.0
                if s <= 0:
                    continue
                scores[j] = scores.get(j, 0.0) + s
                if s > best.get(j, (-1.0, ""))[0]:
                    best[j] = (s, r)
    because = {j: r for j, (_, r) in best.items()}

    def normalised(pairs: Mapping[str, float] | Sequence[tuple[str, float]]) -> dict[str, float]:
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        d = {i: s for i, s in items if s > 0 and math.isfinite(s)}
        top = max(d.values(), default=0.0)
        return {i: s / top for i, s in d.items()} if top > 0 else {}

    raw = {"item_item": scores, "user_vector": c.vector_scores, "tf": c.tf_scores,
           "similar_users": c.similar_users, "trending": c.trending}
    total: dict[str, float] = {}
    top_part: dict[str, tuple[float, str]] = {}
    for name, pairs in raw.items():
        w = getattr(weights, name)
        if w <= 0:
            continue
        for item, s in normalised(pairs).items():
            if item in exclude:
                continue
            total[item] = total.get(item, 0.0) + w * s
            if w * s > top_part.get(item, (-1.0, ""))[0]:
                top_part[item] = (w * s, name)
    if weights.trending <= 0:
        for item, s in normalised(c.trending).items():
            if item not in exclude and item not in total:
                total[item] = 1e-9 * s
                top_part[item] = (0.0, "trending")
    ranked = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [Scored(i, s, top_part[i][1], _reason(top_part[i][1], i, because, c.trending_label)) for i, s in ranked]


ITEMS = [f"i{k}" for k in range(14)]
score = st.one_of(st.sampled_from([0.0, -1.0, 1.0, 2.0, 0.5, math.inf, math.nan]), st.floats(0, 10))
pairs = st.dictionaries(st.sampled_from(ITEMS), score, max_size=10).map(lambda d: list(d.items()))


@st.composite
def candidates(draw: st.DrawFn) -> Candidates:
    recent = draw(st.dictionaries(st.sampled_from(ITEMS), st.sampled_from([0.0, 1.0, 2.0, 0.25]), max_size=5))
    neighbours = {r: draw(st.dictionaries(st.sampled_from(ITEMS), st.sampled_from([0.0, 1.0, 3.0, 0.5]),
                                          max_size=6).map(lambda d: list(d.items()))) for r in recent}
    norms = draw(st.dictionaries(st.sampled_from(ITEMS), st.sampled_from([0.0, 1.0, 4.0, 9.0]), max_size=14))
    return Candidates(recent=list(recent.items()), neighbours=neighbours, norms=norms,
                      vector_scores=draw(pairs), tf_scores=draw(pairs), similar_users=draw(pairs),
                      trending=draw(pairs), trending_label=draw(st.sampled_from([None, "shoes"])))


weights = st.builds(BlendWeights, **{s: st.sampled_from([0.0, 1.0, 0.5, 0.3]) for s in SOURCES})


@settings(max_examples=600, deadline=None)
@given(c=candidates(), n=st.integers(1, 15), exclude=st.sets(st.sampled_from(ITEMS), max_size=4), w=weights,
       shrinkage=st.sampled_from([0.0, 5.0, 0.5]))
def test_blend_equals_its_definition(c: Candidates, n: int, exclude: set[str], w: BlendWeights, shrinkage: float) -> None:
    got = blend(c, n, exclude=exclude, weights=w, shrinkage=shrinkage)
    want = _definition(c, n, exclude, w, shrinkage)
    assert got == want


@settings(max_examples=300, deadline=None)
@given(c=candidates(), n=st.integers(1, 15), exclude=st.sets(st.sampled_from(ITEMS), max_size=4),
       ws=st.lists(weights, min_size=1, max_size=3), shrinkage=st.sampled_from([0.0, 5.0, 0.5]))
def test_blend_each_equals_one_blend_per_weights(c: Candidates, n: int, exclude: set[str], ws: list[BlendWeights],
                                                 shrinkage: float) -> None:
    """Sharing the weight-independent work between rankings (an interleaved answer's two) changes
    none of them: items, scores bit for bit, sources and reasons."""
    got = blend_each(c, n, ws, exclude=exclude, shrinkage=shrinkage)
    assert got == [blend(c, n, exclude=exclude, weights=w, shrinkage=shrinkage) for w in ws]
    assert got == [_definition(c, n, exclude, w, shrinkage) for w in ws]
