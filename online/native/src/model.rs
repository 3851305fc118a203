//! The published model mapped from the reader's shared folder: a port of the per-request maths
//! of `online/model_cache.py` (`PublishedModel.sources` and what it calls), reading the folder
//! `online/shared_model.py` (`SharedModels`) writes.
//!
//! The first Python reader process to load a version builds it and saves it under
//! `<root>/<safe(version)>/`: arrays as `.npy`, HNSW graphs as usearch index files, id lists as
//! text, and `manifest.json` last (its presence means the folder is whole). Everything here
//! maps those files read-only, as the Python processes do, so this process adds no copy of the
//! model to the host's memory. Only the id lists and their dictionaries are its own.
//!
//! Parity (`python online/native/tests/model_parity.py`, 1,000 random requests on each of five
//! models: with the three indexes in bf16 and in f32, without TF, below `reader_ann_min_rows`,
//! through a scan pool): 4,999 of 5,000 requests got the same items in the same order in all
//! three lists, every score within 1e-6 of Python's relative to the list's top score (user
//! vector and similar users within 1e-6 relative to the score itself). The one difference was
//! a user vector of zeros (a history of one item of weight 0): every score 0.0, a tie NumPy's
//! `argpartition` cuts in an order of its own; the blend drops scores that are not positive.
//! Earlier runs with other data also showed two lists with two exactly equal float32 scores
//! in swapped order. The HNSW candidates matched Python's in every request: same graph, same
//! search breadth, and usearch's distance kernels agree.

mod ann;
mod linalg;
mod npy;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;
use serde::Deserialize;

pub use ann::{top_of, AnnIndex, AnnSettings, VIEW_EXPANSION_SEARCH};
use npy::Array;

/// (item or user id, score), best first.
pub type Pairs = Vec<(String, f64)>;

/// `shared_model._FORMAT`: the folder layout this module reads.
const FORMAT: u64 = 1;

#[derive(Deserialize)]
struct Manifest {
    format: u64,
    version: String,
    alpha: f64,
    reg: f64,
    tf_hidden_layers: usize,
    has_user_factors: bool,
    indexes: HashMap<String, String>,
    arrays: Vec<String>,
    ann: Option<AnnSettings>,
}

/// The folder name of `version` under the shared root (`shared_model._safe`): the version with
/// every character outside `[A-Za-z0-9._-]` replaced by `_`, cut to 100 characters, then `-`
/// and the 12 hex digits of its BLAKE2b digest of 6 bytes.
pub fn safe_name(version: &str) -> String {
    let mut digest = [0u8; 6];
    let mut hasher = Blake2bVar::new(6).expect("6 is a valid BLAKE2b output size");
    hasher.update(version.as_bytes());
    hasher.finalize_variable(&mut digest).expect("buffer of the output size");
    let readable: String = version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(100)
        .collect();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hex}")
}

/// One published version, mapped from the shared folder, scoring a user as
/// `PublishedModel.sources` does.
pub struct Model {
    pub version: String,
    pub folder: PathBuf,
    pub item_ids: Vec<String>,
    item_index: HashMap<String, usize>,
    k: usize,
    /// Item factors, `(n_items, k)` float32 (the fold-in reads them).
    y: Array<f32>,
    /// `YᵀY`, `(k, k)` float64.
    yty: Vec<f64>,
    alpha: f64,
    reg: f64,
    /// `(W, b)` of the TF hidden layers; the first `W` is `(n_items, width)`.
    tf_hidden: Vec<(Array<f32>, Array<f32>)>,
    pub pool_ids: Vec<String>,
    /// Unit-norm factors of the nearest-user pool.
    pool_unit: Option<Array<f32>>,
    user_index: HashMap<String, usize>,
    user_factors: Option<Array<f32>>,
    /// Catalogue row of each scan-pool position (None: the pool is every item, in order).
    scan_rows: Option<Vec<usize>>,
    scan_y: Array<f32>,
    scan_tf_out: Option<Array<f32>>,
    scan_tf_bias: Option<Array<f32>>,
    /// The index configuration the folder was built with (None: exact scans only).
    pub ann: Option<AnnSettings>,
    ann_vec: Option<AnnIndex>,
    ann_tf: Option<AnnIndex>,
    ann_users: Option<AnnIndex>,
}

