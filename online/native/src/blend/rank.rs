//! `blend_each` and its helpers (`_normalised`, `_top_n`, `_reason` of `models/blend.py`; the
//! item-item terms are in `item_item`), on dense item numbers.
//!
//! Each distinct item id of the request is hashed once, when it is first met, and numbered;
//! sums, normalised scores and exclusions are then arrays indexed by that number. The first
//! version kept a std `HashMap<&str, f64>` per source and for the totals: on the timing case of
//! `tests/blend_parity.py` (callgrind, instructions per blend) 288k with it, 197k with these
//! arrays and foldhash. The arithmetic is Python's, term by term.

use std::cmp::Ordering;

use super::item_item::{item_item_terms, Terms};
use super::{py_max, BlendWeights, Candidates, Map, Pairs, Scored, Set, Source, SOURCES};

/// The request's item ids, numbered in the order first met.
pub(super) struct Ids<'a> {
    number: Map<&'a str, u32>,
    pub(super) names: Vec<&'a str>,
}

impl<'a> Ids<'a> {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            number: Map::with_capacity_and_hasher(capacity, Default::default()),
            names: Vec::with_capacity(capacity),
        }
    }

    pub(super) fn id(&mut self, item: &'a str) -> u32 {
        if let Some(&k) = self.number.get(item) {
            return k;
        }
        let k = self.names.len() as u32;
        self.number.insert(item, k);
        self.names.push(item);
        k
    }

    pub(super) fn len(&self) -> usize {
        self.names.len()
    }

    /// By number: whether the item is in any of `sets`, looking up from whichever side is
    /// smaller (a request's candidates, or a set: its history and asked exclusions, or every
    /// item the catalogue hides, which can be thousands).
    fn excluded(&self, sets: &[&Set<String>]) -> Vec<bool> {
        let mut out = vec![false; self.names.len()];
        for exclude in sets {
            if exclude.len() < self.names.len() {
                for item in exclude.iter() {
                    if let Some(&k) = self.number.get(item.as_str()) {
                        out[k as usize] = true;
                    }
                }
            } else {
                for (k, name) in self.names.iter().enumerate() {
                    out[k] |= exclude.contains(*name);
                }
            }
        }
        out
    }
}

/// `_normalised` of one source: each listed item's score over the largest, for the positive
/// finite scores (a repeated item keeps its last such score, as a dict comprehension does).
struct Normalised {
    /// Candidate numbers with a score, each once.
    listed: Vec<u32>,
    /// By candidate number: the normalised score; NaN where the source has none (a normalised
    /// score is never NaN).
    at: Vec<f64>,
}

impl Normalised {
    fn new(scores: impl IntoIterator<Item = (u32, f64)>, n_ids: usize) -> Self {
        let mut at = vec![f64::NAN; n_ids];
        let mut listed = Vec::new();
        for (k, s) in scores {
            if 0.0 < s && s < f64::INFINITY {
                if at[k as usize].is_nan() {
                    listed.push(k);
                }
                at[k as usize] = s;
            }
        }
        // No NaN is left, so the maximum does not depend on the order.
        let top = py_max(listed.iter().map(|&k| at[k as usize]), 0.0);
        if top > 0.0 {
            for &k in &listed {
                at[k as usize] /= top;
            }
        } else {
            listed.clear();
            at.fill(f64::NAN);
        }
        Self { listed, at }
    }

    fn get(&self, k: u32) -> Option<f64> {
        let s = self.at[k as usize];
        (!s.is_nan()).then_some(s)
    }
}

fn raw_pairs(c: &Candidates, source: Source) -> &Pairs {
    match source {
        Source::UserVector => &c.vector_scores,
        Source::Tf => &c.tf_scores,
        Source::SimilarUsers => &c.similar_users,
        Source::Trending => &c.trending,
        Source::NewItems => &c.new_items,
        Source::SessionKnn => &c.session_knn,
        Source::ItemItem => unreachable!("item-item scores are computed, not read"),
    }
}

