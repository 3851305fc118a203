//! What `driftrec serve` hands the compiled front: the resolved settings the request path reads,
//! as JSON (written by `online/native.py` from the same `Settings` the Python reader uses, so the
//! two cannot disagree on a default).

use serde::Deserialize;

use crate::blend::BlendWeights;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Address the front listens on (the reader's public host:port).
    pub listen: String,
    /// The Python reader behind it (loopback), which answers everything the front does not.
    pub upstream: String,
    pub redis_url: String,
    pub key_prefix: String,
    /// Folder of built model versions shared with the Python reader (`reader_model_dir`).
    pub model_dir: String,
    pub threads: usize,
    pub weights: BlendWeights,
    pub half_life_s: f64,
    pub history_len: usize,
    pub neighbours_read: usize,
    pub similarity_shrinkage: f64,
    pub similarity_alpha: f64,
    pub reader_recent_items: usize,
    pub reader_recent_order: String,
    pub reader_recent_position_decay: f64,
    pub reader_session_gap_s: f64,
    pub reader_outside_session_weight: f64,
    pub reader_similar_users: usize,
    pub reader_snapshot_items: usize,
    pub reader_snapshot_interval_s: f64,
    pub reader_max_in_flight: usize,
    pub reader_deadline_s: f64,
    pub reader_cache_ttl_s: f64,
    pub reader_cache_rows: usize,
    pub ann_overfetch: f64,
    pub ann_expansion: usize,
    pub ann_min_rows: usize,
    pub ann_enabled: bool,
    /// `experiments_file` is set: the Python reader answers every recommendation.
    pub experiments_file: bool,
}

impl Config {
    pub fn rate(&self) -> f64 {
        std::f64::consts::LN_2 / self.half_life_s
    }
}
