//! driftrec's compiled request path (issue 23): the plain `GET /v1/recommendations/{user}`
//! answered in Rust with the same reads, decay, model sources and blend as the Python reader
//! (`online/recommender.py`, `models/candidates.py`, `models/blend.py`); every other request is
//! proxied to the Python reader it runs in front of.

pub mod blend;
pub mod catalogue;
pub mod config;
pub mod model;
pub mod rowcache;
pub mod snapshot;
pub mod store;
