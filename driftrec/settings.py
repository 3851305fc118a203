"""Typed, frozen settings for every driftrec process; the only module that reads the environment.

Every field can be set with an environment variable ``DRIFTREC_<FIELD>`` (upper case). Two
conventional variables are also honoured: ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL``; when
either is set, ``driftrec`` uses that service and starts nothing of its own.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    """All of driftrec's knobs. Frozen: build a new one with ``model_copy(update=...)``."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTREC_", extra="forbid", frozen=True, populate_by_name=True
    )

    settings_file: Path | None = Field(
        default=None, description="JSON file of settings (e.g. written by `driftrec tune`), read when "
                                  "DRIFTREC_SETTINGS_FILE names it: its values stand under the environment's, "
                                  "above the defaults; unknown keys are rejected.")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then the environment, then the settings file, then the defaults."""
        import os

        sources = [init_settings, env_settings, dotenv_settings, file_secret_settings]
        path = os.environ.get("DRIFTREC_SETTINGS_FILE")
        if path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"DRIFTREC_SETTINGS_FILE: no such file: {path}")
            sources.append(JsonConfigSettingsSource(settings_cls, json_file=Path(path)))
        return tuple(sources)

    # --- infrastructure -------------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "DRIFTREC_KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers; unset means the local stack's broker.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "DRIFTREC_REDIS_URL"),
        description="Redis URL (redis:// or a cluster URL); unset means the local stack's Redis.",
    )
    home: Path = Field(default=Path(".driftrec"), description="Folder for local-stack data and logs.")
    kafka_port: int = Field(default=19092, description="Local-stack Kafka client port (loopback).")
    kafka_controller_port: int = Field(default=19093, description="Local-stack KRaft controller port.")
    redis_port: int = Field(default=16379, description="Local-stack Redis port (loopback).")
    kafka_version: str = Field(default="4.1.1", description="Apache Kafka version fetched from Maven Central.")
    local_redis_priority: Literal["realtime", "high", "normal"] = Field(
        default="normal",
        description="CPU priority of the local stack's Redis, which shares the host's cores with Kafka, the worker "
                    "and the reader. 'realtime' runs its command thread under SCHED_FIFO (priority 10, reset on "
                    "fork, so a snapshot or AOF rewrite child runs at normal priority): a busy process never "
                    "preempts a command half done, so no command stalls every client for a time slice (system "
                    "benchmark: longest command 4.5 ms instead of 30 ms), but on two shared cores Redis then "
                    "preempts the worker and the reader at each wake-up: the worker kept up to 4,000 instead of "
                    "5,000 clicks/s and the reader's p99 at 500 req/s went 18 -> 40 ms (docs/write-path.md). "
                    "'high' is nice -10 (not measured); 'normal' leaves it to the scheduler. Needs root or "
                    "CAP_SYS_NICE; without them the stack logs a warning and runs Redis at normal priority. A "
                    "Redis of your own (REDIS_URL) is not touched.")

    # --- topics and keys ------------------------------------------------------------------
    clicks_topic: str = Field(default="driftrec.clicks", description="Topic the site publishes clicks to.")
    dead_letter_topic: str = Field(default="driftrec.clicks.dlq", description="Topic for rejected events.")
    items_topic: str = Field(default="driftrec.items", description="Log-compacted topic of catalogue events (upserts and deletes of items), keyed by item_id.")
    items_dead_letter_topic: str = Field(default="driftrec.items.dlq", description="Topic for rejected catalogue events, each with its reason header.")
    items_partitions: int = Field(default=1, ge=1, description="Partitions when driftrec creates the items topic (catalogue changes are few; one partition keeps them in one order).")
    catalogue_batch_max: int = Field(default=500, ge=1, description="Most catalogue events the worker applies in one Redis script.")
    catalogue_feed_len: int = Field(default=100_000, ge=100, description="Entries the catalogue change feed (P:{g}:items:feed) keeps, about; a reader further behind reloads the whole catalogue.")
    topic_partitions: int = Field(default=4, ge=1, description="Partitions when driftrec creates the clicks topic.")
    consumer_group: str = Field(default="driftrec-worker", description="Faust app id / consumer group.")
    key_prefix: str = Field(default="dr", description="Prefix of every Redis key driftrec owns.")

    # --- worker ---------------------------------------------------------------------------
    batch_max_events: int = Field(default=2000, ge=1, description="Largest micro-batch the worker applies at once.")
    worker_fetch_min_bytes: int = Field(default=1 << 20, ge=1, description="Bytes the broker gathers before it answers one of the worker's fetches (up to worker_fetch_max_wait_ms); more means fewer, larger fetches for the broker and the worker to turn around.")
    worker_fetch_max_wait_ms: int = Field(default=20, ge=0, description="Longest the broker holds one of the worker's fetches to gather worker_fetch_min_bytes; bounds the delay it adds to freshness.")
    batch_max_wait_s: float = Field(default=0.05, gt=0, description="Not used by the worker: its micro-batches are what each Kafka fetch brings (at most batch_max_events), and worker_fetch_max_wait_ms bounds how long a fetch gathers. Kept so configurations that set it still load; benchmarks/write_path.py's reference Faust consumer (take_events) reads it.")
    worker_overlap_batches: bool = Field(
        default=True, description="Plan the next micro-batch while Redis applies the one before it "
                                  "(single Redis node; a cluster applies them in turn).")
    apply_chunk_cost: float = Field(
        default=200, ge=0, description="Most estimated Redis work (units of about 1 us of Redis time on a 2-core server, fitted on a fresh store; ~2.4 us of wall time in a warm one under a shop's traffic, so 200 runs ~0.5 ms) of "
                                       "one script call applying part of a micro-batch (streams/chunked.py): a batch "
                                       "is applied in chunks behind a write-ahead copy, so no command holds Redis "
                                       "(and the readers queued behind it) for long; 0 = each batch in one script.")
    fault_exit_after_chunk: int = Field(
        default=0, ge=0, description="Testing only: the worker kills itself (SIGKILL) after this many chunks of "
                                     "the first batch with more chunks; 0 = off.")
    worker_web_port: int = Field(default=6066, description="Faust web port (bound to 127.0.0.1).")
    worker_metrics_port: int = Field(default=9108, description="Prometheus port of the worker.")
    worker_metrics_host: str = Field(
        default="127.0.0.1", description="Bind address of the worker's metrics (0.0.0.0 in containers)."
    )
    redis_retry_max_s: float = Field(default=5.0, gt=0, description="Longest back-off between Redis retries.")
    blas_threads: int = Field(
        default=1, ge=1, description="Threads per BLAS library in the worker and the reader (threadpoolctl): "
                                     "their solves and products are small, and more threads take the other "
                                     "process' core.")

    # --- model maths ----------------------------------------------------------------------
    event_weights: dict[str, float] = Field(
        default={"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0},
        description="Weight per event type; types not listed are rejected.",
    )
    half_life_s: float = Field(default=30 * 86400.0, gt=0, description="Half-life of every decayed signal (event time). 30 days: the best worst case over the shared data sets' warm-up halves (benchmarks/robust_defaults.py; 7 days lost 23 % on MovieLens).")
    max_future_skew_s: float = Field(
        default=3600.0, gt=0,
        description="An event timestamped more than this far past the worker's clock is dead-lettered: one far-future "
                    "event would move the decay landmark past every real one and round their scores to nothing.")
    history_len: int = Field(default=50, ge=1, description="Items kept in a user's recent history.")
    cooc_window: int = Field(default=10, ge=1, description="Recent items an event co-occurs with.")
    cooc_window_s: float = Field(default=3 * 86400.0, gt=0, description="Max event-time gap for co-occurrence.")
    neighbours_k: int = Field(default=50, ge=1, description="Neighbours served per item: the item page reads this many of a row, the reader at most this many (reader_neighbours).")
    neighbours_kept: int = Field(default=50, ge=1, description="Neighbours a row keeps (at least neighbours_k): the worker cuts a row to its strongest this many after each batch that grows it. Raising it makes the served rows (the first reader_neighbours) independent of how clicks fell into batches, at a price: at 256, the same 100,000 simulator clicks in batches of 1, 100 and 2,000 served the same top 20 of every row (at 50, 94.7 % of rows, the rest up to 129 views apart), but the worker alone applied 0.73x the clicks per second with 1.56x Redis CPU, and the 1M-event soak took 2.1x Redis bytes per item (docs/write-path.md). Past 128, also raise Redis' zset-max-listpack-entries to at least twice this, or every full row turns into a skiplist (12x the bytes; 6.1x per item in the soak with the bound at 256) and stays one (docs/runbook.md).")
    similarity_shrinkage: float = Field(default=5.0, ge=0, description="Shrinkage added to the cosine denominator.")
    similarity_alpha: float = Field(default=0.5, ge=0, le=1, description="Item-item source (reader): co(r, j) / (pop(r)^alpha x pop(j)^(1 - alpha) + shrinkage); 0.5 = cosine, towards 1 a candidate's own popularity is divided out less (asymmetric cosine).")
    factors: int = Field(default=32, ge=2, description="Latent factors of ISGD / fold-in vectors.")
    isgd_learning_rate: float = Field(default=0.05, gt=0, description="ISGD learning rate.")
    isgd_regularization: float = Field(default=0.01, ge=0, description="ISGD L2 regularisation.")
    fold_in_regularization: float = Field(default=0.1, ge=0, description="L2 of the ALS fold-in step.")
    trending_k: int = Field(default=500, ge=1, description="Items kept per trending list.")
    session_index_k: int = Field(default=0, ge=0, description="Session index (P:{i:<item>}:us, read by the session_knn source): the shoppers who clicked an item last kept per item, with that click's time, and each clicking shopper's click log (P:{u:<user>}:clk, their history in one value); 0 (the default, with the source opt-in) = the worker keeps neither; 50 is what the source was measured with (set it on the worker before giving session_knn a weight: the index fills from then on). At least reader_session_knn_sample (the reader reads that many of the latest); about a neighbour row's memory per item at 50.")

    # --- reader ---------------------------------------------------------------------------
    reader_host: str = Field(default="127.0.0.1", description="Reader bind address.")
    reader_model_dir: str | None = Field(default=None, description="Folder where the reader processes of one host build each model version once and memory-map it (arrays and index graphs), so N processes hold one copy; `driftrec serve --workers N` uses a fresh one under /dev/shm when unset; unset with one process: the model is built in memory.")
    reader_workers: int = Field(default=1, ge=0, description="Reader processes `driftrec serve` starts on its port (0: one per core); each loads the model itself, and their metrics are reported together.")
    reader_port: int = Field(default=8000, description="Reader HTTP port.")
    reader_native: bool = Field(default=True, description="`driftrec serve` puts the compiled front (online/native, the `driftrec-reader` binary `make install` builds) on the reader's port: it ranks plain GET /v1/recommendations/{user} requests (n and exclude only, no experiment defined) itself, with the Python reader's reads, model sources and blend, and passes every other request to the Python reader on a loopback port. Without the binary, serve logs a warning and the Python reader answers everything.")
    reader_native_threads: int = Field(default=0, ge=0, description="Threads of the compiled front (0: one per core).")
    reader_native_bin: str | None = Field(default=None, description="Path of the `driftrec-reader` binary (default: the one next to this Python, then PATH).")
    api_keys: tuple[str, ...] = Field(default=(), description="API keys allowed to POST events / DELETE users; empty = writes refused (403) unless allow_anonymous_writes.")
    allow_anonymous_writes: bool = Field(default=False, description="Take POST /v1/events and DELETE /v1/users/{id} without an API key when none is configured (the demo and tests; never on a reader the internet can reach).")
    max_request_bytes: int = Field(default=1 << 20, ge=1024, description="Largest HTTP request body accepted.")
    reader_blend_weights: dict[str, float] = Field(
        default={}, description="Blend weight per source (item_item, user_vector, tf, similar_users, trending, new_items, session_knn); unset = models.blend defaults. new_items (default 0) is the catalogue's new-item source: items added recently (added_at) that share a category or tag with the shopper's recent items, clicked or not (reader_new_item_*).")
    reader_recent_items: int = Field(default=8, ge=1, description="Recent items whose neighbours the reader reads per request.")
    reader_recent_order: Literal["time", "weight"] = Field(
        default="time", description="Which recent items feed item-item: the last clicked ('time') or the strongest decayed weights ('weight').")
    reader_recent_position_decay: float = Field(default=1.0, ge=0, description="Item-item source: the p-th recent item before the last click weighs 1 / (1 + this x p) (V-SKNN's order of the last clicks); 0 = every recent item by its decayed weight alone. 1: +29 % HR@10 on Online Retail's and +13 % on the simulator's warm-up half (benchmarks/robust_defaults.py).")
    reader_session_gap_s: float = Field(default=1800.0, gt=0, description="A gap between two clicks longer than this ends a session (reader_outside_session_weight).")
    reader_outside_session_weight: float = Field(default=0.2, gt=0, le=1, description="Item-item source: factor on a recent item not clicked in the shopper's latest session (reader_session_gap_s); 1 = no difference.")
    reader_neighbours: int = Field(default=20, ge=1, description="Strongest neighbours read per recent item.")
    reader_session_knn_sample: int = Field(default=20, ge=1, description="session_knn source: shoppers read from the session index per item of the shopper's latest session (at most reader_recent_items of them).")
    reader_session_knn_users: int = Field(default=30, ge=0, description="session_knn source: the shoppers who clicked those items last whose sessions are compared with the shopper's (their click logs, one MGET per request); 0 = off.")
    reader_similar_users: int = Field(default=5, ge=0, description="Nearest users whose items the similar-users source reads (0 = off).")
    reader_similar_users_pool: int = Field(default=10000, ge=1, description="Most published users searched for nearest users (bounds per-request cost).")
    reader_scan_items: int = Field(default=20_000, ge=1, description="Without reader_ann (or below reader_ann_min_rows items): most published items the reader's per-request exact scans cover (user vector, TF model, similar items by factors): on a larger catalogue, those with the largest factor norms. Bounds a request's cost: each scanned item streams (factors + TF hidden width) x 4 bytes from memory per request, about 1.4 ms of CPU per 10,000 items at driftrec train's 128 factors and 256-wide TF layer. Every item stays reachable through item-item neighbours and trending.")
    reader_ann: bool = Field(default=True, description="Search the published model (user vector over the item factors, TF output layer, nearest-user pool, similar items by factor cosine) through HNSW indexes (usearch) built when a version loads, and re-score their candidates exactly: a request's cost grows far slower than the catalogue (benchmarks/reader_ann.py: 1.9x from 10k to 1M random items, where exact scans grow 114x), so the whole catalogue is searched (reader_scan_items no longer applies). The candidate set is approximate, the scores exact. False: exact scans.")
    reader_ann_min_rows: int = Field(default=5000, ge=1, description="A published matrix with fewer rows (items, or users in the pool) is scanned exactly even with reader_ann: below it the exact scan costs no more than the graph search (about 5,000 rows of 128 factors, benchmarks/reader_ann.py).")
    reader_ann_overfetch: float = Field(default=2.0, ge=1, description="Candidates an index search fetches per item (or user) a source wants; they are re-scored exactly and cut, so more candidates trade CPU for recall.")
    reader_ann_expansion: int = Field(default=32, ge=1, description="HNSW search breadth (ef): candidates kept while walking the graph, at least the candidates fetched (so it only matters for searches of fewer than this many: the nearest users, similar items). 32 kept recall@50 at 0.99 on driftrec train's model at two thirds of the nearest-user search's cost at 64.")
    reader_ann_dtype: Literal["bf16", "f16", "f32"] = Field(default="bf16", description="Scalar type of the rows an index's graph walk compares (candidates are re-scored exactly in float32 either way). bf16 halves the bytes each distance reads: the three per-request searches cost 0.72x those of f32 on driftrec train's model here with the same recall@50 (0.99), for an index copy of the rows at half their float32 size; f32 reads the published arrays in place and adds only the graph.")
    reader_ann_build_threads: int = Field(default=1, ge=1, description="Threads one index build uses when a model version loads (the old version serves meanwhile); more threads build faster but take the request loop's core. Seconds per index with 2 threads here: ~1-2 at 10,000 rows, 300-600 at 1,000,000.")
    reader_cache_ttl_s: float = Field(default=0.5, ge=0, description="Longest the reader reuses a shared row (an item's neighbours, a similar user's top items) read for an earlier request; 0 = read every time. The shopper's own state is always read live.")
    reader_cache_rows: int = Field(default=10_000, ge=0, description="Most shared rows the reader keeps for reuse, per kind (a 20-neighbour row is about 3 KB).")
    reader_snapshot_interval_s: float = Field(default=2.0, gt=0, description="Refresh period of the in-memory trending snapshot (degraded mode, norms).")
    reader_snapshot_items: int = Field(default=20000, ge=1, description="Most popular items kept in the in-memory snapshot.")
    reader_redis_timeout_s: float = Field(default=0.5, gt=0, description="Reader's Redis socket timeout; past it the answer is degraded.")
    reader_max_in_flight: int = Field(default=16, ge=1, description="Most ranking requests (recommendations, similar items) one reader process works on at once; past it a request is answered at once from the in-memory trending snapshot (\"degraded\": true, counted as shed), so overload never queues every request behind the others.")
    reader_max_loop_lag_ms: float = Field(default=15.0, ge=0, description="Shed new ranking requests (answered from the in-memory trending snapshot, \"degraded\": true, counted as shed with reason loop_lag) while the reader's event loop has run at least this late on its own 10 ms timer for 50 ms on end: requests are then queueing before they reach a handler, and ranking more would make every answer late (one late wake-up, a GC pause, sheds nothing). 0 = off.")
    reader_deadline_s: float = Field(default=0.1, gt=0, description="Longest one ranking request may take; past it the reader answers from the in-memory trending snapshot instead (\"degraded\": true, counted as shed).")
    reader_new_item_half_life_s: float = Field(default=30 * 86400.0, gt=0, description="New-item source: an item's boost halves every this many seconds after its catalogue added_at (updated_at when unset), in the stream's event time.")
    reader_new_item_max_age_s: float = Field(default=90 * 86400.0, gt=0, description="New-item source: items added longer ago than this are not candidates (each source's scores are divided by their largest, so without a bound the newest of old items would score as new ones).")
    reader_new_item_candidates: int = Field(default=20, ge=0, description="New-item source: newest items read per category or tag of each recent item, from the reader's in-memory catalogue (which keeps 5x this many per category and tag); 0 turns the source off.")
    reader_catalogue_poll_s: float = Field(default=0.1, gt=0, description="How often the reader polls the catalogue change feed (one XREAD when nothing changed); bounds how late an item made unavailable can still be shown, with the worker's own delay.")

    # --- online experiments (driftrec/experiments.py) ---------------------------------------
    experiments_file: Path | None = Field(default=None, description="JSON or YAML file of experiment definitions ({\"experiments\": [...]}) the reader runs and the exporter reports, besides those PUT to /v1/experiments; a bad file stops start-up.")
    experiments_refresh_s: float = Field(default=1.0, gt=0, description="How often each reader re-reads the experiments defined through its admin endpoint (never per request).")

    # --- on-call (lag exporter, freshness canary, dashboard) ------------------------------
    exporter_port: int = Field(default=9308, description="Port of `driftrec lag --serve`: /metrics and /dashboard.")
    lag_interval_s: float = Field(default=2.0, gt=0, description="How often the exporter asks the broker for offsets.")
    canary_user_id: str = Field(default="driftrec-canary", description="Reserved user the freshness canary clicks as.")
    canary_item_id: str = Field(default="driftrec-canary-item", description="Item the canary clicks; readers should never recommend it.")
    canary_interval_s: float = Field(default=5.0, gt=0, description="Seconds between two freshness-canary clicks.")

    # --- trainer (driftrec train: click log -> batch models -> published version) ---------
    model_grace_s: float = Field(default=3600.0, ge=0, description="Seconds a replaced model version stays in Redis before the trainer deletes it.")
    gate_metric: str = Field(default="ndcg", pattern="^(ndcg|hr)$", description="Gate metric on the newest events: ndcg (nDCG@k) or hr (hit rate@k).")
    gate_k: int = Field(default=10, ge=1, description="Cut-off k of the gate metric.")
    gate_margin: float = Field(default=0.0, ge=0, description="A candidate may score this much below the live model and still be published.")
    gate_holdout_fraction: float = Field(default=0.1, gt=0, lt=1, description="Newest share of the log's events held out to compare candidate and live model.")
    gate_min_users: int = Field(default=20, ge=1, description="Fewest holdout users with history before the gate trusts its comparison.")

    @field_validator("event_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for name, w in v.items():
            if not (math.isfinite(w) and w > 0):
                raise ValueError(f"event weight for {name!r} must be positive and finite")
        return v

    @cached_property
    def decay_rate(self) -> float:
        """λ = ln 2 / half-life, per second of event time."""
        return math.log(2.0) / self.half_life_s

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self.event_weights)

    @property
    def neighbours_read(self) -> int:
        """Neighbours the reader reads per recent item: ``reader_neighbours``, within what the
        worker keeps (``neighbours_k``)."""
        return min(self.neighbours_k, self.reader_neighbours)

    @property
    def neighbours_cut(self) -> int:
        """Members the worker keeps per neighbour row: ``neighbours_kept``, never below what is
        served (``neighbours_k``)."""
        return max(self.neighbours_k, self.neighbours_kept)

    @property
    def local_stack(self) -> bool:
        """True when neither Kafka nor Redis was given from outside: driftrec runs its own."""
        return self.kafka_bootstrap_servers is None and self.redis_url is None

    def to_env(self) -> dict[str, str]:
        """Environment variables that rebuild these settings in a child process."""
        import json

        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            key = f"DRIFTREC_{name.upper()}"
            env[key] = json.dumps(list(value) if isinstance(value, tuple) else value) if isinstance(
                value, dict | tuple | list) else str(value)
        return env

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_port}"

    @property
    def redis(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]
