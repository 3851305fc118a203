//! The shared-row near cache of `online/rowcache.py`: neighbour rows and similar users' top items,
//! reused by later requests for at most `reader_cache_ttl_s` under the same decay landmark (the
//! shopper's own state is never cached). Re-reading them dominated Redis' work per request.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::Pairs;

pub struct RowCache {
    ttl: Duration,
    max_rows: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// key -> (read at, landmark, row)
    rows: HashMap<String, (Instant, f64, Arc<Pairs>)>,
    /// keys in read order (a key read again appears again; the stale copy is skipped on expiry)
    order: VecDeque<(Instant, String)>,
}

impl RowCache {
    pub fn new(ttl_s: f64, max_rows: usize) -> RowCache {
        RowCache { ttl: Duration::from_secs_f64(ttl_s.max(0.0)), max_rows, inner: Mutex::new(Inner::default()) }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_rows > 0
    }

    /// The fresh rows of `keys` read under `landmark`, and the keys to read (in order).
    pub fn lookup(&self, keys: &[String], now: Instant, landmark: f64) -> (Vec<(String, Arc<Pairs>)>, Vec<String>) {
        if !self.enabled() {
            return (Vec::new(), keys.to_vec());
        }
        let inner = self.inner.lock().unwrap();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for k in keys {
            match inner.rows.get(k) {
                Some((at, l, row)) if now.duration_since(*at) < self.ttl && *l == landmark => found.push((k.clone(), row.clone())),
                _ => missing.push(k.clone()),
            }
        }
        (found, missing)
    }

    /// Keep `rows`, read at `now` under `landmark`; drop what is past its time or over the bound.
    pub fn store(&self, rows: &[(String, Arc<Pairs>)], now: Instant, landmark: f64) {
        if !self.enabled() || rows.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        for (k, row) in rows {
            inner.rows.insert(k.clone(), (now, landmark, row.clone()));
            inner.order.push_back((now, k.clone()));
        }
        while let Some((at, _)) = inner.order.front() {
            let over = inner.rows.len() > self.max_rows || inner.order.len() > 4 * self.max_rows.max(1);
            if !over && now.duration_since(*at) < self.ttl {
                break;
            }
            let (at, key) = inner.order.pop_front().unwrap();
            if inner.rows.get(&key).is_some_and(|(t, _, _)| *t == at) {
                inner.rows.remove(&key);
            }
        }
    }
}
