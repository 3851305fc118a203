"""Prometheus metrics of the exporter, named as kafka_exporter and kafka-lag-exporter name them.

Lag metrics are produced from the latest :class:`~driftrec.oncall.lag.LagSnapshot` at scrape time
by a custom collector, so a partition or group that disappears stops being exported instead of
lingering with its last value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from driftrec.oncall.lag import LagSnapshot
from driftrec.oncall.lagmath import group_totals

__all__ = ["ExporterMetrics", "FRESHNESS_BUCKETS"]

#: Publish -> served seconds; dense below 1 s, where the freshness alert sits.
FRESHNESS_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


class _SnapshotCollector(Collector):
    def __init__(self, latest: Callable[[], LagSnapshot | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._latest()
        if snap is None:
            return
        part = ["consumergroup", "topic", "partition"]
        lag = GaugeMetricFamily("kafka_consumergroup_lag", "Messages the group has still to read.", labels=part)
        cur = GaugeMetricFamily("kafka_consumergroup_current_offset", "Committed offset of the group.", labels=part)
        secs = GaugeMetricFamily("kafka_consumergroup_group_lag_seconds",
                                 "Age of the oldest unconsumed message (kafka-lag-exporter).",
                                 labels=["group", "topic", "partition"])
        for row in snap.partitions:
            labels = [row.group, row.topic, str(row.partition)]
            lag.add_metric(labels, row.lag)
            if row.committed is not None:
                cur.add_metric(labels, row.committed)
            if row.lag_seconds is not None:
                secs.add_metric(labels, row.lag_seconds)
        lag_sum = GaugeMetricFamily("kafka_consumergroup_lag_sum", "Lag summed over partitions.",
                                    labels=["consumergroup", "topic"])
        max_secs = GaugeMetricFamily("kafka_consumergroup_group_max_lag_seconds",
                                     "Largest time lag over the group's partitions.", labels=["group", "topic"])
        for (group, topic), (total, worst) in sorted(group_totals(snap.partitions).items()):
            lag_sum.add_metric([group, topic], total)
            max_secs.add_metric([group, topic], worst)
        end = GaugeMetricFamily("kafka_topic_partition_current_offset", "Log-end offset.",
                                labels=["topic", "partition"])
        start = GaugeMetricFamily("kafka_topic_partition_oldest_offset", "Log-start offset.",
                                  labels=["topic", "partition"])
        for (topic, p), (lo, hi) in sorted(snap.logs.items()):
            end.add_metric([topic, str(p)], hi)
            start.add_metric([topic, str(p)], lo)
        members = GaugeMetricFamily("kafka_consumergroup_members", "Members of the group.",
                                    labels=["consumergroup"])
        state = GaugeMetricFamily("driftrec_consumergroup_state", "1 for the group's current state.",
                                  labels=["consumergroup", "state"])
        for info in snap.groups.values():
            members.add_metric([info.group], info.members)
            state.add_metric([info.group, info.state], 1)
        yield from (lag, cur, secs, lag_sum, max_secs, end, start, members, state)


class ExporterMetrics:
    """Every series ``driftrec lag --serve`` exports, in its own registry."""

    def __init__(self, latest: Callable[[], LagSnapshot | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_SnapshotCollector(latest))
        self.scrape_ok = Gauge("driftrec_lag_collect_success", "1 when the last broker collection worked.", registry=r)
        self.scrape_seconds = Histogram("driftrec_lag_collect_seconds", "Time one broker collection took.",
                                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.up = Gauge("driftrec_up", "1 when the component answers (kafka, redis, worker, reader).",
                        ["component"], registry=r)
        self.freshness = Histogram("driftrec_freshness_seconds",
                                   "Canary click publish -> visible through the read path.", ["path"],
                                   buckets=FRESHNESS_BUCKETS, registry=r)
        self.canary_timeouts = Counter("driftrec_canary_timeouts_total",
                                       "Canary clicks not visible within the deadline.", registry=r)
        self.canary_last_success = Gauge("driftrec_canary_last_success_timestamp_seconds",
                                         "Wall time of the last canary click seen served.", registry=r)
        self.last_event_age = Gauge("driftrec_last_applied_event_age_seconds",
                                    "Now minus the event time of the newest event the worker applied.", registry=r)
        self.applied_events = Gauge("driftrec_applied_events", "Events the worker has applied (Redis meta).",
                                    registry=r)
        self.model_info = Gauge("driftrec_model_info", "1 for the live model version.", ["version"], registry=r)
        self.attributed = Counter("driftrec_attributed_clicks_total",
                                  "Clicks carrying the request_id of an answer that showed the item.",
                                  ["strategy", "source", "type"], registry=r)
        self.unattributed = Counter("driftrec_unattributed_clicks_total",
                                    "Clicks with a request_id that could not be attributed.", ["reason"], registry=r)
