//! Edge cases of the blend port; `tests/blend_parity.py` checks it against Python at large.

use super::candidates::{session_weights, similar_user_scores, user_recent, RecentRule};
use super::decay::DecayPolicy;
use super::json::to_vec;
use super::*;

fn p(items: &[(&str, f64)]) -> Pairs {
    items.iter().map(|(i, x)| ((*i).to_owned(), *x)).collect()
}

fn only(source: Source, w: f64) -> BlendWeights {
    let zero = BlendWeights {
        item_item: 0.0,
        user_vector: 0.0,
        tf: 0.0,
        similar_users: 0.0,
        trending: 0.0,
        new_items: 0.0,
        session_knn: 0.0,
    };
    zero.with_overrides(&[(source.name().to_owned(), w)])
        .unwrap()
}

#[test]
fn ties_rank_by_item_id_in_code_point_order() {
    // Python: sorted(["😀", "€", "é", "z", "a"]) == ['a', 'z', 'é', '€', '😀'] (code points
    // 0x61 < 0x7a < 0xe9 < 0x20ac < 0x1f600); UTF-8 byte order agrees.
    let c = Candidates {
        vector_scores: p(&[
            ("😀", 1.0),
            ("€", 1.0),
            ("é", 1.0),
            ("z", 1.0),
            ("a", 1.0),
            ("b", 0.5),
        ]),
        ..Default::default()
    };
    let got = blend(
        &c,
        4,
        &Set::default(),
        &only(Source::UserVector, 1.0),
        5.0,
        0.5,
    );
    let ids: Vec<&str> = got.iter().map(|x| x.item.as_str()).collect();
    assert_eq!(ids, ["a", "z", "é", "€"]);
}

