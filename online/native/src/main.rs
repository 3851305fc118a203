//! `driftrec-reader`: the compiled front of `driftrec serve` (issue 23).
//!
//! It listens on the reader's public port and answers the plain ranked request —
//! `GET /v1/recommendations/{user}` with at most `n` and `exclude`, no experiment running —
//! itself, with the Python reader's reads, decay, model sources and blend; every other request
//! (categories, rules, strategies, experiments, writes, metrics, health) is proxied to the Python
//! reader on loopback, which stays the reference: `online/native.py` starts both, and the parity
//! test compares their answers.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use driftrec_reader::blend::{self, candidates::{Gathered, RecentRule}, decay::DecayPolicy, request, BlendWeights, Scored, Source, SOURCES};
use driftrec_reader::catalogue::Catalogue;
use driftrec_reader::config::Config;
use driftrec_reader::model::Model;
use driftrec_reader::rowcache::RowCache;
use driftrec_reader::snapshot::Snapshot;
use driftrec_reader::store::{self, Keys, Pairs, PER_SIMILAR_USER};

const MAX_N: usize = 100;
/// Latency buckets of `online/metrics.py` (fine below 10 ms: the target is p99 <= 5 ms).
const BUCKETS: [f64; 15] = [0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const SERVED_TTL_S: u64 = 3600;

#[derive(Default)]
struct Metrics {
    answered: AtomicU64,
    degraded: AtomicU64,
    shed_in_flight: AtomicU64,
    shed_deadline: AtomicU64,
    proxied: AtomicU64,
    proxy_errors: AtomicU64,
    served_written: AtomicU64,
    served_dropped_full: AtomicU64,
    served_dropped_error: AtomicU64,
    items_by_source: [AtomicU64; 7],
    latency: [AtomicU64; 16],
    latency_sum_us: AtomicU64,
}

/// The label every series of the front carries: its samples join the Python reader's families
/// (dashboards and alerts sum over them), and stay told apart.
const FRONT: &str = "front=\"native\"";
const REC_ENDPOINT: &str = "/v1/recommendations/{user_id}";

impl Metrics {
    fn observe(&self, secs: f64) {
        let at = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.latency[at].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// The front's samples, by the Python reader's family they belong to (`online/metrics.py`).
    fn samples(&self, st: &State) -> Vec<(&'static str, Vec<String>)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut hist = Vec::new();
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += get(&self.latency[i]);
            hist.push(format!("driftrec_reader_request_seconds_bucket{{endpoint=\"{REC_ENDPOINT}\",{FRONT},le=\"{b:?}\"}} {cum}.0"));
        }
        cum += get(&self.latency[BUCKETS.len()]);
        hist.push(format!("driftrec_reader_request_seconds_bucket{{endpoint=\"{REC_ENDPOINT}\",{FRONT},le=\"+Inf\"}} {cum}.0"));
        hist.push(format!("driftrec_reader_request_seconds_count{{endpoint=\"{REC_ENDPOINT}\",{FRONT}}} {cum}.0"));
        hist.push(format!("driftrec_reader_request_seconds_sum{{endpoint=\"{REC_ENDPOINT}\",{FRONT}}} {}",
                          get(&self.latency_sum_us) as f64 / 1e6));
        let items = SOURCES.iter().zip(&self.items_by_source).filter(|(_, c)| get(c) > 0)
            .map(|(src, c)| format!("driftrec_reader_items_served_total{{source=\"{}\",{FRONT}}} {}.0", src.name(), get(c)))
            .collect();
        let loaded = st.model.read().unwrap().is_some() as u8;
        vec![
            ("driftrec_reader_requests", vec![format!(
                "driftrec_reader_requests_total{{endpoint=\"{REC_ENDPOINT}\",method=\"GET\",status=\"200\",{FRONT}}} {}.0", get(&self.answered))]),
            ("driftrec_reader_request_seconds", hist),
            ("driftrec_reader_degraded_answers", vec![format!(
                "driftrec_reader_degraded_answers_total{{endpoint=\"recommendations\",{FRONT}}} {}.0", get(&self.degraded))]),
            ("driftrec_reader_shed_answers", vec![
                format!("driftrec_reader_shed_answers_total{{endpoint=\"recommendations\",reason=\"in_flight\",{FRONT}}} {}.0", get(&self.shed_in_flight)),
                format!("driftrec_reader_shed_answers_total{{endpoint=\"recommendations\",reason=\"deadline\",{FRONT}}} {}.0", get(&self.shed_deadline))]),
            ("driftrec_reader_items_served", items),
            ("driftrec_reader_served_records", vec![
                format!("driftrec_reader_served_records_total{{outcome=\"written\",{FRONT}}} {}.0", get(&self.served_written)),
                format!("driftrec_reader_served_records_total{{outcome=\"dropped_full\",{FRONT}}} {}.0", get(&self.served_dropped_full)),
                format!("driftrec_reader_served_records_total{{outcome=\"dropped_error\",{FRONT}}} {}.0", get(&self.served_dropped_error))]),
            ("driftrec_reader_native_proxied", vec![format!("driftrec_reader_native_proxied_total {}.0", get(&self.proxied))]),
            ("driftrec_reader_native_proxy_errors", vec![format!("driftrec_reader_native_proxy_errors_total {}.0", get(&self.proxy_errors))]),
            ("driftrec_reader_native_model_loaded", vec![format!("driftrec_reader_native_model_loaded {loaded}.0")]),
        ]
    }

    /// The Python reader's exposition with the front's samples in their families: after a
    /// family's last sample (or its `# TYPE` line when it has none yet); the front's own
    /// families at the end.
    fn merge(&self, st: &State, python: &str) -> String {
        let mut lines: Vec<String> = python.lines().map(str::to_owned).collect();
        let own = [
            ("driftrec_reader_native_proxied", "counter", "Requests the compiled front passed to the Python reader."),
            ("driftrec_reader_native_proxy_errors", "counter", "Requests the Python reader did not answer (502 from the front)."),
            ("driftrec_reader_native_model_loaded", "gauge", "1 while the compiled front has the live model version mapped."),
        ];
        for (family, samples) in self.samples(st) {
            if let Some((_, kind, help)) = own.iter().find(|(f, _, _)| *f == family) {
                lines.push(format!("# HELP {family} {help}"));
                lines.push(format!("# TYPE {family} {kind}"));
                lines.extend(samples);
                continue;
            }
            // prometheus_client names a counter's family `<name>_total` in its TYPE line.
            let (counter, other) = (format!("# TYPE {family}_total "), format!("# TYPE {family} "));
            let Some(start) = lines.iter().position(|l| l.starts_with(&counter) || l.starts_with(&other)) else {
                continue; // not a family of this Python reader's: nothing to join
            };
            let mut at = start + 1;
            while at < lines.len() && !lines[at].starts_with('#') {
                at += 1;
            }
            // Python's created-timestamp samples (`_created`) stay where they are; ours go after.
            lines.splice(at..at, samples);
        }
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }
}

type Record = (String, Vec<(String, Source)>);

struct State {
    cfg: Config,
    weights: BlendWeights,
    policy: DecayPolicy,
    settings: request::RecSettings,
    keys: Keys,
    rate: f64,
    conn: MultiplexedConnection,
    snapshot: RwLock<Arc<Snapshot>>,
    hidden: RwLock<Arc<blend::Set<String>>>,
    /// Any experiment defined: the Python reader enrols shoppers, so it answers.
    experiments: std::sync::atomic::AtomicBool,
    model: RwLock<Option<Arc<Model>>>,
    /// The version a load was last tried for, and when (a version not built yet is retried).
    model_try: Mutex<(Option<String>, Option<Instant>)>,
    in_flight: AtomicUsize,
    nbr_rows: RowCache,
    user_rows: RowCache,
    metrics: Metrics,
    served: mpsc::Sender<Record>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

#[derive(Serialize)]
struct Body<'a> {
    request_id: &'a str,
    model_version: Option<&'a str>,
    generated_at: f64,
    degraded: bool,
    user_id: &'a str,
    strategy: &'a str,
    items: &'a [Scored],
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `online/params.py` `_ID_RE`: 1-128 of letters, digits and ._:@/+-.
fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"._:@/+-".contains(&c))
}