/// Concurrent searches `Model::open` provides for: four per CPU, at least 16 (a search context
/// holds a visited-set of one bit per row, 125 KB at a million rows).
pub fn default_search_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get()).saturating_mul(4).max(16)
}

/// An id list as `shared_model._ids` reads it: `Path.read_text()` (universal newlines) split on
/// `\n`, empty for an empty file.
fn read_ids(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let text = if text.contains('\r') { text.replace("\r\n", "\n").replace('\r', "\n") } else { text };
    Ok(text.split('\n').map(str::to_owned).collect())
}

/// `{id: position}`, a later duplicate winning as in a Python dict comprehension.
fn index_of(ids: &[String]) -> HashMap<String, usize> {
    let mut map = HashMap::with_capacity(ids.len());
    for (j, id) in ids.iter().enumerate() {
        map.insert(id.clone(), j);
    }
    map
}

impl Model {
    /// The version's folder under `root` if a reader process has finished building it, else
    /// Ok(None). An error means the folder is there but unreadable or not this version's (the
    /// Python reader then rebuilds it; here the caller decides).
    pub fn open(root: &Path, version: &str) -> Result<Option<Model>> {
        Self::open_with(root, version, default_search_threads())
    }

    /// `open` with `search_threads` concurrent searches per index (`AnnIndex`): callers beyond
    /// it wait for one to finish.
    pub fn open_with(root: &Path, version: &str, search_threads: usize) -> Result<Option<Model>> {
        let folder = root.join(safe_name(version));
        let manifest_path = folder.join("manifest.json");
        let text = match fs::read_to_string(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", manifest_path.display())),
        };
        let manifest: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", manifest_path.display()))?;
        if manifest.format != FORMAT || manifest.version != version {
            bail!("{} holds {:?} (format {}), not {:?}", folder.display(), manifest.version, manifest.format, version);
        }
        Self::from_folder(folder, manifest, search_threads).map(Some)
    }