/// Descending score, then item id ascending: Python's `key=(-score, item)`. Comparing Rust
/// strings byte-wise orders them as Python's code-point order (UTF-8 keeps code-point order).
fn rank_order(names: &[&str], a: &(u32, f64), b: &(u32, f64)) -> Ordering {
    // No NaN reaches the totals (sums of w · s, w > 0 and s in (0, 1]), except with an infinite
    // weight, which with_overrides refuses; Equal keeps the sort well defined even then.
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then_with(|| names[a.0 as usize].cmp(names[b.0 as usize]))
}

/// `_top_n`: the first `n` of the totals by `rank_order`. Items are distinct, so the order is
/// total and the answer does not depend on the order of `pool`.
fn top_n(mut pool: Vec<(u32, f64)>, n: usize, names: &[&str]) -> Vec<(u32, f64)> {
    if n == 0 {
        return Vec::new();
    }
    if pool.len() > n {
        pool.select_nth_unstable_by(n - 1, |a, b| rank_order(names, a, b));
        pool.truncate(n);
    }
    pool.sort_unstable_by(|a, b| rank_order(names, a, b));
    pool
}

/// `blend_each`: `blend` once per weights set, the weight-independent parts computed once.
pub fn blend_each(
    c: &Candidates,
    n: usize,
    weights: &[BlendWeights],
    exclude: &Set<String>,
    shrinkage: f64,
    alpha: f64,
) -> Vec<Vec<Scored>> {
    blend_each_excluding(c, n, weights, &[exclude], shrinkage, alpha)
}

