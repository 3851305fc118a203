//! The reader's two Redis round trips (`online/store.py` `ReaderStore.read_user` and
//! `read_expansion`) and the decoding of what they return (`driftrec/userstate.py`).

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::blend::decay::read_factor;

pub type Pairs = Vec<(String, f64)>;

/// Strongest items read per similar user (`models/candidates.py` `PER_SIMILAR_USER`).
pub const PER_SIMILAR_USER: usize = 10;
/// Popularity entries per snapshot round trip (`online/store.py` `SNAPSHOT_PAGE`).
pub const SNAPSHOT_PAGE: usize = 1000;

#[derive(Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn user_state(&self, user: &str) -> String {
        format!("{}:{{u:{}}}:iw", self.prefix, user)
    }
    pub fn user_vec(&self, user: &str) -> String {
        format!("{}:{{u:{}}}:vec", self.prefix, user)
    }
    pub fn item_nbrs(&self, item: &str) -> String {
        format!("{}:{{i:{}}}:nbr", self.prefix, item)
    }
    pub fn popularity(&self) -> String {
        format!("{}:{{g}}:pop", self.prefix)
    }
    pub fn meta(&self) -> String {
        format!("{}:{{g}}:meta", self.prefix)
    }
    pub fn model_current(&self) -> String {
        format!("{}:{{m}}:current", self.prefix)
    }
    pub fn served(&self, request_id: &str) -> String {
        format!("{}:{{r:{}}}", self.prefix, request_id)
    }
    pub fn catalogue(&self) -> String {
        format!("{}:{{g}}:items", self.prefix)
    }
    pub fn catalogue_feed(&self) -> String {
        format!("{}:{{g}}:items:feed", self.prefix)
    }
}

/// The decay landmark and the stream's clock (`online/store.py` `Meta`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meta {
    pub landmark: f64,
    pub last_event_time: f64,
}

impl Meta {
    fn parse(v: &Value) -> Meta {
        let items = match v {
            Value::Array(a) => a.as_slice(),
            _ => &[],
        };
        let landmark = items.first().and_then(finite);
        let last = items.get(1).and_then(finite);
        let landmark = landmark.or(last).unwrap_or(0.0);
        Meta { landmark, last_event_time: last.unwrap_or(landmark) }
    }

    pub fn now(&self) -> f64 {
        self.last_event_time
    }

    /// `read_factor`: `exp(−λ (now − L)) / S`.
    pub fn factor(&self, rate: f64) -> f64 {
        read_factor(rate, self.landmark, self.now())
    }
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b.as_slice()),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn utf8(v: &Value) -> Option<String> {
    text(v).and_then(|b| std::str::from_utf8(b).ok()).map(str::to_owned)
}

/// Python's `float(x)` of a reply, finite only (`online/store.py` `_float`).
fn finite(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Double(d) => *d,
        Value::Int(i) => *i as f64,
        _ => parse_float(text(v)?)?,
    };
    x.is_finite().then_some(x)
}

fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?.trim();
    match s {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok(),
    }
}

/// A `ZREVRANGE ... WITHSCORES` reply as pairs (RESP2's flat list).
pub fn pairs(v: &Value) -> Pairs {
    let Value::Array(a) = v else { return Vec::new() };
    if let Some(Value::Array(_)) = a.first() {
        // RESP3: [[member, score], ...]
        return a
            .iter()
            .filter_map(|p| match p {
                Value::Array(mv) if mv.len() == 2 => Some((utf8(&mv[0])?, finite_or_inf(&mv[1])?)),
                _ => None,
            })
            .collect();
    }
    a.chunks_exact(2).filter_map(|c| Some((utf8(&c[0])?, finite_or_inf(&c[1])?))).collect()
}

fn finite_or_inf(v: &Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        _ => parse_float(text(v)?),
    }
}

/// A user HASH (item -> 16 bytes: event time, forward weight; NaN for a missing half):
/// `(history newest first, weights strongest first)`, ties by item as Redis orders members.
pub fn user_state(v: &Value) -> (Pairs, Pairs) {
    let mut times = Vec::new();
    let mut weights = Vec::new();
    let mut add = |f: &Value, raw: &Value| {
        let (Some(item), Some(raw)) = (utf8(f), text(raw)) else { return };
        if raw.len() != 16 {
            return; // malformed entry: the Python reader logs and skips it too
        }
        let t = f64::from_le_bytes(raw[0..8].try_into().unwrap());
        let w = f64::from_le_bytes(raw[8..16].try_into().unwrap());
        if !t.is_nan() {
            times.push((item.clone(), t));
        }
        if !w.is_nan() {
            weights.push((item, w));
        }
    };
    match v {
        Value::Array(a) => a.chunks_exact(2).for_each(|c| add(&c[0], &c[1])),
        Value::Map(m) => m.iter().for_each(|(f, r)| add(f, r)),
        _ => {}
    }
    desc(&mut times);
    desc(&mut weights);
    (times, weights)
}

