//! The item-item source's terms: `_item_item_totals` and `_strongest_recent` of
//! `models/blend.py`, from one pass over the recent items' neighbour rows.

use super::rank::Ids;
use super::{py_max, Candidates, Map};

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
        Self {
            alpha,
            beta: 1.0 - alpha,
            cosine: alpha == 0.5,
        }
    }

    fn of_recent(self, x: f64) -> f64 {
        if self.cosine {
            x.sqrt()
        } else {
            x.powf(self.alpha)
        }
    }

    fn of_candidate(self, x: f64) -> f64 {
        if self.cosine {
            x.sqrt()
        } else {
            x.powf(self.beta)
        }
    }
}

fn norm_of(c: &Candidates, item: &str) -> f64 {
    c.norms.get(item).copied().unwrap_or(0.0)
}

/// The item-item terms `rel(r) · co(r, j) / den(r, j)`, in Python's loop order (recent items,
/// then each one's row): `_item_item_totals` sums them, `_strongest_recent` picks from them.
pub(super) struct Terms {
    /// (recent item's index in `c.recent`, candidate number, term), for the terms Python adds
    /// (`s <= 0` skipped; a NaN kept, as `if s <= 0: continue` keeps it).
    pub(super) terms: Vec<(u32, u32, f64)>,
}

/// `_item_item_totals` and the terms behind them; empty when no recent item has a positive
/// weight (a NaN largest weight goes on, as Python's `top_weight <= 0` lets it).
pub(super) fn item_item_terms<'a>(
    c: &'a Candidates,
    shrinkage: f64,
    alpha: f64,
    ids: &mut Ids<'a>,
) -> Terms {
    let mut terms = Vec::new();
    let top_weight = py_max(c.recent.iter().map(|(_, w)| *w), 0.0);
    if top_weight <= 0.0 {
        return Terms { terms };
    }
    let powers = Powers::new(alpha);
    let mut roots: Vec<f64> = Vec::new(); // by candidate number; NaN: not computed (a root is never NaN for a norm that is not)
    let mut have_root: Vec<bool> = Vec::new();
    for (at, (r, w)) in c.recent.iter().enumerate() {
        let root_r = powers.of_recent(norm_of(c, r));
        let rel = w / top_weight;
        let Some(row) = c.neighbours.get(r) else {
            continue;
        };
        for (j, co) in row {
            let k = ids.id(j) as usize;
            if k >= roots.len() {
                roots.resize(ids.len(), 0.0);
                have_root.resize(ids.len(), false);
            }
            if !have_root[k] {
                roots[k] = powers.of_candidate(norm_of(c, j));
                have_root[k] = true;
            }
            let den = root_r * roots[k] + shrinkage;
            let s = if den > 0.0 { rel * (co / den) } else { 0.0 };
            if s <= 0.0 {
                continue;
            }
            terms.push((at as u32, k as u32, s));
        }
    }
    Terms { terms }
}

impl Terms {
    /// The sums of `_item_item_totals` (None: no term), terms added in Python's order.
    pub(super) fn totals(&self, n_ids: usize) -> Vec<Option<f64>> {
        let mut sums: Vec<Option<f64>> = vec![None; n_ids];
        for &(_, k, s) in &self.terms {
            let slot = &mut sums[k as usize];
            *slot = Some(match *slot {
                Some(prev) => prev + s,
                None => s,
            });
        }
        sums
    }

    /// `_strongest_recent`: for each wanted candidate, the recent item of its largest term
    /// (the first on ties; only positive terms count, so a NaN term never wins).
    pub(super) fn strongest<'c>(
        &self,
        c: &'c Candidates,
        wanted: &[u32],
        n_ids: usize,
    ) -> Map<u32, &'c str> {
        let mut best: Map<u32, (f64, u32)> = Map::default();
        if wanted.is_empty() {
            return Map::default();
        }
        let mut is_wanted = vec![false; n_ids];
        for &k in wanted {
            is_wanted[k as usize] = true;
        }
        for &(at, k, s) in &self.terms {
            // A term is positive or NaN (see `terms`); Python's `s > 0` drops the NaN.
            if !is_wanted[k as usize] || s.is_nan() {
                continue;
            }
            match best.get_mut(&k) {
                Some(b) if s > b.0 => *b = (s, at),
                Some(_) => {}
                None => {
                    best.insert(k, (s, at));
                }
            }
        }
        best.into_iter()
            .map(|(k, (_, at))| (k, c.recent[at as usize].0.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blend::Pairs;

    fn p(items: &[(&str, f64)]) -> Pairs {
        items.iter().map(|(i, x)| ((*i).to_owned(), *x)).collect()
    }

    fn totals(c: &Candidates, shrinkage: f64, alpha: f64) -> Map<String, f64> {
        let mut ids = Ids::new(0);
        let terms = item_item_terms(c, shrinkage, alpha, &mut ids);
        let sums = terms.totals(ids.len());
        sums.iter()
            .enumerate()
            .filter_map(|(k, x)| x.map(|x| (ids.names[k].to_owned(), x)))
            .collect()
    }

    #[test]
    fn item_item_without_shrinkage_skips_items_with_no_popularity() {
        // den = sqrt(0) * sqrt(pop) + 0 = 0: no term rather than a division by zero.
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
        let want_j = (1.0 / 2.0) * (6.0 / (4.0_f64.sqrt() * 9.0_f64.sqrt() + 0.0));
        assert_eq!(
            totals(&c, 0.0, 0.5),
            [("j".to_owned(), want_j)].into_iter().collect()
        );
    }

    #[test]
    fn asymmetric_alpha_uses_powers_and_zero_to_the_zero_is_one() {
        // alpha = 1: pop(r)^1 · pop(j)^0, and 0^0 = 1 in both languages.
        let c = Candidates {
            recent: p(&[("r", 1.0)]),
            neighbours: [("r".to_owned(), p(&[("j", 3.0)]))].into_iter().collect(),
            norms: [("r", 2.0), ("j", 0.0)]
                .into_iter()
                .map(|(i, x)| (i.to_owned(), x))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            totals(&c, 0.0, 1.0)["j"],
            1.0 * (3.0 / (2.0_f64.powf(1.0) * 0.0_f64.powf(0.0) + 0.0))
        );
    }
}
