//! Which items the catalogue hides (`online/catalogue.py` `CatalogueView`, the hidden set only):
//! the whole catalogue HASH read at start, then the change feed (a stream whose entries carry the
//! change number `v` and the item `i`) followed every `POLL` — an item marked unavailable or
//! deleted leaves the answers as soon after its change as it does from the Python reader's.

use std::collections::HashSet;

use anyhow::Result;
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::store::Keys;

pub const POLL_S: f64 = 0.1;
const BATCH: usize = 5000;

#[derive(Default)]
pub struct Catalogue {
    pub hidden: HashSet<String>,
    position: Option<String>,
    version: i64,
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// `ItemInfo.hidden` of a stored record: deleted, or not available. None: it does not parse
/// (the Python reader logs it and keeps what it knew).
fn record_hidden(raw: &[u8]) -> Option<bool> {
    let d: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let op = d.get("op").and_then(|x| x.as_str()).unwrap_or("upsert");
    let available = match d.get("available") {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => return None,
    };
    Some(op == "delete" || !available)
}

/// Stream entries `[[id, [field, value, ...]], ...]` as (id, v, item).
fn entries(v: &Value) -> Vec<(String, i64, String)> {
    let Value::Array(a) = v else { return Vec::new() };
    a.iter()
        .filter_map(|e| {
            let Value::Array(pair) = e else { return None };
            let id = text(pair.first()?)?;
            let (mut ver, mut item) = (None, None);
            if let Some(Value::Array(fields)) = pair.get(1) {
                for c in fields.chunks_exact(2) {
                    match text(&c[0]).as_deref() {
                        Some("v") => ver = text(&c[1]).and_then(|s| s.parse::<i64>().ok()),
                        Some("i") => item = text(&c[1]),
                        _ => {}
                    }
                }
            }
            Some((id, ver?, item?))
        })
        .collect()
}

impl Catalogue {
    /// Everything, the feed's position first (`CatalogueView.load`).
    pub async fn load(conn: &mut MultiplexedConnection, keys: &Keys) -> Result<Catalogue> {
        let last: Value = redis::cmd("XREVRANGE").arg(keys.catalogue_feed()).arg("+").arg("-").arg("COUNT").arg(1)
            .query_async(conn).await?;
        let (position, version) = match entries(&last).into_iter().next() {
            Some((id, v, _)) => (id, v),
            None => ("0-0".to_string(), 0),
        };
        let mut hidden = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, chunk): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN").arg(keys.catalogue()).arg(cursor)
                .arg("COUNT").arg(1000).query_async(conn).await?;
            for c in chunk.chunks_exact(2) {
                if record_hidden(&c[1]) == Some(true) {
                    hidden.insert(String::from_utf8_lossy(&c[0]).into_owned());
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(Catalogue { hidden, position: Some(position), version })
    }

    /// Apply the feed's new entries, or load again when they do not follow on (`refresh`);
    /// true when the hidden set may have changed.
    pub async fn refresh(&mut self, conn: &mut MultiplexedConnection, keys: &Keys) -> Result<bool> {
        let Some(mut position) = self.position.clone() else {
            *self = Catalogue::load(conn, keys).await?;
            return Ok(true);
        };
        let mut changed = false;
        loop {
            let v: Value = redis::cmd("XRANGE").arg(keys.catalogue_feed()).arg(format!("({position}")).arg("+")
                .arg("COUNT").arg(BATCH).query_async(conn).await?;
            let got = entries(&v);
            if got.is_empty() {
                break;
            }
            if got[0].1 != self.version + 1 {
                *self = Catalogue::load(conn, keys).await?;
                return Ok(true);
            }
            changed = true;
            let mut ids: Vec<String> = Vec::new();
            let mut seen = HashSet::new();
            for (_, _, item) in &got {
                if seen.insert(item.clone()) {
                    ids.push(item.clone());
                }
            }
            let records: Vec<Option<Vec<u8>>> = redis::cmd("HMGET").arg(keys.catalogue()).arg(&ids).query_async(conn).await?;
            for (item, record) in ids.into_iter().zip(records) {
                match record {
                    None => {
                        self.hidden.remove(&item);
                    }
                    Some(raw) => match record_hidden(&raw) {
                        Some(true) => {
                            self.hidden.insert(item);
                        }
                        Some(false) => {
                            self.hidden.remove(&item);
                        }
                        None => {}
                    },
                }
            }
            let (last_id, last_v, _) = got.last().unwrap().clone();
            position = last_id;
            self.version = last_v;
            self.position = Some(position.clone());
            if got.len() < BATCH {
                break;
            }
        }
        Ok(changed)
    }
}
