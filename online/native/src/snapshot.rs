//! The in-memory popularity snapshot (`online/snapshot.py` `TrendingSnapshot`, overall list only:
//! requests with a category go to the Python reader): the item-item source's norms, the trending
//! source's list, and the degraded answer when Redis does not answer.

use anyhow::{anyhow, Result};
use redis::aio::MultiplexedConnection;

use crate::blend::candidates::PopularitySnapshot;
use crate::blend::Map;
use crate::store::{popularity_page, Keys, Meta, Pairs, SNAPSHOT_PAGE};

/// Popular items kept in list form (`_POPULAR_KEPT`).
pub const POPULAR_KEPT: usize = 1000;

#[derive(Default)]
pub struct Snapshot {
    pub meta: Option<Meta>,
    pub popular: Pairs,
    /// Every kept item's popularity and the floor, for the item-item norms (the blend's type:
    /// `PopularitySnapshot::shift` and `norm` are `TrendingSnapshot._shift` and `norms`).
    pub norms: PopularitySnapshot,
    pub n_items: usize,
}

impl Snapshot {
    /// `ReaderStore.snapshot` + `TrendingSnapshot.refresh`: the popularity list read a page per
    /// round trip, restarted when the landmark moves between pages.
    pub async fn read(conn: &mut MultiplexedConnection, keys: &Keys, n_items: usize) -> Result<Snapshot> {
        let page = SNAPSHOT_PAGE;
        for _ in 0..3 {
            let (meta, first) = popularity_page(conn, keys, 0, page.min(n_items)).await?;
            let mut pop = first;
            let mut got = pop.len();
            let mut moved = false;
            while got == page && pop.len() < n_items {
                let stop = (pop.len() + page).min(n_items);
                let (again, chunk) = popularity_page(conn, keys, pop.len(), stop).await?;
                if again.landmark != meta.landmark {
                    moved = true;
                    break;
                }
                got = if stop - pop.len() == page { chunk.len() } else { 0 };
                pop.extend(chunk);
            }
            if !moved {
                let mut seen: Map<String, f64> = Map::with_capacity_and_hasher(pop.len(), Default::default());
                let mut list = Vec::with_capacity(pop.len());
                for (i, s) in pop {
                    if !seen.contains_key(&i) {
                        seen.insert(i.clone(), s);
                        list.push((i, s));
                    }
                }
                let floor = if list.len() >= n_items { list.last().map(|p| p.1).unwrap_or(0.0) } else { 0.0 };
                list.truncate(POPULAR_KEPT);
                let norms = PopularitySnapshot { pop: seen, floor, landmark: Some(meta.landmark) };
                return Ok(Snapshot { meta: Some(meta), popular: list, norms, n_items });
            }
        }
        Err(anyhow!("the landmark moved during three snapshot reads in a row"))
    }

    /// `TrendingSnapshot.stored_top(None, n)`.
    pub fn stored_top(&self, n: usize) -> Option<(f64, &[(String, f64)])> {
        let meta = self.meta?;
        let kept = self.n_items.min(POPULAR_KEPT);
        if n > self.popular.len() && self.popular.len() >= kept {
            return None;
        }
        Some((meta.landmark, &self.popular[..n.min(self.popular.len())]))
    }

    /// `TrendingSnapshot.trending(None, n, exclude)`: values at the snapshot's `now`.
    pub fn trending(&self, n: usize, exclude: &std::collections::HashSet<String>, rate: f64) -> Pairs {
        let factor = self.meta.map(|m| m.factor(rate)).unwrap_or(1.0);
        self.popular.iter().filter(|p| !exclude.contains(&p.0)).take(n).map(|(i, s)| (i.clone(), s * factor)).collect()
    }
}