/// The requests this front ranks: `n` (digits, 1..=100) and `exclude` (comma-separated valid
/// ids, at most 100) only, nothing percent-encoded. None: the Python reader answers (it also
/// words every 4xx).
fn plain_query(q: Option<&str>) -> Option<(usize, Vec<String>)> {
    let mut n = 10;
    let mut exclude = Vec::new();
    let mut seen = HashSet::new();
    for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=')?;
        if v.contains('%') || v.contains('+') || !seen.insert(k) {
            return None;
        }
        match k {
            "n" => {
                if v.is_empty() || v.len() > 3 || !v.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                n = v.parse().ok()?;
                if !(1..=MAX_N).contains(&n) {
                    return None;
                }
            }
            "exclude" => {
                for id in v.split(',').filter(|s| !s.is_empty()) {
                    if !valid_id(id) || exclude.len() >= 100 {
                        return None;
                    }
                    exclude.push(id.to_string());
                }
            }
            _ => return None,
        }
    }
    Some((n, exclude))
}

struct Answer {
    items: Vec<Scored>,
    model_version: Option<String>,
    degraded: bool,
}

impl State {
    fn current_model(&self) -> Option<Arc<Model>> {
        self.model.read().unwrap().clone()
    }

    /// `ModelCache.observe`: the model of `version` when mapped; else start mapping it (once
    /// per 0.5 s while the Python reader has not built it yet) and say it is not here.
    fn observe(self: &Arc<Self>, version: Option<&str>) -> Result<Option<Arc<Model>>, ()> {
        let current = self.current_model();
        let Some(v) = version else { return Ok(current) };
        if current.as_ref().is_some_and(|m| m.version == v) {
            return Ok(current);
        }
        let mut t = self.model_try.lock().unwrap();
        let due = t.0.as_deref() != Some(v) || t.1.map_or(true, |at| at.elapsed() > Duration::from_millis(500));
        if due {
            *t = (Some(v.to_string()), Some(Instant::now()));
            let st = self.clone();
            let version = v.to_string();
            tokio::task::spawn_blocking(move || match Model::open(std::path::Path::new(&st.cfg.model_dir), &version) {
                Ok(Some(m)) => {
                    eprintln!("driftrec-reader: serving model {version}");
                    *st.model.write().unwrap() = Some(Arc::new(m));
                }
                Ok(None) => {}
                Err(e) => eprintln!("driftrec-reader: model {version} not mapped: {e:#}"),
            });
        }
        Err(())
    }

