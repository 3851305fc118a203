//! The blend and its inputs: a port of `models/blend.py`, with `models/candidates.py`
//! (`candidates`), the read half of `models/decay.py` (`decay`), the request path of
//! `online/recommender.py` `_for_user` from already-read inputs (`request`) and the answer's
//! JSON as orjson writes it (`json`).
//!
//! Every score is the Python reader's to the bit: the same f64 operations in the same order
//! (sums in SOURCES order, `rel * (co / den)`, `0.0 + x` where Python starts a sum from
//! `dict.get(item, 0.0)`), and where Python's answer depends on dict order it does not here
//! either (see `top_n`). `tests/blend_parity.py` checks that against the Python functions on
//! thousands of random cases.

pub mod candidates;
pub mod decay;
pub mod json;
pub mod request;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use serde::Serialize;

/// (item, score) pairs, in the order a source lists them.
pub type Pairs = Vec<(String, f64)>;

/// The blend's sources, in the order of `SOURCES` (weights, sums and reasons follow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    ItemItem,
    UserVector,
    Tf,
    SimilarUsers,
    Trending,
    NewItems,
    SessionKnn,
}

/// `SOURCES` of `models/blend.py`: the order in which the weighted scores are added.
pub const SOURCES: [Source; 7] = [
    Source::ItemItem,
    Source::UserVector,
    Source::Tf,
    Source::SimilarUsers,
    Source::Trending,
    Source::NewItems,
    Source::SessionKnn,
];

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::ItemItem => "item_item",
            Source::UserVector => "user_vector",
            Source::Tf => "tf",
            Source::SimilarUsers => "similar_users",
            Source::Trending => "trending",
            Source::NewItems => "new_items",
            Source::SessionKnn => "session_knn",
        }
    }

    pub fn from_name(name: &str) -> Option<Source> {
        SOURCES.into_iter().find(|s| s.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Weight of each source (0 turns a source off); the defaults are `BlendWeights()`'s, whose
/// docstring in `models/blend.py` says how they were chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlendWeights {
    pub item_item: f64,
    pub user_vector: f64,
    pub tf: f64,
    pub similar_users: f64,
    pub trending: f64,
    pub new_items: f64,
    pub session_knn: f64,
}

impl Default for BlendWeights {
    fn default() -> Self {
        Self { item_item: 1.0, user_vector: 0.3, tf: 0.1, similar_users: 0.1, trending: 0.05, new_items: 0.0, session_knn: 0.0 }
    }
}

impl BlendWeights {
    pub fn get(&self, source: Source) -> f64 {
        match source {
            Source::ItemItem => self.item_item,
            Source::UserVector => self.user_vector,
            Source::Tf => self.tf,
            Source::SimilarUsers => self.similar_users,
            Source::Trending => self.trending,
            Source::NewItems => self.new_items,
            Source::SessionKnn => self.session_knn,
        }
    }

    /// `BlendWeights.with_overrides`: the same checks, the same messages.
    pub fn with_overrides(&self, overrides: &[(String, f64)]) -> Result<BlendWeights, String> {
        let mut unknown: Vec<&str> = overrides.iter().map(|(n, _)| n.as_str()).filter(|n| Source::from_name(n).is_none()).collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            return Err(format!("unknown blend sources: {}", unknown.join(", ")));
        }
        let mut out = *self;
        for (name, w) in overrides {
            if !(w.is_finite() && *w >= 0.0) {
                return Err(format!("blend weight {name} must be a finite number >= 0"));
            }
            let slot = match Source::from_name(name).expect("checked above") {
                Source::ItemItem => &mut out.item_item,
                Source::UserVector => &mut out.user_vector,
                Source::Tf => &mut out.tf,
                Source::SimilarUsers => &mut out.similar_users,
                Source::Trending => &mut out.trending,
                Source::NewItems => &mut out.new_items,
                Source::SessionKnn => &mut out.session_knn,
            };
            *slot = *w;
        }
        Ok(out)
    }
}

/// Everything one recommendation needs, already read at one `now` (`Candidates`).
///
/// `neighbours` rows and `norms` are looked up by item; the score lists keep their order, though
/// no answer depends on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// (item, weight) of the recent items, decayed to `now`.
    pub recent: Pairs,
    /// item -> [(neighbour, decayed co-occurrence)] for the recent items.
    pub neighbours: HashMap<String, Pairs>,
    /// item -> decayed popularity, for the recent items and their neighbours (missing: 0).
    pub norms: HashMap<String, f64>,
    pub vector_scores: Pairs,
    pub tf_scores: Pairs,
    pub similar_users: Pairs,
    pub trending: Pairs,
    pub trending_label: Option<String>,
    pub new_items: Pairs,
    /// item -> the category or tag it shares with a recent item (the "new in ..." reason).
    pub new_labels: HashMap<String, String>,
    pub session_knn: Pairs,
}