    fn from_folder(folder: PathBuf, m: Manifest, search_threads: usize) -> Result<Model> {
        let has = |name: &str| m.arrays.iter().any(|a| a == name);
        let arr = |name: &str, ndim: usize| -> Result<Option<Array<f32>>> {
            if has(name) { Array::open(&folder.join(format!("{name}.npy")), ndim).map(Some) } else { Ok(None) }
        };
        let need = |name: &str, ndim: usize| -> Result<Array<f32>> {
            arr(name, ndim)?.with_context(|| format!("{}: no {name} array", folder.display()))
        };
        let item_ids = read_ids(&folder.join("item_ids.txt"))?;
        let y = need("Y", 2)?;
        let k = y.cols();
        if y.rows() != item_ids.len() {
            bail!("{}: {} item ids for {} rows of Y", folder.display(), item_ids.len(), y.rows());
        }
        let yty_arr: Array<f64> = Array::open(&folder.join("YtY.npy"), 2)?;
        if yty_arr.shape() != [k, k] {
            bail!("YtY has shape {:?}, expected ({k}, {k})", yty_arr.shape());
        }
        let mut tf_hidden = Vec::with_capacity(m.tf_hidden_layers);
        for i in 0..m.tf_hidden_layers {
            let w = need(&format!("tf_hidden{i}_W"), 2)?;
            let b = need(&format!("tf_hidden{i}_b"), 1)?;
            let rows_expected = if i == 0 { item_ids.len() } else { tf_hidden.last().map(|(_, b): &(Array<f32>, Array<f32>)| b.rows()).unwrap_or(0) };
            if w.rows() != rows_expected || b.rows() != w.cols() {
                bail!("TF hidden layer {i}: W {:?}, b {:?}", w.shape(), b.shape());
            }
            tf_hidden.push((w, b));
        }
        let pool_ids = read_ids(&folder.join("pool_ids.txt"))?;
        let pool_unit = arr("pool_unit", 2)?;
        if let Some(p) = &pool_unit {
            if p.rows() != pool_ids.len() || p.cols() != k {
                bail!("pool_unit {:?} for {} pool ids", p.shape(), pool_ids.len());
            }
        }
        let (user_factors, user_index) = if m.has_user_factors {
            let u = need("user_factors", 2)?;
            let ids = read_ids(&folder.join("user_ids.txt"))?;
            if u.cols() != k || u.rows() < ids.len() {
                bail!("user_factors {:?} for {} user ids", u.shape(), ids.len());
            }
            (Some(u), index_of(&ids))
        } else {
            (None, HashMap::new())
        };
        let scan_rows = if has("scan_rows") {
            let rows: Array<i64> = Array::open(&folder.join("scan_rows.npy"), 1)?;
            let rows: Vec<usize> = rows.data().iter().map(|&r| r as usize).collect();
            if rows.iter().any(|&r| r >= item_ids.len()) {
                bail!("scan_rows outside the catalogue");
            }
            Some(rows)
        } else {
            None
        };
        let scan_y = need("scan_Y", 2)?;
        let n_scan = scan_rows.as_ref().map_or(item_ids.len(), Vec::len);
        if scan_y.rows() != n_scan || scan_y.cols() != k {
            bail!("scan_Y {:?} for {n_scan} scanned items", scan_y.shape());
        }
        let scan_tf_out = arr("scan_tf_out", 2)?;
        let scan_tf_bias = arr("scan_tf_bias", 1)?;
        if let (Some(w), Some(b)) = (&scan_tf_out, &scan_tf_bias) {
            let width = tf_hidden.last().map(|(_, b)| b.rows());
            if w.rows() != n_scan || b.rows() != n_scan || (width.is_some() && Some(w.cols()) != width) {
                bail!("scan_tf_out {:?}, scan_tf_bias {:?} for {n_scan} scanned items", w.shape(), b.shape());
            }
        }
        let index = |attr: &str| -> Result<Option<AnnIndex>> {
            match m.indexes.get(attr) {
                Some(file) => AnnIndex::open(&folder.join(file), search_threads,
                                             m.ann.as_ref().map_or(VIEW_EXPANSION_SEARCH, |a| a.expansion)).map(Some),
                None => Ok(None),
            }
        };
        let (ann_vec, ann_tf, ann_users) = (index("ann_vec")?, index("ann_tf")?, index("ann_users")?);
        for (name, ix, rows) in [("vec", &ann_vec, n_scan), ("tf", &ann_tf, n_scan),
                                 ("users", &ann_users, pool_ids.len())] {
            if let Some(ix) = ix {
                if ix.rows != rows {
                    bail!("{name} index holds {} rows, expected {rows}", ix.rows);
                }
            }
        }
        Ok(Model {
            version: m.version,
            folder,
            item_index: index_of(&item_ids),
            item_ids,
            k,
            y,
            yty: yty_arr.data().to_vec(),
            alpha: m.alpha,
            reg: m.reg,
            tf_hidden,
            pool_ids,
            pool_unit,
            user_index,
            user_factors,
            scan_rows,
            scan_y,
            scan_tf_out,
            scan_tf_bias,
            ann: m.ann,
            ann_vec,
            ann_tf,
            ann_users,
        })
    }

    /// Latent factors.
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn has_tf(&self) -> bool {
        self.scan_tf_out.is_some()
    }

    /// Items the per-request scans cover.
    pub fn scan_len(&self) -> usize {
        self.scan_y.rows()
    }

    /// Which of the three source indexes the folder holds (vector, TF, users).
    pub fn indexes(&self) -> [bool; 3] {
        [self.ann_vec.is_some(), self.ann_tf.is_some(), self.ann_users.is_some()]
    }

    /// What usearch dispatched its distance kernels to, and the search breadth, per index.
    pub fn index_info(&self) -> Vec<(String, String, usize)> {
        [("vec", &self.ann_vec), ("tf", &self.ann_tf), ("users", &self.ann_users)]
            .into_iter()
            .filter_map(|(n, ix)| ix.as_ref().map(|ix| (n.to_owned(), ix.hardware_acceleration(), ix.expansion_search())))
            .collect()
    }