/// `userstate._desc`: by value descending, ties by item descending (Python's
/// `sorted(key=(value, item), reverse=True)`).
pub fn desc(rows: &mut Pairs) {
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
}

/// A vector key's value: `"<model>\0<float32 bytes>"` -> (bytes, model tag).
pub fn unpack_vector(v: &Value) -> (Option<Vec<u8>>, Option<String>) {
    let Some(b) = text(v) else { return (None, None) };
    if b.is_empty() {
        return (None, None);
    }
    match b.iter().position(|&c| c == 0) {
        None => (None, None),
        Some(i) => {
            let vec = &b[i + 1..];
            let tag = String::from_utf8_lossy(&b[..i]).into_owned();
            ((!vec.is_empty()).then(|| vec.to_vec()), Some(tag))
        }
    }
}

/// The first round trip of a recommendation.
pub struct UserReads {
    pub meta: Meta,
    pub model_version: Option<String>,
    pub history: Pairs,
    pub weights: Pairs,
    pub vec: Option<Vec<u8>>,
    pub vec_version: Option<String>,
    pub trending: Option<Pairs>,
}

pub async fn read_user(conn: &mut MultiplexedConnection, keys: &Keys, user: &str, trend_n: Option<usize>) -> Result<UserReads> {
    let mut p = redis::pipe();
    p.cmd("HMGET").arg(keys.meta()).arg("landmark").arg("last_event_time");
    p.cmd("GET").arg(keys.model_current());
    p.cmd("HGETALL").arg(keys.user_state(user));
    p.cmd("GET").arg(keys.user_vec(user));
    if let Some(n) = trend_n {
        p.cmd("ZREVRANGE").arg(keys.popularity()).arg(0).arg(n as i64 - 1).arg("WITHSCORES");
    }
    let res: Vec<Value> = p.query_async(conn).await?;
    if res.len() < 4 {
        return Err(anyhow!("short pipeline reply"));
    }
    let (history, weights) = user_state(&res[2]);
    let (vec, vec_version) = unpack_vector(&res[3]);
    Ok(UserReads {
        meta: Meta::parse(&res[0]),
        model_version: utf8(&res[1]),
        history,
        weights,
        vec,
        vec_version,
        trending: trend_n.map(|_| pairs(&res[4])),
    })
}

pub async fn read_trending(conn: &mut MultiplexedConnection, keys: &Keys, n: usize) -> Result<Pairs> {
    let v: Value = redis::cmd("ZREVRANGE").arg(keys.popularity()).arg(0).arg(n as i64 - 1).arg("WITHSCORES")
        .query_async(conn).await?;
    Ok(pairs(&v))
}

/// Neighbour rows of `items` and the `per_user` strongest stored weights of `users`: one pipeline.
pub async fn read_expansion(conn: &mut MultiplexedConnection, keys: &Keys, items: &[String], k: usize, users: &[String],
                            per_user: usize) -> Result<(HashMap<String, Pairs>, HashMap<String, Pairs>)> {
    if items.is_empty() && users.is_empty() {
        return Ok((HashMap::new(), HashMap::new()));
    }
    let mut p = redis::pipe();
    for i in items {
        p.cmd("ZREVRANGE").arg(keys.item_nbrs(i)).arg(0).arg(k as i64 - 1).arg("WITHSCORES");
    }
    for u in users {
        p.cmd("HGETALL").arg(keys.user_state(u));
    }
    let res: Vec<Value> = p.query_async(conn).await?;
    let mut nbrs = HashMap::with_capacity(items.len());
    for (i, r) in items.iter().zip(&res) {
        nbrs.insert(i.clone(), pairs(r));
    }
    let mut theirs = HashMap::with_capacity(users.len());
    for (u, r) in users.iter().zip(&res[items.len()..]) {
        let (_, mut w) = user_state(r);
        w.truncate(per_user);
        theirs.insert(u.clone(), w);
    }
    Ok((nbrs, theirs))
}

/// One page of the snapshot read: meta and `ZREVRANGE pop start stop WITHSCORES`.
pub async fn popularity_page(conn: &mut MultiplexedConnection, keys: &Keys, start: usize, stop: usize) -> Result<(Meta, Pairs)> {
    let mut p = redis::pipe();
    p.cmd("HMGET").arg(keys.meta()).arg("landmark").arg("last_event_time");
    p.cmd("ZREVRANGE").arg(keys.popularity()).arg(start as i64).arg(stop as i64 - 1).arg("WITHSCORES");
    let res: Vec<Value> = p.query_async(conn).await?;
    Ok((Meta::parse(&res[0]), pairs(&res[1])))
}
