//! What one recommendation reads, turned into `Candidates`: a port of the request path's part of
//! `models/candidates.py` (`trending_depth`, `session_weights`, `user_recent`,
//! `similar_user_scores`, `assemble`) and of `TrendingSnapshot.norms` (`online/snapshot.py`).

use std::sync::Arc;

use super::{Map, Set};

use super::decay::DecayPolicy;
use super::{recent_items, Candidates, Pairs, RecentOrder};

/// Strongest items read per similar user (`PER_SIMILAR_USER`).
pub const PER_SIMILAR_USER: usize = 10;
/// Most items read from a trending list for one recommendation (`MAX_TRENDING_READ`).
pub const MAX_TRENDING_READ: usize = 1000;

/// `trending_depth`: trending items read for a top-`n`, enough that `n` remain after the
/// excluded and seen.
pub fn trending_depth(n: usize, n_excluded: usize, history_len: usize) -> usize {
    (n + n_excluded + history_len).min(MAX_TRENDING_READ)
}

/// How the recent items are chosen and weighed (`reader_recent_items`, `reader_recent_order`,
/// `reader_recent_position_decay`, `reader_session_gap_s`, `reader_outside_session_weight`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecentRule {
    pub k: usize,
    pub order: RecentOrder,
    pub position_decay: f64,
    pub session_gap_s: f64,
    pub outside_session: f64,
}

/// `session_weights`: the recent items' weights scaled by `1 / (1 + position_decay · p)` for
/// the `p`-th item clicked before the last one, and by `outside_session` for an item not
/// clicked in the latest session (`history` is (item, last click), newest first; context items
/// count as the latest clicks).
pub fn session_weights(
    recent: Pairs,
    history: &[(String, f64)],
    context: &[String],
    position_decay: f64,
    session_gap_s: f64,
    outside_session: f64,
) -> Pairs {
    if position_decay <= 0.0 && outside_session == 1.0 {
        return recent;
    }
    let mut rank: Map<&str, usize> = Map::default();
    for (p, item) in context.iter().enumerate() {
        rank.entry(item.as_str()).or_insert(p);
    }
    let mut placed: Map<&str, f64> = Map::default(); // recent item -> its last click, outside the context
    let wanted: Set<&str> = recent
        .iter()
        .map(|(i, _)| i.as_str())
        .filter(|i| !rank.contains_key(i))
        .collect();
    for (p, (item, t)) in history.iter().enumerate() {
        if placed.len() == wanted.len() {
            break;
        }
        if wanted.contains(item.as_str()) && !placed.contains_key(item.as_str()) {
            rank.insert(item, context.len() + p);
            placed.insert(item, *t);
        }
    }
    let mut start = f64::NEG_INFINITY; // the latest session's first click
    if outside_session != 1.0 && !history.is_empty() {
        let mut prev = history[0].1;
        start = prev;
        for (_, t) in &history[1..] {
            if prev - t > session_gap_s {
                break;
            }
            start = *t;
            prev = *t;
        }
    }
    let oldest = context.len() + history.len(); // an item with a weight but out of the trimmed history
    recent
        .into_iter()
        .map(|(item, w)| {
            let p = rank.get(item.as_str()).copied().unwrap_or(oldest);
            let mut m = if position_decay > 0.0 {
                1.0 / (1.0 + position_decay * p as f64)
            } else {
                1.0
            };
            if p >= context.len()
                && placed
                    .get(item.as_str())
                    .copied()
                    .unwrap_or(f64::NEG_INFINITY)
                    < start
            {
                m *= outside_session;
            }
            (item, w * m)
        })
        .collect()
}

/// `user_recent`: the user's weights decayed to `now` (strongest first: the model sources'
/// input) and the recent items whose neighbours are read, weighed by `session_weights`.
///
/// `stored` is (item, stored forward weight), strongest first; `history` (item, last event
/// time), newest first; `factor` the read factor of the user's read (`read_factor`).
pub fn user_recent(
    stored: &[(String, f64)],
    history: &[(String, f64)],
    factor: f64,
    now: f64,
    policy: &DecayPolicy,
    rule: &RecentRule,
    context: &[String],
) -> (Pairs, Pairs) {
    let mut decayed: Pairs = stored
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(i, v)| (i.clone(), v * factor))
        .collect();
    if decayed.is_empty() && !history.is_empty() {
        // Weights pruned or not yet written: recency stands in.
        decayed = history
            .iter()
            .map(|(i, t)| (i.clone(), policy.decayed_weight(1.0, *t, now)))
            .collect();
    }
    if !context.is_empty() {
        let top = decayed.first().map_or(1.0, |p| p.1);
        let ctx: Set<&str> = context.iter().map(String::as_str).collect();
        let mut with: Pairs = context.iter().map(|i| (i.clone(), top)).collect();
        with.extend(decayed.into_iter().filter(|p| !ctx.contains(p.0.as_str())));
        decayed = with;
    }
    let newest: Vec<&str> = context
        .iter()
        .map(String::as_str)
        .chain(history.iter().map(|(i, _)| i.as_str()))
        .collect();
    let recent = recent_items(&decayed, &newest, rule.k, rule.order);
    let recent = session_weights(
        recent,
        history,
        context,
        rule.position_decay,
        rule.session_gap_s,
        rule.outside_session,
    );
    (decayed, recent)
}