/// One ranked item; serialises as the reader's answer item
/// `{"item_id", "score", "reason", "source"}` (`online/routes_recs.py` `_body`), whose score
/// text `json::to_vec` writes as orjson does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    #[serde(rename = "item_id")]
    pub item: String,
    pub score: f64,
    pub reason: String,
    #[serde(serialize_with = "source_name")]
    pub source: Source,
}

fn source_name<S: serde::Serializer>(source: &Source, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(source.name())
}

/// How the recent items are chosen (`reader_recent_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecentOrder {
    /// The items clicked last, topped up with the strongest of the rest.
    Time,
    /// The strongest items.
    Weight,
}

impl std::str::FromStr for RecentOrder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "time" => Ok(RecentOrder::Time),
            "weight" => Ok(RecentOrder::Weight),
            other => Err(format!("unknown recent-items order '{other}': use 'time' or 'weight'")),
        }
    }
}

/// `max(values, default=default)` as CPython computes it: the first value, replaced by each
/// later one that is `>` it. A NaN first stays (nothing is greater); a later NaN never wins.
fn py_max(values: impl IntoIterator<Item = f64>, default: f64) -> f64 {
    let mut it = values.into_iter();
    let Some(mut best) = it.next() else { return default };
    for v in it {
        if v > best {
            best = v;
        }
    }
    best
}

/// `recent_items`: the `k` recent items whose neighbours feed the item-item source, each with
/// its decayed weight; `newest_first` is the history's items, newest first.
///
/// With `Time`, an item's weight is the last one `decayed` gives it in the first pass (Python's
/// `dict(decayed)`) and its own entry's in the top-up pass, as in Python: only context items
/// can repeat, and they all carry the same weight.
pub fn recent_items(decayed: &[(String, f64)], newest_first: &[&str], k: usize, order: RecentOrder) -> Pairs {
    if order == RecentOrder::Weight {
        return decayed.iter().take(k).cloned().collect();
    }
    let weight: HashMap<&str, f64> = decayed.iter().map(|(i, w)| (i.as_str(), *w)).collect();
    let mut out: Pairs = Vec::with_capacity(k.min(decayed.len()));
    let mut taken: HashSet<&str> = HashSet::new();
    for &item in newest_first {
        if out.len() == k {
            return out;
        }
        if let Some(&w) = weight.get(item) {
            if taken.insert(item) {
                out.push((item.to_owned(), w));
            }
        }
    }
    for (item, w) in decayed {
        if out.len() == k {
            break;
        }
        if taken.insert(item.as_str()) {
            out.push((item.clone(), *w));
        }
    }
    out
}

/// `_powers`: the norm of a recent item and of a candidate. `powf` is glibc's `pow`, which is
/// what CPython's `float ** float` calls for the non-negative norms it is given here (a
/// negative norm, which decayed popularity never is, would make Python's power complex).
#[derive(Clone, Copy)]
struct Powers {
    alpha: f64,
    beta: f64,
    cosine: bool,
}

impl Powers {
    fn new(alpha: f64) -> Self {
        Self { alpha, beta: 1.0 - alpha, cosine: alpha == 0.5 }
    }

    fn of_recent(self, x: f64) -> f64 {
        if self.cosine { x.sqrt() } else { x.powf(self.alpha) }
    }

    fn of_candidate(self, x: f64) -> f64 {
        if self.cosine { x.sqrt() } else { x.powf(self.beta) }
    }
}

fn norm_of(c: &Candidates, item: &str) -> f64 {
    c.norms.get(item).copied().unwrap_or(0.0)
}