    fn degraded(&self, n: usize, exclude: &HashSet<String>) -> Answer {
        let snap = self.snapshot.read().unwrap().clone();
        let hidden = self.hidden.read().unwrap().clone();
        let mut want = n + if hidden.is_empty() { 0 } else { hidden.len().min(n) };
        let items = loop {
            let got = snap.trending(want, exclude, self.rate);
            let top: Pairs = got.iter().filter(|p| !hidden.contains(&p.0)).take(n).cloned().collect();
            if top.len() >= n || got.len() < want || want >= 4096 {
                break top;
            }
            want *= 2;
        };
        Answer {
            items: items.into_iter().map(|(i, s)| Scored { item: i, score: s, source: Source::Trending, reason: "popular now".into() }).collect(),
            model_version: self.current_model().map(|m| m.version.clone()),
            degraded: true,
        }
    }

    /// `Recommender._for_user` for the configured weights, no category, context or rule
    /// (`blend::request` holds the steps). Ok(Err(())): this front cannot give the Python
    /// reader's answer (the model is not mapped here yet).
    async fn rank(self: &Arc<Self>, user: &str, n: usize, exclude: &[String]) -> Result<Result<Answer, ()>> {
        let cfg = &self.cfg;
        let w = &self.weights;
        let hidden = self.hidden.read().unwrap().clone();
        let snap = self.snapshot.read().unwrap().clone();
        let extra = if hidden.is_empty() { 0 } else { hidden.len().min(n) };
        let trend_n = request::trending_read_depth(n, exclude, &[], extra, cfg.history_len);
        let top = snap.stored_top(trend_n);
        let mut conn = self.conn.clone();
        let r = store::read_user(&mut conn, &self.keys, user, if top.is_some() { None } else { Some(trend_n) }).await?;
        let trending: Pairs = match (top, r.trending) {
            (Some((landmark, list)), _) if landmark == r.meta.landmark => list.to_vec(),
            (Some(_), _) => store::read_trending(&mut conn, &self.keys, trend_n).await?,
            (None, t) => t.unwrap_or_default(),
        };
        let Ok(model) = self.observe(r.model_version.as_deref()) else { return Ok(Err(())) };
        let read = request::UserRead { history: r.history, weights: r.weights, landmark: r.meta.landmark, now: r.meta.now() };
        let plan = request::plan(&read, exclude, &[], &self.policy, &self.settings.recent);
        let want = plan.want(n, extra);
        let (mut vector_scores, mut tf_scores, mut similar) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(m) = &model {
            if !plan.decayed.is_empty() || r.vec.is_some() {
                let n_similar = if w.similar_users > 0.0 { cfg.reader_similar_users } else { 0 };
                (vector_scores, tf_scores, similar) = m.sources(r.vec.as_deref(), r.vec_version.as_deref(), user, &plan.decayed,
                                                                want, n_similar, w.user_vector > 0.0, w.tf > 0.0);
            }
        }
        let nbr_items: Vec<String> = plan.neighbour_items(w).into_iter().map(str::to_owned).collect();
        let users: Vec<String> = similar.iter().map(|(v, _)| v.clone()).collect();
        // Shared rows from the near cache when read less than reader_cache_ttl_s ago under this
        // landmark (`Recommender._expansion`), the rest in one pipeline.
        let at = Instant::now();
        let (nbr_hit, nbr_miss) = self.nbr_rows.lookup(&nbr_items, at, r.meta.landmark);
        let (user_hit, user_miss) = self.user_rows.lookup(&users, at, r.meta.landmark);
        let (rows, theirs) = store::read_expansion(&mut conn, &self.keys, &nbr_miss, cfg.neighbours_read, &user_miss, PER_SIMILAR_USER).await?;
        let rows: Vec<(String, Arc<Pairs>)> = rows.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        let theirs: Vec<(String, Arc<Pairs>)> = theirs.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        self.nbr_rows.store(&rows, at, r.meta.landmark);
        self.user_rows.store(&theirs, at, r.meta.landmark);
        // The blend reads the rows where the cache holds them: no copy per request.
        let gathered = Gathered {
            rows: nbr_hit.into_iter().chain(rows).collect(),
            vector_scores,
            tf_scores,
            similar,
            theirs: user_hit.into_iter().chain(theirs).collect(),
            trending,
            trending_label: None,
            new_items: Vec::new(),
            new_labels: Default::default(),
            session_knn: Vec::new(),
        };
        // The snapshot's scores moved to this request's landmark once, then times its factor.
        let (shift, factor) = (snap.norms.shift(&self.policy, plan.landmark), plan.factor);
        let norm_of = |item: &str| snap.norms.norm(item, shift, factor);
        let (_, items) = request::rank(plan, gathered, norm_of, &hidden, n, w, &self.settings);
        Ok(Ok(Answer { items, model_version: model.map(|m| m.version.clone()), degraded: false }))
    }
}