    fn scan_id(&self, pos: usize) -> &str {
        match &self.scan_rows {
            Some(rows) => &self.item_ids[rows[pos]],
            None => &self.item_ids[pos],
        }
    }

    /// `PublishedModel.sources`: top-`want` items by the user vector and by the TF logits, and
    /// the `n_similar` nearest pool users (none when `n_similar` is 0). `vector` / `tf` false
    /// skip a source; the user vector is still computed when the similar users need it.
    #[allow(clippy::too_many_arguments)]
    pub fn sources(&self, stored: Option<&[u8]>, stored_version: Option<&str>, user: &str,
                   weights: &[(String, f64)], want: usize, n_similar: usize, vector: bool, tf: bool)
                   -> (Pairs, Pairs, Pairs) {
        let u = if vector || n_similar > 0 { self.user_vector(stored, stored_version, user, weights) } else { None };
        let h = if tf { self.tf_hidden_state(weights) } else { None };
        let (vec, tf_scores) = self.score(if vector { u.as_deref() } else { None }, h.as_deref(), want);
        let similar = match &u {
            Some(u) if n_similar > 0 => self.nearest_users(u, user, n_similar),
            _ => Vec::new(),
        };
        (vec, tf_scores, similar)
    }

    /// `PublishedModel.user_vector`: the worker's stored vector when it was folded against this
    /// version (and is whole and finite); else the batch vector of a user the model was trained
    /// on; else a fold-in of the decayed weights; None when no weighted item is in the model.
    pub fn user_vector(&self, stored: Option<&[u8]>, stored_version: Option<&str>, user: &str,
                       weights: &[(String, f64)]) -> Option<Vec<f32>> {
        if let Some(raw) = stored {
            if stored_version == Some(self.version.as_str()) && raw.len() == 4 * self.k {
                let v: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                if v.iter().all(|x| x.is_finite()) {
                    return Some(v);
                }
            }
        }
        if let Some(u) = &self.user_factors {
            if let Some(&row) = self.user_index.get(user) {
                return Some(u.row(row).to_vec());
            }
        }
        let mut idx = Vec::with_capacity(weights.len());
        let mut conf = Vec::with_capacity(weights.len());
        for (item, w) in weights {
            if let Some(&j) = self.item_index.get(item.as_str()) {
                idx.push(j);
                conf.push(self.alpha * w);
            }
        }
        if idx.is_empty() {
            return None;
        }
        Some(linalg::fold_in(self.y.data(), self.k, &self.yty, &idx, &conf, self.reg))
    }

    /// `PublishedModel.tf_hidden_state`: the TF model's last hidden layer for a decayed history,
    /// the first layer read only at the rows of the user's items (`h₀ = x/‖x‖₂`, sparse).
    pub fn tf_hidden_state(&self, weights: &[(String, f64)]) -> Option<Vec<f32>> {
        let (w0, b0) = self.tf_hidden.first()?;
        let mut rows = Vec::with_capacity(weights.len());
        let mut x64 = Vec::with_capacity(weights.len());
        for (item, w) in weights {
            if let Some(&j) = self.item_index.get(item.as_str()) {
                if *w > 0.0 {
                    rows.push(j);
                    x64.push(*w);
                }
            }
        }
        if rows.is_empty() {
            return None;
        }
        let norm = x64.iter().map(|v| v * v).sum::<f64>().sqrt();
        let x: Vec<f32> = x64.iter().map(|v| (v / norm) as f32).collect();
        let mut h = linalg::vecmat(&x, w0.data(), w0.cols(), &rows);
        add_tanh(&mut h, b0.data());
        for (w, b) in &self.tf_hidden[1..] {
            let all: Vec<usize> = (0..w.rows()).collect();
            h = linalg::vecmat(&h, w.data(), w.cols(), &all);
            add_tanh(&mut h, b.data());
        }
        Some(h)
    }

