//! The session_knn source's request part: `session_query`, `session_neighbours`,
//! `session_span` and `session_knn_scores` of `models/candidates.py` (V-SKNN over the sessions
//! of the shoppers who clicked the latest session's items last). Off by default
//! (`BlendWeights.session_knn` = 0); the reads around it (session-index rows of the query
//! items, the neighbours' click logs) are the caller's.

use super::{Map, Pairs, Set};

/// `session_query`: the items of the shopper's latest session, at most `k`, oldest first:
/// `context` items (newest first) count as the latest clicks, then the history's items (newest
/// first) back to the first gap longer than `session_gap_s`.
pub fn session_query(
    history: &[(String, f64)],
    context: &[String],
    k: usize,
    session_gap_s: f64,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in context {
        if out.len() == k {
            break;
        }
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    let mut prev: Option<f64> = None;
    for (item, t) in history {
        if out.len() >= k || prev.is_some_and(|p| p - t > session_gap_s) {
            break;
        }
        prev = Some(*t);
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out.reverse();
    out
}

/// `session_neighbours`: the `m` shoppers (not `user`) of the session-index `rows` (item ->
/// (shopper, time of their last click of it), latest first) to compare, with the time of their
/// latest shared click. With a `query`, ranked by the sum of the (1-based) positions of the
/// query items they share, then latest click, then shopper id, all descending; without one, by
/// latest click then shopper id, descending.
pub fn session_neighbours(
    rows: &Map<String, Pairs>,
    user: &str,
    m: usize,
    query: &[String],
) -> Pairs {
    let mut latest: Map<&str, f64> = Map::default();
    if !query.is_empty() {
        let mut sim: Map<&str, usize> = Map::default();
        for (p, item) in query.iter().enumerate().map(|(p, i)| (p + 1, i)) {
            let Some(row) = rows.get(item).filter(|r| !r.is_empty()) else {
                continue;
            };
            // dict(row): a shopper listed twice keeps the last time (a ZSET row lists each once).
            let mut fresh: Map<&str, f64> = Map::default();
            for (v, t) in row {
                fresh.insert(v, *t);
            }
            for (v, t) in fresh {
                match latest.get_mut(v) {
                    Some(l) => {
                        *sim.get_mut(v).expect("sim and latest share keys") += p;
                        if t > *l {
                            *l = t;
                        }
                    }
                    None => {
                        latest.insert(v, t);
                        sim.insert(v, p);
                    }
                }
            }
        }
        sim.remove(user);
        latest.remove(user);
        let mut ranked: Vec<(usize, f64, &str)> =
            sim.iter().map(|(v, s)| (*s, latest[v], *v)).collect();
        ranked.sort_unstable_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal))
                .then_with(|| b.2.cmp(a.2))
        });
        return ranked
            .into_iter()
            .take(m)
            .map(|(_, t, v)| (v.to_owned(), t))
            .collect();
    }
    for row in rows.values() {
        for (v, t) in row {
            if v != user && *t > latest.get(v.as_str()).copied().unwrap_or(f64::NEG_INFINITY) {
                latest.insert(v, *t);
            }
        }
    }
    let mut ranked: Vec<(&str, f64)> = latest.into_iter().collect();
    ranked.sort_unstable_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| b.0.cmp(a.0))
    });
    ranked
        .into_iter()
        .take(m)
        .map(|(v, t)| (v.to_owned(), t))
        .collect()
}

/// `session_span`: the index range `lo, hi` (inclusive) of the session of ascending `times`
/// holding a click at `t` (the first click at or after `t`, else the one before, within
/// `gap_s`), or None.
pub fn session_span(times: &[f64], t: f64, gap_s: f64) -> Option<(usize, usize)> {
    let n = times.len();
    let at = times.partition_point(|x| *x < t); // bisect_left
    let mut lo = if at < n && times[at] - t <= gap_s {
        at
    } else if at > 0 && t - times[at - 1] <= gap_s {
        at - 1
    } else {
        return None;
    };
    let mut hi = lo;
    while lo > 0 && times[lo] - times[lo - 1] <= gap_s {
        lo -= 1;
    }
    while hi + 1 < n && times[hi + 1] - times[hi] <= gap_s {
        hi += 1;
    }
    Some((lo, hi))
}

/// A shopper's click log (`P:{u:U}:clk`): click times ascending and the items clicked, in the
/// same order, joined by NUL (`driftrec.userstate.unpack_clicks`).
pub type ClickLog = (Vec<f64>, String);

