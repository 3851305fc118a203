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
mod item_item;
pub mod json;
pub mod new_items;
mod rank;
pub mod request;
pub mod session_knn;

pub use rank::{blend_each, blend_each_excluding, reason};

use serde::Serialize;

/// Maps and sets keyed by item id (the request's ids are hashed several hundred times):
/// foldhash instead of std's SipHash, which took a quarter of the blend's instructions
/// (callgrind on the timing case of `tests/blend_parity.py`). Its seed is drawn at random per
/// process, so ids cannot be picked in advance to collide.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See `Map`.
pub type Set<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

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
}

/// Weight of each source (0 turns a source off); the defaults are `BlendWeights()`'s, whose
/// docstring in `models/blend.py` says how they were chosen.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
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
        Self {
            item_item: 1.0,
            user_vector: 0.3,
            tf: 0.1,
            similar_users: 0.1,
            trending: 0.05,
            new_items: 0.0,
            session_knn: 0.0,
        }
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
        let mut unknown: Vec<&str> = overrides
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| Source::from_name(n).is_none())
            .collect();
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
    pub neighbours: Map<String, Pairs>,
    /// item -> decayed popularity, for the recent items and their neighbours (missing: 0).
    pub norms: Map<String, f64>,
    pub vector_scores: Pairs,
    pub tf_scores: Pairs,
    pub similar_users: Pairs,
    pub trending: Pairs,
    pub trending_label: Option<String>,
    pub new_items: Pairs,
    /// item -> the category or tag it shares with a recent item (the "new in ..." reason).
    pub new_labels: Map<String, String>,
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
            other => Err(format!(
                "unknown recent-items order '{other}': use 'time' or 'weight'"
            )),
        }
    }
}

/// `max(values, default=default)` as CPython computes it: the first value, replaced by each
/// later one that is `>` it. A NaN first stays (nothing is greater); a later NaN never wins.
pub(crate) fn py_max(values: impl IntoIterator<Item = f64>, default: f64) -> f64 {
    let mut it = values.into_iter();
    let Some(mut best) = it.next() else {
        return default;
    };
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
pub fn recent_items(
    decayed: &[(String, f64)],
    newest_first: &[&str],
    k: usize,
    order: RecentOrder,
) -> Pairs {
    if order == RecentOrder::Weight {
        return decayed.iter().take(k).cloned().collect();
    }
    let weight: Map<&str, f64> = decayed.iter().map(|(i, w)| (i.as_str(), *w)).collect();
    let mut out: Pairs = Vec::with_capacity(k.min(decayed.len()));
    let mut taken: Set<&str> = Set::default();
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

/// `blend`: the union of the sources' candidates ranked; items in `exclude` never appear, and
/// trending fills the list when the others have fewer than `n` candidates.
pub fn blend(
    c: &Candidates,
    n: usize,
    exclude: &Set<String>,
    weights: &BlendWeights,
    shrinkage: f64,
    alpha: f64,
) -> Vec<Scored> {
    blend_each(
        c,
        n,
        std::slice::from_ref(weights),
        exclude,
        shrinkage,
        alpha,
    )
    .pop()
    .expect("one ranking per weights set")
}

#[cfg(test)]
mod tests;
