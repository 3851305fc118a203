"""The lag collector's numbers against Kafka's own ``kafka-consumer-groups --describe``."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from typer.testing import CliRunner

from driftrec.oncall.lag import LagCollector, LagSnapshot
from driftrec.settings import Settings
from driftrec.stack import LocalStack

pytestmark = pytest.mark.integration

_CGC = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


async def _kafka_describe(settings: Settings, group: str, *extra: str) -> list[list[str]]:
    """Rows of ConsumerGroupCommand's table (after its header line), split on whitespace."""
    classpath = LocalStack(settings).kafka_classpath()  # Maven-fetched jars include kafka-tools
    proc = await asyncio.create_subprocess_exec(
        "java", "-cp", classpath, _CGC, "--bootstrap-server", settings.bootstrap, "--describe",
        "--group", group, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = [ln.split() for ln in out.decode().splitlines() if ln.strip()]
    header = next(i for i, ln in enumerate(lines) if ln[0] == "GROUP")
    return [ln for ln in lines[header + 1:] if ln[0] == group]


def test_lag_matches_kafka_consumer_groups(settings: Settings) -> None:
    topic, group = settings.clicks_topic, settings.consumer_group
    counts = {0: 12, 1: 7, 2: 20, 3: 9}
    commits = {0: 3, 1: 7, 2: 0}  # partition 3: never committed
    now_ms = int(time.time() * 1000)

    def ts_ms(p: int, i: int) -> int:
        # Distinct ages per message: offset i of partition p is (100 + 10p - i) seconds old.
        return now_ms - (100 + 10 * p - i) * 1000

    async def run() -> tuple[LagSnapshot, list[list[str]], list[list[str]], float]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
        await producer.start()
        try:
            for p, n in counts.items():
                for i in range(n):
                    await producer.send(topic, b"{}", partition=p, timestamp_ms=ts_ms(p, i))
            await producer.flush()
        finally:
            await producer.stop()
        # A live member of the group (Stable, 1 member) that commits chosen offsets.
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap, group_id=group,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            while len(consumer.assignment()) < len(counts):
                await consumer.getmany(timeout_ms=200)
            await consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in commits.items()})
            async with LagCollector(settings.bootstrap, groups=[group], topics=[topic]) as collector:
                snap = await collector.collect()
            rows, state = await asyncio.gather(_kafka_describe(settings, group),
                                               _kafka_describe(settings, group, "--state"))
            return snap, rows, state, time.time()
        finally:
            await consumer.stop()

    snap, kafka_rows, kafka_state, done = asyncio.run(run())

    ours = {r.partition: r for r in snap.partitions if r.topic == topic}
    assert set(ours) == set(counts)
    theirs = {int(r[2]): r for r in kafka_rows if r[1] == topic}
    assert set(theirs) == set(counts), kafka_rows
    for p, row in theirs.items():
        current, end, lag = row[3], int(row[4]), row[5]
        assert end == ours[p].end_offset == counts[p]
        if p in commits:
            assert int(current) == ours[p].committed == commits[p]
            assert int(lag) == ours[p].lag == counts[p] - commits[p]
        else:  # no commit: Kafka prints "-"; we count the retained log as lag (earliest reset)
            assert current == "-" and lag == "-" and ours[p].committed is None
            assert ours[p].lag == counts[p]

    # Time lag: the age of the message at the committed offset, from its Kafka timestamp.
    for p, row in ours.items():
        if row.lag == 0:
            assert row.lag_seconds == 0.0
            continue
        oldest = commits.get(p, 0)
        expected = snap.taken_at - ts_ms(p, oldest) / 1000
        assert row.lag_seconds == pytest.approx(expected, abs=0.01), p
    assert ours[2].lag_seconds == pytest.approx(120.0, abs=done - now_ms / 1000 + 0.01)

    # Group state and members, as the coordinator reports them.
    (state_row,) = kafka_state
    assert snap.groups[group].state == state_row[-2] == "Stable"
    assert snap.groups[group].members == int(state_row[-1]) == 1

    # The CLI table shows the same numbers (the group is Empty now that its member left).
    from driftrec.cli import app

    result = CliRunner().invoke(app, ["lag"], env=settings.to_env())
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if topic in ln]
    assert len(lines) == len(counts)
    for ln in lines:
        cells = [c.strip() for c in ln.split("│") if c.strip()]
        p = int(cells[2])
        assert cells[5] == str(ours[p].lag) and cells[4] == str(counts[p]) and cells[7] == "Empty"