/// `session_knn_scores`: V-SKNN over the sessions of `neighbours` ((shopper, time of their
/// latest click of a query item), from `session_neighbours`), each session the run of the
/// shopper's clicks around that click; a shopper without a click log adds nothing.
pub fn session_knn_scores(
    query: &[String],
    neighbours: &[(String, f64)],
    clicks: &Map<String, ClickLog>,
    gap_s: f64,
) -> Pairs {
    let length = query.len();
    if length == 0 || neighbours.is_empty() {
        return Vec::new();
    }
    let mut position: Map<&str, usize> = Map::default();
    for (p, item) in query.iter().enumerate() {
        position.insert(item, p + 1); // a repeated item weighs by its last click
    }
    let norm = position.len() * length; // sim = sum of p / L over shared items, / distinct query items
    let mut sims: Vec<(f64, usize, usize, Vec<&str>)> = Vec::new(); // (sim, rank, nearest, session)
    for (rank, (v, t)) in neighbours.iter().enumerate() {
        let Some((times, ids)) = clicks.get(v) else {
            continue;
        };
        let Some((lo, hi)) = session_span(times, *t, gap_s) else {
            continue;
        };
        // ids.rsplit("\0", k)[-k:][:hi - lo + 1]: the last min(k, parts) items, cut to the session.
        let k = times.len() - lo;
        let parts: Vec<&str> = ids.split('\0').collect();
        let sess: Vec<&str> = parts[parts.len().saturating_sub(k)..]
            .iter()
            .take(hi - lo + 1)
            .copied()
            .collect();
        let shared: Set<&str> = sess
            .iter()
            .copied()
            .filter(|i| position.contains_key(i))
            .collect();
        if !shared.is_empty() {
            let total: usize = shared.iter().map(|i| position[i]).sum();
            let last: usize = shared.iter().map(|i| position[i]).max().expect("not empty");
            // Python's int / int is the correctly rounded quotient, as f64 division of the two
            // (exact below 2**53) is.
            sims.push((total as f64 / norm as f64, rank, length - last + 1, sess));
        }
    }
    // sort(reverse=True) on (sim, -rank, ...): similarity descending, then neighbour order; the
    // ranks are distinct, so the later fields never decide.
    sims.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.1.cmp(&b.1))
    });
    let mut at: Map<&str, usize> = Map::default();
    let mut scores: Pairs = Vec::new();
    for (sim, _, nearest, sess) in &sims {
        let x = sim / *nearest as f64;
        for item in sess {
            match at.get(item) {
                Some(&k) => scores[k].1 += x,
                None => {
                    at.insert(item, scores.len());
                    scores.push(((*item).to_owned(), 0.0 + x));
                }
            }
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_starts_at_the_click_at_or_after_t_else_the_one_before() {
        let times = [0.0, 100.0, 5000.0, 5100.0, 9000.0];
        assert_eq!(session_span(&times, 100.0, 1800.0), Some((0, 1)));
        assert_eq!(session_span(&times, 5050.0, 1800.0), Some((2, 3))); // 5100 is within the gap
        assert_eq!(session_span(&times, 9500.0, 1800.0), Some((4, 4))); // only 9000, before t
        assert_eq!(session_span(&times, 2500.0, 100.0), None);
        assert_eq!(session_span(&[], 1.0, 1800.0), None);
    }

    #[test]
    fn a_log_with_fewer_ids_than_times_keeps_what_rsplit_keeps() {
        // Python: "b\0c".rsplit("\0", 3)[-3:][:3] == ["b", "c"]: the session is cut to the ids there are.
        let query = vec!["b".to_owned()];
        let clicks: Map<String, ClickLog> =
            [("v".to_owned(), (vec![0.0, 10.0, 20.0], "b\0c".to_owned()))]
                .into_iter()
                .collect();
        let got = session_knn_scores(&query, &[("v".to_owned(), 0.0)], &clicks, 1800.0);
        // sim = 1 / (1 * 1), nearest = 1 - 1 + 1: each session item gets 1.0.
        assert_eq!(
            got,
            vec![("b".to_owned(), 1.0 / 1.0), ("c".to_owned(), 1.0 / 1.0)]
        );
    }

    #[test]
    fn the_query_is_the_latest_session_oldest_first() {
        let history: Pairs = vec![
            ("c".to_owned(), 5000.0),
            ("b".to_owned(), 4000.0),
            ("a".to_owned(), 100.0),
        ];
        assert_eq!(
            session_query(&history, &["x".to_owned(), "c".to_owned()], 8, 1800.0),
            ["b", "c", "x"]
        );
        assert_eq!(session_query(&history, &[], 1, 1800.0), ["c"]);
    }
}