/// `similar_user_scores`: Σ over similar users v of cos(u, v) · (v's weight of the item / v's
/// first (largest) weight), items in the order they were first met.
pub fn similar_user_scores(similar: &[(String, f64)], theirs: &Map<String, Arc<Pairs>>) -> Pairs {
    let mut at: Map<&str, usize> = Map::default();
    let mut scores: Pairs = Vec::new();
    for (v, sim) in similar {
        let rows: &[(String, f64)] = theirs.get(v).map_or(&[], |r| r.as_slice());
        let top = rows.first().map_or(0.0, |r| r.1);
        if top <= 0.0 {
            continue;
        }
        for (item, wv) in rows {
            if *wv > 0.0 {
                let x = sim * wv / top;
                match at.get(item.as_str()) {
                    Some(&k) => scores[k].1 += x,
                    None => {
                        at.insert(item, scores.len());
                        // Python starts from `scores.get(item, 0.0)`: 0.0 + x turns a -0.0 into 0.0.
                        scores.push((item.clone(), 0.0 + x));
                    }
                }
            }
        }
    }
    scores
}

/// The popularity the trending snapshot keeps, for the item-item norms (`TrendingSnapshot`'s
/// `pop`, `floor` and landmark).
#[derive(Debug, Clone, Default)]
pub struct PopularitySnapshot {
    /// item -> stored forward popularity, relative to `landmark`.
    pub pop: Map<String, f64>,
    /// What an item the snapshot does not keep gets (the smallest kept popularity, or 0).
    pub floor: f64,
    /// The landmark of the stored scores; None before the first refresh.
    pub landmark: Option<f64>,
}

impl PopularitySnapshot {
    /// `TrendingSnapshot._shift`: what moves the stored scores to a request's `landmark`.
    pub fn shift(&self, policy: &DecayPolicy, landmark: f64) -> f64 {
        match self.landmark {
            Some(l) if l != landmark => policy.rescale_factor(l, landmark),
            _ => 1.0,
        }
    }

    /// `TrendingSnapshot.norms` for one item: stored popularity (missing: the floor) times
    /// `shift` (from `shift`) times `scale` (the request's read factor).
    pub fn norm(&self, item: &str, shift: f64, scale: f64) -> f64 {
        let v = self.pop.get(item).copied().unwrap_or(self.floor);
        if shift == 1.0 {
            v * scale
        } else {
            v * shift * scale
        }
    }
}

/// What the sources gave for one request, as read: stored scores where Python's `assemble`
/// multiplies them by the read factor.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    /// recent item -> its stored neighbour row, strongest first (only the items read). Shared
    /// with the reader's row cache: `assemble` reads it, never takes it apart.
    pub rows: Map<String, Arc<Pairs>>,
    pub vector_scores: Pairs,
    pub tf_scores: Pairs,
    /// (similar user, cosine) from the model.
    pub similar: Pairs,
    /// similar user -> their stored weights, strongest first (shared as `rows` is).
    pub theirs: Map<String, Arc<Pairs>>,
    /// stored trending scores.
    pub trending: Pairs,
    pub trending_label: Option<String>,
    pub new_items: Pairs,
    pub new_labels: Map<String, String>,
    pub session_knn: Pairs,
}

/// `assemble`: the blend's inputs. Neighbour rows and trending are multiplied by `factor`;
/// `norm_of` gives the decayed popularity of each recent item and neighbour (in the reader:
/// `PopularitySnapshot::norm` with the request's shift and factor).
pub fn assemble(
    recent: Pairs,
    read: Gathered,
    factor: f64,
    mut norm_of: impl FnMut(&str) -> f64,
) -> Candidates {
    let neighbours: Map<String, Pairs> = read
        .rows
        .into_iter()
        .map(|(i, row)| (i, row.iter().map(|(j, c)| (j.clone(), c * factor)).collect()))
        .collect();
    let mut norms: Map<String, f64> = Map::default();
    let wanted = recent
        .iter()
        .map(|(i, _)| i)
        .chain(neighbours.values().flatten().map(|(j, _)| j));
    for item in wanted {
        if !norms.contains_key(item) {
            norms.insert(item.clone(), norm_of(item));
        }
    }
    let similar_users = similar_user_scores(&read.similar, &read.theirs);
    Candidates {
        recent,
        neighbours,
        norms,
        vector_scores: read.vector_scores,
        tf_scores: read.tf_scores,
        similar_users,
        trending: read
            .trending
            .into_iter()
            .map(|(i, v)| (i, v * factor))
            .collect(),
        trending_label: read.trending_label,
        new_items: read.new_items,
        new_labels: read.new_labels,
        session_knn: read.session_knn,
    }
}