#[test]
fn trending_back_fills_with_a_tiny_score_when_its_weight_is_zero() {
    let c = Candidates {
        vector_scores: p(&[("v", 2.0)]),
        trending: p(&[("t1", 4.0), ("t2", 2.0), ("v", 8.0)]),
        trending_label: Some(String::new()),
        ..Default::default()
    };
    let got = blend(
        &c,
        3,
        &Set::default(),
        &only(Source::UserVector, 0.3),
        5.0,
        0.5,
    );
    let want = [
        (
            "v",
            0.3 * (2.0 / 2.0),
            Source::UserVector,
            "matches your taste",
        ),
        ("t1", 1e-9 * (4.0 / 8.0), Source::Trending, "popular now"),
        ("t2", 1e-9 * (2.0 / 8.0), Source::Trending, "popular now"),
    ];
    let got: Vec<(&str, f64, Source, &str)> = got
        .iter()
        .map(|x| (x.item.as_str(), x.score, x.source, x.reason.as_str()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn excluded_items_never_appear_even_from_trending() {
    let c = Candidates {
        vector_scores: p(&[("a", 1.0), ("b", 1.0)]),
        trending: p(&[("a", 1.0), ("c", 1.0)]),
        ..Default::default()
    };
    let exclude: Set<String> = ["a".to_owned()].into_iter().collect();
    let got = blend(&c, 10, &exclude, &BlendWeights::default(), 5.0, 0.5);
    assert!(got.iter().all(|x| x.item != "a"), "{got:?}");
    assert_eq!(got.len(), 2);
}

#[test]
fn item_item_without_shrinkage_names_the_recent_item_with_a_norm() {
    // r has no popularity: den = 0 without shrinkage, so only q's term counts for j.
    let c = Candidates {
        recent: p(&[("r", 2.0), ("q", 1.0)]),
        neighbours: [
            ("r".to_owned(), p(&[("j", 3.0), ("k", 1.0)])),
            ("q".to_owned(), p(&[("j", 6.0)])),
        ]
        .into_iter()
        .collect(),
        norms: [("r", 0.0), ("q", 4.0), ("j", 9.0), ("k", 1.0)]
            .into_iter()
            .map(|(i, x)| (i.to_owned(), x))
            .collect(),
        ..Default::default()
    };
    let got = blend(
        &c,
        5,
        &Set::default(),
        &only(Source::ItemItem, 1.0),
        0.0,
        0.5,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].reason, "because you viewed q");
}

#[test]
fn the_first_recent_item_names_the_reason_on_a_tie() {
    let c = Candidates {
        recent: p(&[("r", 1.0), ("q", 1.0)]),
        neighbours: [
            ("r".to_owned(), p(&[("j", 2.0)])),
            ("q".to_owned(), p(&[("j", 2.0)])),
        ]
        .into_iter()
        .collect(),
        norms: [("r", 1.0), ("q", 1.0), ("j", 1.0)]
            .into_iter()
            .map(|(i, x)| (i.to_owned(), x))
            .collect(),
        ..Default::default()
    };
    let got = blend(&c, 1, &Set::default(), &BlendWeights::default(), 5.0, 0.5);
    assert_eq!(got[0].reason, "because you viewed r");
}

#[test]
fn nothing_to_rank_gives_an_empty_answer() {
    assert!(blend(
        &Candidates::default(),
        10,
        &Set::default(),
        &BlendWeights::default(),
        5.0,
        0.5
    )
    .is_empty());
    let c = Candidates {
        vector_scores: p(&[("a", 1.0)]),
        ..Default::default()
    };
    assert!(blend(&c, 0, &Set::default(), &BlendWeights::default(), 5.0, 0.5).is_empty());
}

#[test]
fn new_items_reason_names_the_shared_label() {
    let c = Candidates {
        new_items: p(&[("a", 2.0), ("b", 1.0)]),
        new_labels: [
            ("a".to_owned(), "shoes".to_owned()),
            ("b".to_owned(), String::new()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let got = blend(
        &c,
        2,
        &Set::default(),
        &only(Source::NewItems, 1.0),
        5.0,
        0.5,
    );
    let reasons: Vec<&str> = got.iter().map(|x| x.reason.as_str()).collect();
    assert_eq!(reasons, ["new in shoes", "new in the catalogue"]);
}

#[test]
fn recent_items_by_time_top_up_with_the_strongest() {
    let decayed = p(&[("s", 5.0), ("a", 3.0), ("b", 1.0)]);
    // "x" has no weight (pruned): skipped; "a" clicked last, then the strongest of the rest.
    let got = recent_items(&decayed, &["x", "a"], 2, RecentOrder::Time);
    assert_eq!(got, p(&[("a", 3.0), ("s", 5.0)]));
    assert_eq!(
        recent_items(&decayed, &["x", "a"], 2, RecentOrder::Weight),
        p(&[("s", 5.0), ("a", 3.0)])
    );
}

#[test]
fn session_weights_follow_position_and_the_latest_session() {
    // Newest first: b at 1000, a at 990, then a gap of 2000 s (> 1800) before c: c is outside.
    let history = p(&[("b", 1000.0), ("a", 990.0), ("c", -1010.0)]);
    let recent = p(&[("a", 1.0), ("c", 1.0), ("b", 1.0)]);
    let got = session_weights(recent, &history, &[], 1.0, 1800.0, 0.2);
    assert_eq!(
        got,
        p(&[
            ("a", 1.0 * (1.0 / (1.0 + 1.0 * 1.0))),
            ("c", 1.0 * (1.0 / (1.0 + 1.0 * 2.0) * 0.2)),
            ("b", 1.0 * (1.0 / (1.0 + 0.0)))
        ])
    );
}

#[test]
fn context_items_come_first_with_the_strongest_weight() {
    let rule = RecentRule {
        k: 3,
        order: RecentOrder::Time,
        position_decay: 0.0,
        session_gap_s: 1800.0,
        outside_session: 1.0,
    };
    let policy = DecayPolicy::new(3600.0);
    let stored = p(&[("a", 4.0), ("b", 2.0)]);
    let history = p(&[("a", 10.0), ("b", 5.0)]);
    let (decayed, recent) = user_recent(
        &stored,
        &history,
        0.5,
        10.0,
        &policy,
        &rule,
        &["c".to_owned(), "b".to_owned()],
    );
    assert_eq!(
        decayed,
        p(&[("c", 4.0 * 0.5), ("b", 4.0 * 0.5), ("a", 4.0 * 0.5)])
    );
    assert_eq!(recent, decayed);
}

#[test]
fn history_without_weights_decays_by_recency() {
    let rule = RecentRule {
        k: 8,
        order: RecentOrder::Weight,
        position_decay: 0.0,
        session_gap_s: 1800.0,
        outside_session: 1.0,
    };
    let policy = DecayPolicy::new(3600.0);
    let history = p(&[("a", 100.0), ("b", 40.0)]);
    let (decayed, _) = user_recent(&p(&[("z", 0.0)]), &history, 0.5, 100.0, &policy, &rule, &[]);
    assert_eq!(
        decayed,
        p(&[
            ("a", policy.decayed_weight(1.0, 100.0, 100.0)),
            ("b", policy.decayed_weight(1.0, 40.0, 100.0))
        ])
    );
}

#[test]
fn similar_users_start_sums_from_positive_zero() {
    let theirs: Map<String, std::sync::Arc<Pairs>> = [
        ("u".to_owned(), p(&[("a", 2.0), ("b", 0.0)]).into()),
        ("v".to_owned(), p(&[("b", 0.0)]).into()),
    ]
    .into_iter()
    .collect();
    let got = similar_user_scores(&p(&[("u", -0.0), ("v", 1.0), ("w", 1.0)]), &theirs);
    // Python: scores.get("a", 0.0) + -0.0 * 2.0 / 2.0 == 0.0, positive; b (weight 0) and the
    // users whose top weight is 0 or who have no row add nothing.
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "a");
    assert_eq!(got[0].1.to_bits(), 0.0_f64.to_bits());
}

#[test]
fn scored_serialises_as_the_readers_item() {
    let x = Scored {
        item: "é\"1".to_owned(),
        score: 1e16,
        reason: "popular now".to_owned(),
        source: Source::Trending,
    };
    let text = String::from_utf8(to_vec(&[x]).unwrap()).unwrap();
    assert_eq!(
        text,
        r#"[{"item_id":"é\"1","score":1e+16,"reason":"popular now","source":"trending"}]"#
    );
}

#[test]
fn overrides_are_checked_as_in_python() {
    let w = BlendWeights::default();
    assert_eq!(
        w.with_overrides(&[("nope".to_owned(), 1.0), ("also".to_owned(), 1.0)])
            .unwrap_err(),
        "unknown blend sources: also, nope"
    );
    assert!(w.with_overrides(&[("tf".to_owned(), f64::NAN)]).is_err());
    assert!(w.with_overrides(&[("tf".to_owned(), -1.0)]).is_err());
    assert_eq!(w.with_overrides(&[("tf".to_owned(), 2.0)]).unwrap().tf, 2.0);
}

#[test]
fn a_category_keeps_only_its_candidates_but_not_its_trending() {
    use super::request::{category_candidates, keep_only};
    let c = Candidates {
        recent: p(&[("r", 1.0)]),
        neighbours: [("r".to_owned(), p(&[("shoe", 1.0), ("hat", 1.0)]))]
            .into_iter()
            .collect(),
        vector_scores: p(&[("hat", 1.0), ("boot", 1.0)]),
        trending: p(&[("hat", 1.0)]),
        ..Default::default()
    };
    let mut asked: Vec<&str> = category_candidates(&c).into_iter().collect();
    asked.sort_unstable();
    assert_eq!(asked, ["boot", "hat", "shoe"]);
    let keep: Set<String> = ["shoe".to_owned(), "boot".to_owned()].into_iter().collect();
    let kept = keep_only(c.clone(), &keep);
    assert_eq!(kept.neighbours["r"], p(&[("shoe", 1.0)]));
    assert_eq!(kept.vector_scores, p(&[("boot", 1.0)]));
    assert_eq!(kept.trending, c.trending);
}

#[test]
fn hidden_items_are_excluded_without_a_union() {
    let c = Candidates {
        vector_scores: p(&[("a", 1.0), ("b", 0.5), ("c", 0.25)]),
        ..Default::default()
    };
    let asked: Set<String> = ["a".to_owned()].into_iter().collect();
    let hidden: Set<String> = (0..100)
        .map(|k| format!("x{k}"))
        .chain(["c".to_owned()])
        .collect();
    let got = blend_each_excluding(
        &c,
        10,
        &[only(Source::UserVector, 1.0)],
        &[&asked, &hidden],
        5.0,
        0.5,
    );
    let ids: Vec<&str> = got[0].iter().map(|x| x.item.as_str()).collect();
    assert_eq!(ids, ["b"]);
}
