//! Parity harness for `driftrec_reader::model` (driven by `online/native/tests/model_parity.py`).
//!
//! `model_check <root> <version> [passes] [threads]` opens the version's shared folder, then reads one
//! JSON request per line on stdin:
//! `{"user": "u1", "stored": "<hex of the float32 bytes>" | null, "stored_version": "v" | null,
//!   "weights": [["i3", 0.7], ...], "want": 20, "n_similar": 5, "vector": true, "tf": true}`
//! and writes one JSON line per request: `{"vec": [[id, score], ...], "tf": [...],
//! "similar": [...], "us": <microseconds of one Model::sources call>}`. With `passes` > 1
//! every request is answered that many times and `us` is the fastest (the first pass touches
//! the mapped pages). A first line on stderr describes the model. With `threads` > 1 the
//! requests are then answered again on that many threads at once, through a second opening of
//! the folder that allows only 2 concurrent searches per index (the rest wait), and a last
//! stderr line counts the answers that differ from the first ones.

use std::io::{self, BufRead, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use driftrec_reader::model::Model;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Request {
    user: String,
    stored: Option<String>,
    stored_version: Option<String>,
    weights: Vec<(String, f64)>,
    want: usize,
    n_similar: usize,
    #[serde(default = "yes")]
    vector: bool,
    #[serde(default = "yes")]
    tf: bool,
}

fn yes() -> bool {
    true
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd hex length");
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex")).collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: model_check <root> <version> [passes]");
    }
    let passes: usize = args.get(3).map(|p| p.parse()).transpose()?.unwrap_or(1).max(1);
    let threads: usize = args.get(4).map(|p| p.parse()).transpose()?.unwrap_or(1).max(1);
    let model = Model::open(Path::new(&args[1]), &args[2])?.context("no finished folder for that version")?;
    eprintln!(
        "{}",
        json!({"version": model.version, "items": model.item_ids.len(), "scan": model.scan_len(), "k": model.k(),
               "tf": model.has_tf(), "pool": model.pool_ids.len(), "indexes": model.indexes(),
               "index_info": model.index_info(), "ann": model.ann.as_ref().map(|a| a.overfetch)})
    );
    let mut requests = Vec::new();
    for line in io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Request = serde_json::from_str(&line).context("request line")?;
        let stored = r.stored.as_deref().map(unhex).transpose()?;
        requests.push((r, stored));
    }
    let mut out = BufWriter::new(io::stdout().lock());
    let mut first = Vec::with_capacity(requests.len());
    for (r, stored) in &requests {
        let mut best = f64::INFINITY;
        let mut answer = None;
        for _ in 0..passes {
            let t0 = Instant::now();
            let got = model.sources(stored.as_deref(), r.stored_version.as_deref(), &r.user, &r.weights, r.want,
                                    r.n_similar, r.vector, r.tf);
            best = best.min(t0.elapsed().as_secs_f64() * 1e6);
            answer = Some(got);
        }
        let (vec, tf, similar) = answer.expect("at least one pass");
        serde_json::to_writer(&mut out, &json!({"vec": vec, "tf": tf, "similar": similar, "us": best}))?;
        out.write_all(b"\n")?;
        first.push((vec, tf, similar));
    }
    out.flush()?;
    if threads > 1 {
        let narrow = Model::open_with(Path::new(&args[1]), &args[2], 2)?.context("folder gone")?;
        let differ = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (narrow, requests, first, differ) = (&narrow, &requests, &first, &differ);
                s.spawn(move || {
                    for i in (0..requests.len()).map(|i| (i + t * 37) % requests.len()) {
                        let (r, stored) = &requests[i];
                        let got = narrow.sources(stored.as_deref(), r.stored_version.as_deref(), &r.user, &r.weights,
                                                 r.want, r.n_similar, r.vector, r.tf);
                        if got != first[i] {
                            differ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        eprintln!("{}", json!({"threads": threads, "answers": threads * requests.len(), "differ": differ.into_inner()}));
    }
    Ok(())
}
