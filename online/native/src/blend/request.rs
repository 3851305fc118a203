//! The blend's part of `Recommender._for_user` (`online/recommender.py`) from already-read
//! inputs, in the order the reader runs it:
//!
//! 1. read the user (history, stored weights, meta, trending: `trending_read_depth` items) ->
//!    [`plan`]: read factor, the exclusion set (request's exclude | context | history),
//!    `user_recent`'s decayed weights (the model sources' input) and recent items;
//! 2. the model sources (`model.rs`) with `Plan::decayed` and `Plan::want`; new_items
//!    (`new_items::new_item_scores` on `Plan::recent`) and session_knn (`session_knn`) when
//!    their weights are on;
//! 3. read the neighbour rows of `Plan::neighbour_items` and the similar users' rows;
//! 4. [`rank`]: `assemble`, then `blend` excluding `Plan::excluded` and the catalogue's hidden
//!    items. With a category, call `assemble`, filter with [`category_candidates`] /
//!    [`keep_only`], then [`finish`].
//!
//! [`recommend`] runs all of it on inputs read up front (the parity harness, the tests).
//! Categories and hidden items come from the catalogue and Redis: the caller's.

use std::sync::Arc;

use super::{Map, Set};

use super::candidates::{
    assemble, trending_depth, user_recent, Gathered, PopularitySnapshot, RecentRule,
};
use super::decay::DecayPolicy;
use super::{blend_each_excluding, BlendWeights, Candidates, Pairs, Scored};

/// The reader settings the blend path uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecSettings {
    pub recent: RecentRule,
    /// `similarity_shrinkage`
    pub shrinkage: f64,
    /// `similarity_alpha`
    pub alpha: f64,
    /// `history_len`
    pub history_len: usize,
}

/// The user's state as read (`read_user`).
#[derive(Debug, Clone, Default)]
pub struct UserRead {
    /// (item, last event time), newest first.
    pub history: Pairs,
    /// (item, stored forward weight), strongest first.
    pub weights: Pairs,
    pub landmark: f64,
    /// The stream's event time of the read (`Meta.now`).
    pub now: f64,
}

/// Trending items to read for a request (`trend_n` in `_for_user`): `extra` is the catalogue's
/// over-fetch for hidden items.
pub fn trending_read_depth(
    n: usize,
    exclude: &[String],
    context: &[String],
    extra: usize,
    history_len: usize,
) -> usize {
    let excluded: Set<&str> = exclude.iter().chain(context).map(String::as_str).collect();
    trending_depth(n, excluded.len() + extra, history_len)
}

/// What the user's read decides: everything before the model sources and the second read.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `read_factor(rate, landmark, now)`: stored scores to values at `now`.
    pub factor: f64,
    pub landmark: f64,
    /// Items never shown: the request's exclude and context, and the history's items.
    pub excluded: Set<String>,
    /// (item, weight at `now`), strongest first: the model sources' input.
    pub decayed: Pairs,
    /// The recent items whose neighbour rows feed the item-item source, with their weights.
    pub recent: Pairs,
}

impl Plan {
    /// Candidates each model source returns (`want`): `extra` is the catalogue's over-fetch.
    pub fn want(&self, n: usize, extra: usize) -> usize {
        n + self.excluded.len() + extra
    }

    /// The items whose neighbour rows to read (none when the item-item source is off).
    pub fn neighbour_items(&self, weights: &BlendWeights) -> Vec<&str> {
        if weights.item_item > 0.0 {
            self.recent.iter().map(|(i, _)| i.as_str()).collect()
        } else {
            Vec::new()
        }
    }
}

/// Step 1: read factor, exclusions and `user_recent`.
pub fn plan(
    user: &UserRead,
    exclude: &[String],
    context: &[String],
    policy: &DecayPolicy,
    rule: &RecentRule,
) -> Plan {
    let factor = policy.read_factor(user.landmark, user.now);
    let excluded: Set<String> = exclude
        .iter()
        .chain(context)
        .chain(user.history.iter().map(|(i, _)| i))
        .cloned()
        .collect();
    let (decayed, recent) = user_recent(
        &user.weights,
        &user.history,
        factor,
        user.now,
        policy,
        rule,
        context,
    );
    Plan {
        factor,
        landmark: user.landmark,
        excluded,
        decayed,
        recent,
    }
}

/// Step 4: the candidates from what was read, then the top `n`. `norm_of` gives an item's
/// decayed popularity (`PopularitySnapshot::norm` with the request's shift and factor);
/// `hidden` are the items the catalogue hides (all of them will do: see
/// `blend_each_excluding`).
pub fn rank(
    plan: Plan,
    read: Gathered,
    norm_of: impl FnMut(&str) -> f64,
    hidden: &Set<String>,
    n: usize,
    weights: &BlendWeights,
    settings: &RecSettings,
) -> (Candidates, Vec<Scored>) {
    let cands = assemble(plan.recent, read, plan.factor, norm_of);
    let ranked = finish(&cands, &plan.excluded, hidden, n, weights, settings);
    (cands, ranked)
}