/// `_item_item_totals`: Σ over recent items r of weight(r) / max weight · co(r, j) /
/// (pop(r)^alpha · pop(j)^(1 − alpha) + shrinkage), the terms added in the same order.
pub fn item_item_totals(c: &Candidates, shrinkage: f64, alpha: f64) -> HashMap<&str, f64> {
    let mut scores: HashMap<&str, f64> = HashMap::new();
    let top_weight = py_max(c.recent.iter().map(|(_, w)| *w), 0.0);
    if top_weight <= 0.0 {
        return scores;
    }
    let powers = Powers::new(alpha);
    let mut roots: HashMap<&str, f64> = HashMap::new();
    for (r, w) in &c.recent {
        let root_r = powers.of_recent(norm_of(c, r));
        let rel = w / top_weight;
        let Some(row) = c.neighbours.get(r) else { continue };
        for (j, co) in row {
            let root_j = *roots.entry(j.as_str()).or_insert_with(|| powers.of_candidate(norm_of(c, j)));
            let den = root_r * root_j + shrinkage;
            let s = if den > 0.0 { rel * (co / den) } else { 0.0 };
            if s <= 0.0 {
                continue; // a NaN term goes on, as Python's `if s <= 0: continue` lets it
            }
            scores.entry(j.as_str()).and_modify(|prev| *prev += s).or_insert(s);
        }
    }
    scores
}

/// `_strongest_recent`: for each of `items`, the recent item whose term of `item_item_totals`
/// is largest (the first on ties).
pub fn strongest_recent<'a>(c: &'a Candidates, shrinkage: f64, items: &[&str], alpha: f64) -> HashMap<String, &'a str> {
    let wanted: HashSet<&str> = items.iter().copied().collect();
    let mut best: HashMap<&str, (f64, &str)> = HashMap::new();
    let top_weight = py_max(c.recent.iter().map(|(_, w)| *w), 0.0);
    if top_weight <= 0.0 || wanted.is_empty() {
        return HashMap::new();
    }
    let powers = Powers::new(alpha);
    for (r, w) in &c.recent {
        let root_r = powers.of_recent(norm_of(c, r));
        let rel = w / top_weight;
        let Some(row) = c.neighbours.get(r) else { continue };
        for (j, co) in row {
            if !wanted.contains(j.as_str()) {
                continue;
            }
            let den = root_r * powers.of_candidate(norm_of(c, j)) + shrinkage;
            let s = if den > 0.0 { rel * (co / den) } else { 0.0 };
            if s > 0.0 {
                match best.get_mut(j.as_str()) {
                    Some(b) if s > b.0 => *b = (s, r.as_str()),
                    Some(_) => {}
                    None => {
                        best.insert(j.as_str(), (s, r.as_str()));
                    }
                }
            }
        }
    }
    best.into_iter().map(|(j, (_, r))| (j.to_owned(), r)).collect()
}

/// `_normalised`: the positive, finite scores divided by their maximum (a repeated item keeps
/// its last positive score, as a dict comprehension does).
pub fn normalised<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> HashMap<&'a str, f64> {
    let mut d: HashMap<&str, f64> = HashMap::new();
    for (i, s) in pairs {
        if 0.0 < s && s < f64::INFINITY {
            d.insert(i, s);
        }
    }
    // No NaN is left, so the maximum does not depend on the map's order.
    let top = py_max(d.values().copied(), 0.0);
    if top > 0.0 {
        for s in d.values_mut() {
            *s /= top;
        }
        d
    } else {
        HashMap::new()
    }
}

/// Descending score, then item id ascending: Python's `key=(-score, item)`. Comparing Rust
/// strings byte-wise orders them as Python's code-point order (UTF-8 keeps code-point order).
fn rank_order(a: &(&str, f64), b: &(&str, f64)) -> Ordering {
    // The totals are sums of positive finite terms: no NaN, so partial_cmp always answers.
    b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal).then_with(|| a.0.cmp(b.0))
}

/// `_top_n`: the first `n` of the totals by `rank_order`. Items are distinct, so the order is
/// total and the answer does not depend on the map's iteration order.
pub fn top_n<'a>(total: HashMap<&'a str, f64>, n: usize) -> Vec<(&'a str, f64)> {
    let mut pool: Vec<(&str, f64)> = total.into_iter().collect();
    if n == 0 {
        return Vec::new();
    }
    if pool.len() > n {
        pool.select_nth_unstable_by(n - 1, rank_order);
        pool.truncate(n);
    }
    pool.sort_unstable_by(rank_order);
    pool
}

/// `blend`: the union of the sources' candidates ranked; items in `exclude` never appear, and
/// trending fills the list when the others have fewer than `n` candidates.
pub fn blend(c: &Candidates, n: usize, exclude: &HashSet<String>, weights: &BlendWeights, shrinkage: f64, alpha: f64) -> Vec<Scored> {
    blend_each(c, n, std::slice::from_ref(weights), exclude, shrinkage, alpha).pop().expect("one ranking per weights set")
}

