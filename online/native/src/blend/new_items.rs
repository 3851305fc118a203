//! The new_items source: `new_item_scores` of `models/candidates.py`, items new in the
//! catalogue that share a category or tag with the recent items. Off by default
//! (`BlendWeights.new_items` = 0); the catalogue's in-memory index is the caller's
//! (`NewItemIndex`, as `online/catalogue.py`'s `CatalogueView` serves it).

use super::{Map, Pairs, Set};

/// An entry of a feature's newest-items list: `(-added_at, item, its features)`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub neg_added: f64,
    pub item: String,
    pub features: Set<String>,
}

/// What `new_item_scores` reads from the catalogue (no I/O).
pub trait NewItemIndex {
    /// The item's features (`c:<category>`, `t:<tag>`); None or empty when unknown.
    fn features(&self, item: &str) -> Option<&Set<String>>;
    /// The newest visible items with `feature`, newest first.
    fn newest(&self, feature: &str) -> &[NewEntry];
}

/// The new-item boost's settings (`reader_new_item_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewItemRule {
    pub half_life_s: f64,
    pub max_age_s: f64,
    pub per_feature: usize,
}

/// `new_item_scores`: for each recent item r, the `per_feature` newest items of each of its
/// features not older than `max_age_s` score `rel(r) · |F(r) ∩ F(j)| / |F(r) ∪ F(j)|`, summed
/// over r and halved every `half_life_s` of age. Returns the scores (first met first) and each
/// item's label: the category, else the smallest tag, its strongest term shares.
pub fn new_item_scores(
    recent: &[(String, f64)],
    index: &impl NewItemIndex,
    now: f64,
    rule: &NewItemRule,
) -> (Pairs, Map<String, String>) {
    let top = super::py_max(recent.iter().map(|(_, w)| *w), 0.0);
    if top <= 0.0 || rule.per_feature == 0 {
        return (Vec::new(), Map::default());
    }
    let oldest = now - rule.max_age_s;
    let recent_ids: Set<&str> = recent.iter().map(|(i, _)| i.as_str()).collect();
    let mut at: Map<&str, usize> = Map::default();
    let mut found: Vec<Found> = Vec::new(); // first met first
    for (r, w) in recent {
        let Some(fr) = index.features(r).filter(|f| !f.is_empty()) else {
            continue;
        };
        if *w <= 0.0 {
            continue;
        }
        let rel = w / top;
        let n_r = fr.len();
        let mut seen: Set<&str> = Set::default();
        // The order of F(r) does not matter: a candidate's term depends on F(r) and F(j) only,
        // and `seen` counts it once per recent item whichever feature found it.
        for f in fr {
            let list = index.newest(f);
            for e in &list[..rule.per_feature.min(list.len())] {
                if -e.neg_added < oldest {
                    break;
                }
                let j = e.item.as_str();
                if seen.contains(j) || recent_ids.contains(j) {
                    continue;
                }
                seen.insert(j);
                let shared = fr.iter().filter(|x| e.features.contains(*x)).count();
                // Python: rel * shared / (n_r + len(fj) - shared), left to right.
                let s = rel * shared as f64 / (n_r + e.features.len() - shared) as f64;
                match at.get(j) {
                    None => {
                        at.insert(j, found.len());
                        found.push(Found {
                            item: j,
                            total: s,
                            added: -e.neg_added,
                            best: s,
                            fr,
                            fj: &e.features,
                        });
                    }
                    Some(&k) => {
                        let x = &mut found[k];
                        x.total += s;
                        if s > x.best {
                            (x.best, x.fr, x.fj) = (s, fr, &e.features);
                        }
                    }
                }
            }
        }
    }
    // 2 ** x through a base the optimiser cannot see: LLVM turns pow(2.0, x) into exp2(x), which
    // is not bound to give glibc pow's bits, and CPython's 2.0 ** x calls pow.
    let two = std::hint::black_box(2.0_f64);
    let h = rule.half_life_s;
    let scores = found
        .iter()
        .map(|x| {
            // max(0.0, now - added): a NaN or negative age counts as 0, as Python's max gives.
            let age = if now - x.added > 0.0 {
                now - x.added
            } else {
                0.0
            };
            (x.item.to_owned(), x.total * two.powf(-age / h))
        })
        .collect();
    let labels = found
        .iter()
        .map(|x| (x.item.to_owned(), label(x.fr, x.fj)))
        .collect();
    (scores, labels)
}