/// The blend of step 4 on assembled (and maybe category-filtered) candidates.
pub fn finish(
    cands: &Candidates,
    excluded: &Set<String>,
    hidden: &Set<String>,
    n: usize,
    weights: &BlendWeights,
    settings: &RecSettings,
) -> Vec<Scored> {
    blend_each_excluding(
        cands,
        n,
        std::slice::from_ref(weights),
        &[excluded, hidden],
        settings.shrinkage,
        settings.alpha,
    )
    .pop()
    .expect("one ranking per weights set")
}

/// `_in_category`, first half: the candidates whose category decides (the neighbours and the
/// listed sources; trending is already the category's list). Empty: nothing to filter.
pub fn category_candidates(c: &Candidates) -> Set<&str> {
    let mut ids: Set<&str> = Set::default();
    for row in c.neighbours.values() {
        ids.extend(row.iter().map(|(j, _)| j.as_str()));
    }
    for pairs in [
        &c.vector_scores,
        &c.tf_scores,
        &c.similar_users,
        &c.new_items,
        &c.session_knn,
    ] {
        ids.extend(pairs.iter().map(|(i, _)| i.as_str()));
    }
    ids
}

/// `_in_category`, second half: only the candidates in `keep` (those of the asked category)
/// stay in the neighbour rows and the listed sources; recent items, norms, trending stay.
pub fn keep_only(mut c: Candidates, keep: &Set<String>) -> Candidates {
    let kept = |pairs: &mut Pairs| pairs.retain(|(i, _)| keep.contains(i));
    for row in c.neighbours.values_mut() {
        kept(row);
    }
    for pairs in [
        &mut c.vector_scores,
        &mut c.tf_scores,
        &mut c.similar_users,
        &mut c.new_items,
        &mut c.session_knn,
    ] {
        kept(pairs);
    }
    c
}

/// Everything one request reads, read up front: the store's rows for any items and users
/// (only those the request asks for are used, as `_expansion` reads only those).
#[derive(Debug, Clone, Default)]
pub struct RecInputs {
    pub user: UserRead,
    pub exclude: Vec<String>,
    pub context: Vec<String>,
    /// item -> stored neighbour row, strongest first.
    pub neighbour_rows: Map<String, Pairs>,
    /// user -> stored weights, strongest first (the similar users' rows).
    pub user_rows: Map<String, Pairs>,
    pub vector_scores: Pairs,
    pub tf_scores: Pairs,
    /// (similar user, cosine).
    pub similar: Pairs,
    /// stored trending scores.
    pub trending: Pairs,
    pub trending_label: Option<String>,
    pub new_items: Pairs,
    pub new_labels: Map<String, String>,
    pub session_knn: Pairs,
    pub snapshot: PopularitySnapshot,
    pub hidden: Set<String>,
}

/// Steps 1 to 4 on inputs read up front; returns the plan and candidates too (for checks).
pub fn recommend(
    inp: &RecInputs,
    n: usize,
    weights: &BlendWeights,
    policy: &DecayPolicy,
    settings: &RecSettings,
) -> (Plan, Candidates, Vec<Scored>) {
    let p = plan(
        &inp.user,
        &inp.exclude,
        &inp.context,
        policy,
        &settings.recent,
    );
    let rows: Map<String, Arc<Pairs>> = p
        .neighbour_items(weights)
        .into_iter()
        .filter_map(|i| {
            inp.neighbour_rows
                .get(i)
                .map(|row| (i.to_owned(), Arc::new(row.clone())))
        })
        .collect();
    let theirs: Map<String, Arc<Pairs>> = inp
        .similar
        .iter()
        .filter_map(|(v, _)| inp.user_rows.get(v).map(|row| (v.clone(), Arc::new(row.clone()))))
        .collect();
    let read = Gathered {
        rows,
        vector_scores: inp.vector_scores.clone(),
        tf_scores: inp.tf_scores.clone(),
        similar: inp.similar.clone(),
        theirs,
        trending: inp.trending.clone(),
        trending_label: inp.trending_label.clone(),
        new_items: inp.new_items.clone(),
        new_labels: inp.new_labels.clone(),
        session_knn: inp.session_knn.clone(),
    };
    let shift = inp.snapshot.shift(policy, p.landmark);
    let factor = p.factor;
    let snapshot = &inp.snapshot;
    let kept = p.clone();
    let (cands, ranked) = rank(
        p,
        read,
        |item| snapshot.norm(item, shift, factor),
        &inp.hidden,
        n,
        weights,
        settings,
    );
    (kept, cands, ranked)
}
