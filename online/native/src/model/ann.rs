//! The HNSW candidate search of `online/ann.py`: the indexes `SharedModels` saved, opened as
//! read-only views, and the exact top-n selection (`top_of`) that orders every source.

use std::cmp::Ordering;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use anyhow::{anyhow, Result};
use serde::Deserialize;
use usearch::{Index, IndexOptions};

/// `AnnConfig` as the folder's manifest records it (`"ann": AnnConfig.__dict__`); only
/// `overfetch` enters a request's maths, the rest is kept for logs and checks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AnnSettings {
    pub min_rows: usize,
    pub overfetch: f64,
    pub expansion: usize,
    pub connectivity: usize,
    pub expansion_add: usize,
    pub threads: usize,
    pub dtype: String,
}

impl AnnSettings {
    /// Candidates to fetch for `n` wanted rows: `max(n, ceil(overfetch × n))` (`AnnConfig.fetch`).
    pub fn fetch(&self, n: usize) -> usize {
        n.max((self.overfetch * n as f64).ceil() as usize)
    }
}

/// Search breadth of an index opened from the folder. Python's `AnnIndex.open` calls
/// `usearch.Index.restore(path, view=True)`, which builds the index with usearch's default
/// usearch's default `expansion_search` (`usearch.compiled.DEFAULT_EXPANSION_SEARCH`): what an
/// index of a folder whose manifest records no ANN settings is searched with. A folder's own
/// `reader_ann_expansion` (its manifest's `ann.expansion`) is applied otherwise, as
/// `AnnIndex.open` does in Python (the file itself does not record it).
pub const VIEW_EXPANSION_SEARCH: usize = 64;

/// One saved HNSW index, its graph and vectors mapped from the file.
///
/// usearch keeps one search context per concurrent search (`threads_search`, the CPU count by
/// default) and fails a search that finds none free ("Reserve capacity ahead of searches!";
/// 16 threads searching one index on this 2-core machine failed 29,287 of 32,000 searches).
/// `open` reserves `search_threads` contexts and a counting gate holds any further caller
/// until one is free, so a search never fails for want of one.
pub struct AnnIndex {
    index: Index,
    pub rows: usize,
    gate: Gate,
}

/// A counting semaphore: at most `n` holders at once.
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    fn new(n: usize) -> Self {
        Self { free: Mutex::new(n), freed: Condvar::new() }
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            while *free == 0 {
                free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
            }
            *free -= 1;
        }
        let out = f();
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.freed.notify_one();
        out
    }
}

impl AnnIndex {
    /// Map the index saved at `path`, with `search_threads` (at least 1) concurrent searches.
    pub fn open(path: &Path, search_threads: usize, expansion: usize) -> Result<Self> {
        let text = path.to_str().ok_or_else(|| anyhow!("{}: not UTF-8", path.display()))?;
        let meta = Index::metadata(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut options: IndexOptions = meta.into();
        options.expansion_search = expansion;
        let index = Index::new(&options).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        index.view(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let rows = index.size();
        let threads = search_threads.max(1);
        index.reserve_capacity_and_threads(rows, threads).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Self { index, rows, gate: Gate::new(threads) })
    }

    /// Row numbers of (about) the `count` rows nearest `query`, best first
    /// (`AnnIndex.candidates`; may be fewer than `count`).
    pub fn candidates(&self, query: &[f32], count: usize) -> Result<Vec<usize>> {
        let found = self.gate.run(|| self.index.search(query, count)).map_err(|e| anyhow!("usearch search: {e}"))?;
        Ok(found.keys.into_iter().map(|k| k as usize).collect())
    }

    pub fn expansion_search(&self) -> usize {
        self.index.expansion_search()
    }

    pub fn hardware_acceleration(&self) -> String {
        self.index.hardware_acceleration()
    }
}

/// Positions of the `n` largest `scores`, largest first (`ann.top_of`).
///
/// NumPy's `argpartition` counts NaN as the largest value and the stable `argsort(-scores)`
/// then puts it last: a NaN is kept if there are fewer than `n` other scores and comes after
/// them. Equal scores come lowest position first; NumPy keeps them in `argpartition`'s
/// order, which is not defined, so two equal scores at the cut may differ from Python's pick.
pub fn top_of(scores: &[f32], n: usize) -> Vec<usize> {
    let m = scores.len();
    if m == 0 || n == 0 {
        return Vec::new();
    }
    // Selection order: NaN above everything; then higher scores, then lower positions.
    let keep = |a: &usize, b: &usize| -> Ordering {
        let (x, y) = (scores[*a], scores[*b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(b),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => y.partial_cmp(&x).unwrap_or(Ordering::Equal).then(a.cmp(b)),
        }
    };
    let mut at: Vec<usize> = (0..m).collect();
    if n < m {
        at.select_nth_unstable_by(n - 1, keep);
        at.truncate(n);
    }
    // Final order: NaN last (`-NaN` sorts last in NumPy), the rest by score.
    at.sort_by(|a, b| {
        let (x, y) = (scores[*a], scores[*b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(b),
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => y.partial_cmp(&x).unwrap_or(Ordering::Equal).then(a.cmp(b)),
        }
    });
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_of_orders_like_numpy() {
        let s = [0.5f32, 2.0, -1.0, 2.0, 3.0];
        assert_eq!(top_of(&s, 3), vec![4, 1, 3]);
        assert_eq!(top_of(&s, 10), vec![4, 1, 3, 0, 2]);
        assert_eq!(top_of(&s, 0), Vec::<usize>::new());
        let nan = [1.0f32, f32::NAN, 0.0];
        assert_eq!(top_of(&nan, 2), vec![0, 1]);
        assert_eq!(top_of(&nan, 3), vec![0, 2, 1]);
    }

    #[test]
    fn fetch_rounds_up() {
        let a = AnnSettings { min_rows: 5000, overfetch: 2.5, expansion: 32, connectivity: 16,
                              expansion_add: 128, threads: 1, dtype: "bf16".into() };
        assert_eq!(a.fetch(3), 8);
        assert_eq!(a.fetch(0), 0);
        assert_eq!(AnnSettings { overfetch: 1.0, ..a }.fetch(7), 7);
    }
}
