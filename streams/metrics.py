"""Prometheus metrics of the worker (exported on ``worker_metrics_port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "EVENTS_APPLIED", "EVENTS_SKIPPED", "DEAD_LETTERS", "BATCH_SIZE", "BATCH_SECONDS",
    "REDIS_RETRIES", "KAFKA_RETRIES", "LAST_EVENT_TIME", "REBALANCES", "UNEXPECTED_ERRORS",
    "MODEL_RELOADS", "REDIS_APPLY_SECONDS", "MODEL_VERSION", "FORGETS", "FORGETS_INCOMPLETE",
    "FORGET_RECORDS_READ", "BATCHES",
]

EVENTS_APPLIED = Counter("driftrec_worker_events_applied_total", "Click events applied to Redis.")
EVENTS_SKIPPED = Counter(
    "driftrec_worker_events_skipped_total", "Events skipped because Redis already had them (replay)."
)
DEAD_LETTERS = Counter("driftrec_worker_dead_letters_total", "Events sent to the dead-letter topic.")
BATCH_SIZE = Histogram(
    "driftrec_worker_batch_size", "Records per micro-batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
BATCH_SECONDS = Histogram(
    "driftrec_worker_batch_seconds",
    "Time from planning one micro-batch to Redis accepting it (an overlapped batch's includes the "
    "time it waited, planned, for the batch before it).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCHES = Counter(
    "driftrec_worker_batches_total",
    "Micro-batches applied, by path: overlapped (planned while Redis applied the batch before), "
    "alone (planned the same way with nothing in flight: the first batch after a pause, a fallback, "
    "or a held batch applied because no next batch was fetched yet) or in_turn (the old path: loaded, "
    "planned and applied on its own, when overlapping is off, for a forget, or after a fallback).",
    ["path"],
)
REDIS_RETRIES = Counter("driftrec_worker_redis_retries_total", "Redis calls retried after an error.")
KAFKA_RETRIES = Counter("driftrec_worker_kafka_retries_total", "Dead-letter sends retried after a Kafka error.")
UNEXPECTED_ERRORS = Counter(
    "driftrec_worker_unexpected_errors_total",
    "Batches that failed for a reason other than bad data or an outage (a bug); split and retried.",
)
MODEL_RELOADS = Counter("driftrec_worker_model_reloads_total", "Published item-factor versions loaded.")
LAST_EVENT_TIME = Gauge(
    "driftrec_worker_last_applied_event_timestamp_seconds", "Event time of the newest applied event."
)
REBALANCES = Counter("driftrec_worker_rebalances_total", "Consumer-group rebalances seen.")
# Added for the on-call dashboards; the write path observes them (see docs/runbook.md).
REDIS_APPLY_SECONDS = Histogram(
    "driftrec_worker_redis_apply_seconds", "Round trip of one batch's Redis apply script.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
MODEL_VERSION = Gauge(
    "driftrec_worker_model_version", "1 for the published model version the worker folds in against.", ["version"]
)
FORGETS = Counter(
    "driftrec_worker_forgets_total",
    "forget_user tombstones applied: the user's keys deleted and their share of shared state subtracted.",
)
FORGETS_INCOMPLETE = Counter(
    "driftrec_worker_forgets_incomplete_total",
    "Forgets whose earlier clicks retention had partly deleted from the log: subtracted only in part.",
)
FORGET_RECORDS_READ = Counter(
    "driftrec_worker_forget_records_read_total",
    "Records of forgotten users read back from the clicks topic to subtract their share.",
)