    /// `PublishedModel.score`: top-`n` items by `Y u` and by the TF logits `W_outᵀ h + b`, the
    /// latter shifted so the last one scores 1e-6 (the blend keeps positive scores only).
    pub fn score(&self, u: Option<&[f32]>, h: Option<&[f32]>, n: usize) -> (Pairs, Pairs) {
        let mut vec = Vec::new();
        let mut tf = Vec::new();
        if let Some(u) = u {
            let rows = self.candidates(self.ann_vec.as_ref(), u, n);
            let scores = linalg::matvec(self.scan_y.data(), self.k, rows.as_deref(), u);
            vec = self.top(&scores, n, rows.as_deref());
        }
        if let (Some(h), Some(out), Some(bias)) = (h, &self.scan_tf_out, &self.scan_tf_bias) {
            let mut query = Vec::with_capacity(h.len() + 1);
            query.extend_from_slice(h);
            query.push(1.0);
            let rows = self.candidates(self.ann_tf.as_ref(), &query, n);
            let mut logits = linalg::matvec(out.data(), out.cols(), rows.as_deref(), h);
            let b = bias.data();
            match &rows {
                Some(rows) => logits.iter_mut().zip(rows).for_each(|(l, &r)| *l += b[r]),
                None => logits.iter_mut().zip(b).for_each(|(l, &c)| *l += c),
            }
            let top = self.top(&logits, n, rows.as_deref());
            let floor = top.last().map_or(0.0, |(_, s)| *s);
            tf = top.into_iter().map(|(i, s)| (i, s - floor + 1e-6)).collect();
        }
        (vec, tf)
    }

    /// `PublishedModel._candidates`: candidate rows for the top `n` from `index`; None: scan
    /// every row exactly (no index, or as many candidates as rows). A failed search (usearch
    /// error; Python would raise) falls back to the exact scan.
    fn candidates(&self, index: Option<&AnnIndex>, query: &[f32], n: usize) -> Option<Vec<usize>> {
        let (index, ann) = (index?, self.ann.as_ref()?);
        let count = ann.fetch(n);
        if count >= index.rows {
            return None;
        }
        index.candidates(query, count).ok()
    }

    /// `PublishedModel._top`: the top `n` of `scores`, which score every scanned item or the
    /// scan positions `rows`.
    fn top(&self, scores: &[f32], n: usize, rows: Option<&[usize]>) -> Pairs {
        top_of(scores, n)
            .into_iter()
            .map(|o| {
                let pos = rows.map_or(o, |r| r[o]);
                (self.scan_id(pos).to_owned(), scores[o] as f64)
            })
            .collect()
    }

    /// `PublishedModel.nearest_users`: the `n` pool users with the highest cosine to `u`, the
    /// user itself and non-positive cosines left out.
    pub fn nearest_users(&self, u: &[f32], user: &str, n: usize) -> Pairs {
        let Some(pool) = &self.pool_unit else { return Vec::new() };
        if n == 0 {
            return Vec::new();
        }
        let norm = linalg::dot(u, u).sqrt();
        if norm <= 0.0 {
            return Vec::new();
        }
        let q: Vec<f32> = u.iter().map(|x| x / norm).collect();
        let take = (n + 1).min(pool.rows());
        let rows = self.candidates(self.ann_users.as_ref(), &q, take);
        let sims = linalg::matvec(pool.data(), self.k, rows.as_deref(), &q);
        top_of(&sims, take)
            .into_iter()
            .map(|o| (rows.as_ref().map_or(o, |r| r[o]), sims[o]))
            .filter(|&(pos, s)| self.pool_ids[pos] != user && s > 0.0)
            .take(n)
            .map(|(pos, s)| (self.pool_ids[pos].clone(), s as f64))
            .collect()
    }
}

/// `h = tanh(h + b)` in float32 (each tanh taken in float64 and rounded once).
fn add_tanh(h: &mut [f32], b: &[f32]) {
    for (v, &c) in h.iter_mut().zip(b) {
        *v = ((*v + c) as f64).tanh() as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_name_matches_python() {
        // Expected values printed by shared_model._safe in Python (hashlib.blake2b, re.sub).
        assert_eq!(safe_name("v1"), "v1-658321d8edc9");
        assert_eq!(safe_name("2026-12-07T20:00:00Z/\u{e9} x"), "2026-12-07T20_00_00Z___x-7640961cca18");
        assert_eq!(safe_name(&"x".repeat(150)).len(), 100 + 1 + 12);
    }
}