fn json(status: StatusCode, body: Vec<u8>, request_id: Option<&str>) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status).header("content-type", "application/json");
    if let Some(id) = request_id {
        b = b.header("x-request-id", id);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

async fn recommendations(st: &Arc<State>, user: &str, n: usize, exclude: Vec<String>) -> Option<Response<Full<Bytes>>> {
    let started = Instant::now();
    let cfg = &st.cfg;
    let excluded: HashSet<String> = exclude.iter().cloned().collect();
    let answer = if st.in_flight.fetch_add(1, Ordering::AcqRel) >= cfg.reader_max_in_flight {
        st.in_flight.fetch_sub(1, Ordering::AcqRel);
        st.metrics.shed_in_flight.fetch_add(1, Ordering::Relaxed);
        st.degraded(n, &excluded)
    } else {
        let got = tokio::time::timeout(Duration::from_secs_f64(cfg.reader_deadline_s), st.rank(user, n, &exclude)).await;
        st.in_flight.fetch_sub(1, Ordering::AcqRel);
        match got {
            Ok(Ok(Ok(a))) => a,
            Ok(Ok(Err(()))) => return None, // the model is not mapped here yet: Python answers
            Ok(Err(e)) => {
                eprintln!("driftrec-reader: Redis unavailable ({e:#}): degraded answer for a user");
                st.degraded(n, &excluded)
            }
            Err(_) => {
                st.metrics.shed_deadline.fetch_add(1, Ordering::Relaxed);
                st.degraded(n, &excluded)
            }
        }
    };
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    if answer.degraded {
        st.metrics.degraded.fetch_add(1, Ordering::Relaxed);
    }
    for x in &answer.items {
        st.metrics.items_by_source[x.source as usize].fetch_add(1, Ordering::Relaxed);
    }
    if !answer.degraded && !answer.items.is_empty() {
        let rec = answer.items.iter().map(|x| (x.item.clone(), x.source)).collect();
        if st.served.try_send((request_id.clone(), rec)).is_err() {
            st.metrics.served_dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }
    let body = Body {
        request_id: &request_id,
        model_version: answer.model_version.as_deref(),
        generated_at: now_s(),
        degraded: answer.degraded,
        user_id: user,
        strategy: "blend",
        items: &answer.items,
    };
    let out = blend::json::to_vec(&body).unwrap();
    st.metrics.answered.fetch_add(1, Ordering::Relaxed);
    st.metrics.observe(started.elapsed().as_secs_f64());
    Some(json(StatusCode::OK, out, Some(&request_id)))
}

async fn proxy(st: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    st.metrics.proxied.fetch_add(1, Ordering::Relaxed);
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let is_metrics = parts.uri.path() == "/metrics";
    // An experiment defined through this reader enrols shoppers from its next request on, as the
    // Python reader does: from now until the next poll of the definitions says otherwise.
    let defines = parts.method != hyper::Method::GET && parts.uri.path().starts_with("/v1/experiments");
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return json(StatusCode::BAD_REQUEST, br#"{"error":"bad_request","detail":"request body could not be read"}"#.to_vec(), None);
    };
    parts.uri = format!("http://{}{}", st.cfg.upstream, path).parse().unwrap();
    let out = Request::from_parts(parts, Full::new(body));
    match st.client.request(out).await {
        Ok(resp) => {
            if defines && resp.status().is_success() {
                st.experiments.store(true, Ordering::Relaxed);
            }
            let (parts, body) = resp.into_parts();
            let mut bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if is_metrics && parts.status == StatusCode::OK {
                bytes = Bytes::from(st.metrics.merge(st, &String::from_utf8_lossy(&bytes)));
            }
            let mut r = Response::from_parts(parts, Full::new(bytes));
            r.headers_mut().remove("content-length");
            r.headers_mut().remove("transfer-encoding");
            r
        }
        Err(e) => {
            st.metrics.proxy_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("driftrec-reader: the Python reader did not answer: {e}");
            json(StatusCode::BAD_GATEWAY, br#"{"error":"upstream_unavailable","detail":"the reader's Python process did not answer"}"#.to_vec(), None)
        }
    }
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == hyper::Method::GET && !st.experiments.load(Ordering::Relaxed) {
        if let Some(user) = req.uri().path().strip_prefix("/v1/recommendations/") {
            if valid_id(user) && st.cfg.weights.new_items <= 0.0 && st.cfg.weights.session_knn <= 0.0 {
                if let Some((n, exclude)) = plain_query(req.uri().query()) {
                    let user = user.to_string();
                    if let Some(resp) = recommendations(&st, &user, n, exclude).await {
                        return Ok(resp);
                    }
                }
            }
        }
    }
    Ok(proxy(&st, req).await)
}

/// Writes the answers' records (`online/served.py`): `HSET P:{r:id} item source ... #strategy
/// blend` + `EXPIRE`, many answers per pipeline, never on a request's path.
async fn served_writer(st: Arc<State>, mut rx: mpsc::Receiver<Record>) {
    let mut conn = st.conn.clone();
    let mut batch = Vec::with_capacity(256);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        tokio::time::sleep(Duration::from_millis(10)).await;
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut p = redis::pipe();
        for (id, items) in &batch {
            let key = st.keys.served(id);
            let mut c = redis::cmd("HSET");
            c.arg(&key);
            for (item, source) in items {
                c.arg(item).arg(source.name());
            }
            c.arg("#strategy").arg("blend");
            p.add_command(c).ignore();
            p.cmd("EXPIRE").arg(&key).arg(SERVED_TTL_S).ignore();
        }
        let n = batch.len() as u64;
        match p.query_async::<()>(&mut conn).await {
            Ok(()) => st.metrics.served_written.fetch_add(n, Ordering::Relaxed),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                st.metrics.served_dropped_error.fetch_add(n, Ordering::Relaxed)
            }
        };
        batch.clear();
    }
}

async fn snapshot_loop(st: Arc<State>) {
    let mut conn = st.conn.clone();
    loop {
        match Snapshot::read(&mut conn, &st.keys, st.cfg.reader_snapshot_items).await {
            Ok(s) => *st.snapshot.write().unwrap() = Arc::new(s),
            Err(e) => eprintln!("driftrec-reader: snapshot not refreshed: {e:#}"),
        }
        tokio::time::sleep(Duration::from_secs_f64(st.cfg.reader_snapshot_interval_s)).await;
    }
}

/// Every `catalogue::POLL_S`: the catalogue's change feed, and whether any experiment is defined.
async fn poll_loop(st: Arc<State>) {
    let mut conn = st.conn.clone();
    let mut cat = Catalogue::default();
    loop {
        match cat.refresh(&mut conn, &st.keys).await {
            Ok(true) => *st.hidden.write().unwrap() = Arc::new(cat.hidden.iter().cloned().collect()),
            Ok(false) => {}
            Err(e) => eprintln!("driftrec-reader: catalogue not refreshed: {e:#}"),
        }
        // Experiments: the Python reader answers while any is defined (enrolment is its job).
        // A stored definition, running, scheduled or stopped, keeps it there until deleted
        // (telling them apart means parsing their dates); an experiments file always does.
        let defined: redis::RedisResult<i64> = redis::cmd("HLEN").arg(format!("{}:{{x}}:experiments", st.keys.prefix))
            .query_async(&mut conn).await;
        if let Ok(c) = defined {
            st.experiments.store(c > 0 || st.cfg.experiments_file, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs_f64(driftrec_reader::catalogue::POLL_S)).await;
    }
}

fn main() -> Result<()> {
    let path = std::env::args().nth(1).context("usage: driftrec-reader <config.json>")?;
    let cfg: Config = serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {path}"))?)
        .with_context(|| format!("parsing {path}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.threads.max(1)).enable_all().build()?;
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> Result<()> {
    let client = redis::Client::open(cfg.redis_url.as_str())?;
    let conn = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let (tx, rx) = mpsc::channel(10_000);
    let listener = TcpListener::bind(&cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let weights = cfg.weights;
    let settings = request::RecSettings {
        recent: RecentRule {
            k: cfg.reader_recent_items,
            order: cfg.reader_recent_order.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            position_decay: cfg.reader_recent_position_decay,
            session_gap_s: cfg.reader_session_gap_s,
            outside_session: cfg.reader_outside_session_weight,
        },
        shrinkage: cfg.similarity_shrinkage,
        alpha: cfg.similarity_alpha,
        history_len: cfg.history_len,
    };
    let st = Arc::new(State {
        weights,
        policy: DecayPolicy::new(cfg.half_life_s),
        settings,
        keys: Keys { prefix: cfg.key_prefix.clone() },
        rate: cfg.rate(),
        conn,
        snapshot: RwLock::new(Arc::new(Snapshot::default())),
        hidden: RwLock::new(Arc::new(blend::Set::default())),
        experiments: std::sync::atomic::AtomicBool::new(false),
        model: RwLock::new(None),
        model_try: Mutex::new((None, None)),
        in_flight: AtomicUsize::new(0),
        nbr_rows: RowCache::new(cfg.reader_cache_ttl_s, cfg.reader_cache_rows),
        user_rows: RowCache::new(cfg.reader_cache_ttl_s, cfg.reader_cache_rows),
        metrics: Metrics::default(),
        served: tx,
        client: Client::builder(TokioExecutor::new()).build_http(),
        cfg,
    });
    tokio::spawn(served_writer(st.clone(), rx));
    tokio::spawn(snapshot_loop(st.clone()));
    tokio::spawn(poll_loop(st.clone()));
    eprintln!("driftrec-reader: listening on {}, Python reader at {}", st.cfg.listen, st.cfg.upstream);
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let st = st.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(st.clone(), req));
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(sock), svc).await;
        });
    }
}