/// `blend_each` with the items of any of `excludes` excluded: the reader's exclusion set is
/// `excluded | hidden`, and a union would copy the catalogue's hidden items (thousands) per
/// request; an item of a set that is no candidate changes nothing, so the catalogue's whole
/// hidden set can be passed as it is.
pub fn blend_each_excluding(
    c: &Candidates,
    n: usize,
    weights: &[BlendWeights],
    excludes: &[&Set<String>],
    shrinkage: f64,
    alpha: f64,
) -> Vec<Vec<Scored>> {
    let listed = c.vector_scores.len()
        + c.tf_scores.len()
        + c.similar_users.len()
        + c.trending.len()
        + c.new_items.len()
        + c.session_knn.len();
    let mut ids = Ids::new(listed + 16 * c.recent.len());
    // A source with weight 0 adds nothing, so it is not computed (trending still back-fills).
    let terms = if weights.iter().any(|w| w.item_item > 0.0) {
        item_item_terms(c, shrinkage, alpha, &mut ids)
    } else {
        Terms { terms: Vec::new() }
    };
    let needed = |s: Source| {
        weights.iter().any(|w| w.get(s) > 0.0)
            || (s == Source::Trending && weights.iter().any(|w| w.trending <= 0.0))
    };
    // Number every listed item first, so each source's arrays span all numbers.
    let raw: Vec<Option<Vec<(u32, f64)>>> = SOURCES
        .into_iter()
        .map(|s| match s {
            Source::ItemItem => None,
            s if needed(s) => Some(
                raw_pairs(c, s)
                    .iter()
                    .map(|(i, x)| (ids.id(i), *x))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let n_ids = ids.len();
    let excluded = ids.excluded(excludes);
    let normalised_by: Vec<Option<Normalised>> = SOURCES
        .into_iter()
        .zip(raw)
        .map(|(s, pairs)| match s {
            Source::ItemItem if needed(s) => {
                let sums = terms.totals(n_ids);
                Some(Normalised::new(
                    sums.iter()
                        .enumerate()
                        .filter_map(|(k, x)| x.map(|x| (k as u32, x))),
                    n_ids,
                ))
            }
            _ => pairs.map(|p| Normalised::new(p, n_ids)),
        })
        .collect();
    let scores_of = |s: Source| {
        normalised_by[s as usize]
            .as_ref()
            .expect("computed for every source used")
    };
    let mut out = Vec::with_capacity(weights.len());
    for ws in weights {
        // (source, weight, normalised scores) of the sources that count, in SOURCES order.
        let weighted: Vec<(Source, f64, &Normalised)> = SOURCES
            .into_iter()
            .filter(|s| ws.get(*s) > 0.0)
            .map(|s| (s, ws.get(s), scores_of(s)))
            .collect();
        let mut total: Vec<Option<f64>> = vec![None; n_ids];
        let mut touched: Vec<u32> = Vec::new();
        for (_, w, scores) in &weighted {
            // Sum of w · s over the sources, added in SOURCES order.
            for &k in &scores.listed {
                if excluded[k as usize] {
                    continue;
                }
                let s = scores.at[k as usize];
                let slot = &mut total[k as usize];
                *slot = Some(match *slot {
                    Some(t) => t + w * s,
                    None => {
                        touched.push(k);
                        w * s
                    }
                });
            }
        }
        if ws.trending <= 0.0 {
            // Still back-fill a short list from trending, with a tiny score.
            let trending = scores_of(Source::Trending);
            for &k in &trending.listed {
                if !excluded[k as usize] && total[k as usize].is_none() {
                    total[k as usize] = Some(1e-9 * trending.at[k as usize]);
                    touched.push(k);
                }
            }
        }
        let pool: Vec<(u32, f64)> = touched
            .iter()
            .map(|&k| (k, total[k as usize].expect("touched")))
            .collect();
        let ranked = top_n(pool, n, &ids.names);
        // The source that gave an item its largest part (the first on ties) names its reason.
        let shown: Vec<(u32, f64, Source)> = ranked
            .into_iter()
            .map(|(k, score)| {
                let (mut best, mut source) = (-1.0, Source::Trending);
                for (name, w, scores) in &weighted {
                    if let Some(got) = scores.get(k) {
                        if w * got > best {
                            (best, source) = (w * got, *name);
                        }
                    }
                }
                (k, score, source)
            })
            .collect();
        let from_ii: Vec<u32> = shown
            .iter()
            .filter(|x| x.2 == Source::ItemItem)
            .map(|x| x.0)
            .collect();
        let because = terms.strongest(c, &from_ii, n_ids);
        out.push(
            shown
                .into_iter()
                .map(|(k, score, source)| Scored {
                    item: ids.names[k as usize].to_owned(),
                    score,
                    reason: reason(
                        source,
                        ids.names[k as usize],
                        because.get(&k).copied(),
                        c.trending_label.as_deref(),
                        &c.new_labels,
                    ),
                    source,
                })
                .collect(),
        );
    }
    out
}

/// `_reason`: the text shown with an item; `because` is the recent item that gave an item-item
/// candidate its largest term. An empty label counts as none, as Python's `if label`.
pub fn reason(
    source: Source,
    item: &str,
    because: Option<&str>,
    label: Option<&str>,
    new_labels: &Map<String, String>,
) -> String {
    match (source, because) {
        (Source::NewItems, _) => match new_labels.get(item).filter(|s| !s.is_empty()) {
            Some(shared) => format!("new in {shared}"),
            None => "new in the catalogue".to_owned(),
        },
        (Source::ItemItem, Some(r)) => format!("because you viewed {r}"),
        (Source::UserVector, _) => "matches your taste".to_owned(),
        (Source::Tf, _) => "often next after items like yours".to_owned(),
        (Source::SimilarUsers, _) => "shoppers like you bought this".to_owned(),
        (Source::SessionKnn, _) => "in sessions like yours".to_owned(),
        _ => match label.filter(|l| !l.is_empty()) {
            Some(l) => format!("popular in {l}"),
            None => "popular now".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_keeps_positive_finite_scores_and_the_last_repeat() {
        let pairs = [
            (0, 2.0),
            (1, 0.0),
            (2, -1.0),
            (3, f64::NAN),
            (4, f64::INFINITY),
            (0, 4.0),
            (5, 1.0),
            (5, -3.0),
        ];
        let got = Normalised::new(pairs, 6);
        assert_eq!(got.listed, [0, 5]);
        assert_eq!(
            (0..6).map(|k| got.get(k)).collect::<Vec<_>>(),
            [Some(4.0 / 4.0), None, None, None, None, Some(1.0 / 4.0)]
        );
    }
}