/// A candidate met so far: its total, when it was added, and its strongest term with the two
/// feature sets behind it (its label).
struct Found<'a> {
    item: &'a str,
    total: f64,
    added: f64,
    best: f64,
    fr: &'a Set<String>,
    fj: &'a Set<String>,
}

/// `NewItemLabels.__getitem__`: the shared category (an item has one), else the smallest shared
/// tag, without its `c:` / `t:` prefix.
fn label(fr: &Set<String>, fj: &Set<String>) -> String {
    let shared: Vec<&String> = fr.iter().filter(|x| fj.contains(*x)).collect();
    let pick = shared
        .iter()
        .find(|x| x.starts_with("c:"))
        .or_else(|| shared.iter().min())
        .expect("found under a shared feature");
    pick.chars().skip(2).collect()
}

/// An in-memory `NewItemIndex` (the parity harness, tests).
#[derive(Debug, Clone, Default)]
pub struct NewItemTable {
    pub features: Map<String, Set<String>>,
    pub newest: Map<String, Vec<NewEntry>>,
}

impl NewItemIndex for NewItemTable {
    fn features(&self, item: &str) -> Option<&Set<String>> {
        self.features.get(item)
    }

    fn newest(&self, feature: &str) -> &[NewEntry] {
        self.newest.get(feature).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(xs: &[&str]) -> Set<String> {
        xs.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn jaccard_terms_halved_by_age_and_labelled_by_category() {
        let mut t = NewItemTable::default();
        t.features
            .insert("r".to_owned(), set(&["c:shoes", "t:red"]));
        let j = NewEntry {
            neg_added: -1000.0,
            item: "j".to_owned(),
            features: set(&["c:shoes", "t:blue"]),
        };
        t.newest.insert("c:shoes".to_owned(), vec![j]);
        let rule = NewItemRule {
            half_life_s: 500.0,
            max_age_s: 5000.0,
            per_feature: 3,
        };
        let (scores, labels) = new_item_scores(&[("r".to_owned(), 2.0)], &t, 2000.0, &rule);
        // |{c:shoes}| / |{c:shoes, t:red, t:blue}| = 1 / 3, age 1000 s = two half-lives.
        assert_eq!(
            scores,
            vec![(
                "j".to_owned(),
                (2.0 / 2.0) * 1.0 / 3.0 * 2.0_f64.powf(-1000.0 / 500.0)
            )]
        );
        assert_eq!(labels["j"], "shoes");
    }

    #[test]
    fn too_old_items_and_the_recent_items_themselves_are_left_out() {
        let mut t = NewItemTable::default();
        t.features.insert("r".to_owned(), set(&["t:red"]));
        let me = NewEntry {
            neg_added: -900.0,
            item: "r".to_owned(),
            features: set(&["t:red"]),
        };
        let old = NewEntry {
            neg_added: -10.0,
            item: "o".to_owned(),
            features: set(&["t:red"]),
        };
        t.newest.insert("t:red".to_owned(), vec![me, old]);
        let rule = NewItemRule {
            half_life_s: 500.0,
            max_age_s: 500.0,
            per_feature: 3,
        };
        let (scores, _) = new_item_scores(&[("r".to_owned(), 1.0)], &t, 1000.0, &rule);
        assert!(scores.is_empty(), "{scores:?}");
    }
}