/// `blend_each`: `blend` once per weights set, the weight-independent parts computed once.
pub fn blend_each(c: &Candidates, n: usize, weights: &[BlendWeights], exclude: &HashSet<String>, shrinkage: f64, alpha: f64) -> Vec<Vec<Scored>> {
    // A source with weight 0 adds nothing, so it is not computed (trending still back-fills).
    let ii = if weights.iter().any(|w| w.item_item > 0.0) { item_item_totals(c, shrinkage, alpha) } else { HashMap::new() };
    // Each source's normalised scores, for the sources some weights set uses and for trending
    // when one back-fills from it; Python computes them lazily, but they are pure functions of `c`.
    let needed = |s: Source| weights.iter().any(|w| w.get(s) > 0.0) || (s == Source::Trending && weights.iter().any(|w| w.trending <= 0.0));
    let normalised_by: [Option<HashMap<&str, f64>>; 7] = std::array::from_fn(|k| {
        let source = SOURCES[k];
        needed(source).then(|| match source {
            Source::ItemItem => normalised(ii.iter().map(|(i, s)| (*i, *s))),
            other => normalised(raw_pairs(c, other).iter().map(|(i, s)| (i.as_str(), *s))),
        })
    });
    let scores_of = |source: Source| normalised_by[source.index()].as_ref().expect("computed for every source used");
    let mut out = Vec::with_capacity(weights.len());
    for ws in weights {
        // (source, weight, item -> normalised score) of the sources that count, in SOURCES order.
        let weighted: Vec<(Source, f64, &HashMap<&str, f64>)> =
            SOURCES.into_iter().filter(|s| ws.get(*s) > 0.0).map(|s| (s, ws.get(s), scores_of(s))).collect();
        let mut total: HashMap<&str, f64> = HashMap::new();
        for (_, w, scores) in &weighted {
            // Sum of w · s over the sources, added in SOURCES order.
            for (&item, &s) in scores.iter() {
                if exclude.contains(item) {
                    continue;
                }
                total.entry(item).and_modify(|t| *t += w * s).or_insert(w * s);
            }
        }
        if ws.trending <= 0.0 {
            // Still back-fill a short list from trending, with a tiny score.
            for (&item, &s) in scores_of(Source::Trending) {
                if !exclude.contains(item) {
                    total.entry(item).or_insert(1e-9 * s);
                }
            }
        }
        let ranked = top_n(total, n);
        // The source that gave an item its largest part (the first on ties) names its reason.
        let shown: Vec<(&str, f64, Source)> = ranked
            .into_iter()
            .map(|(item, score)| {
                let (mut best, mut source) = (-1.0, Source::Trending);
                for (name, w, scores) in &weighted {
                    if let Some(got) = scores.get(item) {
                        if w * got > best {
                            (best, source) = (w * got, *name);
                        }
                    }
                }
                (item, score, source)
            })
            .collect();
        let from_ii: Vec<&str> = shown.iter().filter(|x| x.2 == Source::ItemItem).map(|x| x.0).collect();
        let because = strongest_recent(c, shrinkage, &from_ii, alpha);
        out.push(
            shown
                .into_iter()
                .map(|(item, score, source)| Scored {
                    item: item.to_owned(),
                    score,
                    reason: reason(source, item, &because, c.trending_label.as_deref(), &c.new_labels),
                    source,
                })
                .collect(),
        );
    }
    out
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

/// `_reason`: the text shown with an item. An empty label counts as none, as Python's `if label`.
pub fn reason(source: Source, item: &str, because: &HashMap<String, &str>, label: Option<&str>, new_labels: &HashMap<String, String>) -> String {
    match source {
        Source::NewItems => match new_labels.get(item).filter(|s| !s.is_empty()) {
            Some(shared) => format!("new in {shared}"),
            None => "new in the catalogue".to_owned(),
        },
        Source::ItemItem if because.contains_key(item) => format!("because you viewed {}", because[item]),
        Source::UserVector => "matches your taste".to_owned(),
        Source::Tf => "often next after items like yours".to_owned(),
        Source::SimilarUsers => "shoppers like you bought this".to_owned(),
        Source::SessionKnn => "in sessions like yours".to_owned(),
        _ => match label.filter(|l| !l.is_empty()) {
            Some(l) => format!("popular in {l}"),
            None => "popular now".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests;
