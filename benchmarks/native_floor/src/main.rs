//! What a compiled request path costs on this machine (benchmarks/native_floor.py): not the
//! reader, a floor under it. HTTP/1.1 (hyper) on one thread, the shopper's item HASH read as the
//! reader reads it (16-byte time + weight entries, driftrec/userstate.py), the neighbour rows of
//! the 8 items clicked last in a second, pipelined round trip, a weighted item-item sum without
//! the reader's decay, norms, other sources or reasons, the top 20 as JSON.
use std::collections::HashMap;
use std::convert::Infallible;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use redis::aio::MultiplexedConnection;
use tokio::net::TcpListener;

async fn rank(mut con: MultiplexedConnection, prefix: &str, user: &str) -> redis::RedisResult<String> {
    let raw: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL").arg(format!("{prefix}:{{u:{user}}}:iw")).query_async(&mut con).await?;
    // entries: item -> 16 bytes (time f64 LE, weight f64 LE)
    let mut hist: Vec<(f64, f64, &[u8])> = raw.iter().filter(|(_, v)| v.len() == 16).map(|(k, v)| {
        let t = f64::from_le_bytes(v[0..8].try_into().unwrap());
        let w = f64::from_le_bytes(v[8..16].try_into().unwrap());
        (t, w, k.as_slice())
    }).filter(|e| !e.0.is_nan()).collect();
    hist.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    let recent: Vec<&(f64, f64, &[u8])> = hist.iter().take(8).collect();
    let mut pipe = redis::pipe();
    for (_, _, item) in &recent {
        let item = std::str::from_utf8(item).unwrap_or("");
        pipe.cmd("ZRANGE").arg(format!("{prefix}:{{i:{item}}}:nbr")).arg(0).arg(19).arg("REV").arg("WITHSCORES");
    }
    let rows: Vec<Vec<(String, f64)>> = if recent.is_empty() { vec![] } else { pipe.query_async(&mut con).await? };
    let seen: std::collections::HashSet<&[u8]> = hist.iter().map(|e| e.2).collect();
    let top_w = recent.iter().map(|e| e.1).fold(0.0f64, f64::max).max(1e-12);
    let mut scores: HashMap<&str, f64> = HashMap::new();
    for (r, row) in recent.iter().zip(rows.iter()) {
        let rel = if r.1.is_nan() { 1.0 } else { r.1 / top_w };
        for (j, c) in row {
            if seen.contains(j.as_bytes()) { continue; }
            *scores.entry(j.as_str()).or_insert(0.0) += rel * c;
        }
    }
    let mut v: Vec<(&str, f64)> = scores.into_iter().collect();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(b.0)));
    v.truncate(20);
    let mut out = String::with_capacity(2048);
    out.push_str("{\"user_id\":\""); out.push_str(user); out.push_str("\",\"items\":[");
    for (k, (i, s)) in v.iter().enumerate() {
        if k > 0 { out.push(','); }
        out.push_str(&format!("{{\"item_id\":\"{i}\",\"score\":{s},\"source\":\"item_item\",\"reason\":\"because you viewed\"}}"));
    }
    out.push_str("]}");
    Ok(out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (redis_url, prefix, port) = (args[1].clone(), args[2].clone(), args[3].parse::<u16>().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let client = redis::Client::open(redis_url).unwrap();
        let con = client.get_multiplexed_async_connection().await.unwrap();
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let prefix: &'static str = Box::leak(prefix.into_boxed_str());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).ok();
            let con = con.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let con = con.clone();
                    async move {
                        let user = req.uri().path().rsplit('/').next().unwrap_or("").to_string();
                        let body = match rank(con, prefix, &user).await { Ok(b) => b, Err(e) => format!("{{\"error\":\"{e}\"}}") };
                        Ok::<_, Infallible>(Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(body))).unwrap())
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}

