"""The served-answer recorder: batched HSET + EXPIRE pipelines, bounded queue, drops counted, never raises."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import redis.exceptions

from driftrec.keys import Keys
from driftrec.models.blend import Scored
from driftrec.oncall.attribution import STRATEGY_FIELD
from driftrec.online.served import STRATEGY_FIELD as READER_FIELD
from driftrec.online.served import ServedRecorder


def _items(*pairs: tuple[str, str]) -> list[Scored]:
    return [Scored(i, 1.0, s, "why") for i, s in pairs]


class FakeRedis:
    """Records the pipelines it is sent; fails while ``down``."""

    def __init__(self) -> None:
        self.pipelines: list[list[list[Any]]] = []
        self.down = False

    async def run(self, commands: list[list[Any]]) -> list[Any]:
        await asyncio.sleep(0)
        if self.down:
            raise redis.exceptions.ConnectionError("down")
        self.pipelines.append(commands)
        return [1] * len(commands)


def test_the_exporter_reads_the_field_the_reader_writes() -> None:
    assert READER_FIELD == STRATEGY_FIELD


def test_records_are_written_in_pipelines_of_hset_and_expire() -> None:
    async def go() -> tuple[FakeRedis, Counter[str]]:
        fake, counts = FakeRedis(), Counter[str]()
        rec = ServedRecorder(fake.run, Keys("p"), lambda o, n: counts.update({o: n}), max_batch=2)
        rec.start()
        rec.record("r1", "blend", _items(("a", "item_item"), ("b", "trending")))
        rec.record("r2", "similar_items", _items(("c", "user_vector")))
        rec.record("r3", "tf", _items(("d", "tf")))
        rec.record("r4", "blend", [])  # nothing served, nothing recorded
        for _ in range(3000):
            await asyncio.sleep(0.001)
            if counts["written"] == 3:
                break
        await rec.stop()
        return fake, counts

    fake, counts = asyncio.run(go())
    assert counts == {"written": 3}
    # Three records queued before the writer woke: two pipelines of at most two records each.
    assert [len(p) for p in fake.pipelines] == [4, 2]
    cmds = [c for p in fake.pipelines for c in p]
    assert cmds[0] == ["HSET", "p:{r:r1}", "#strategy", "blend", "a", "item_item", "b", "trending"]
    assert cmds[1] == ["EXPIRE", "p:{r:r1}", 3600]
    assert cmds[2] == ["HSET", "p:{r:r2}", "#strategy", "similar_items", "c", "user_vector"]
    assert cmds[4][:2] == ["HSET", "p:{r:r3}"] and cmds[5] == ["EXPIRE", "p:{r:r3}", 3600]


def test_experiment_counts_are_folded_over_a_batch() -> None:
    """An experiment's answers carry a counter increment and a shopper each: a batch sends one
    HINCRBY per counter (the sum) and one SADD per set, in the records' pipeline."""
    async def go() -> FakeRedis:
        fake = FakeRedis()
        rec = ServedRecorder(fake.run, Keys("p"), lambda o, n: None, max_batch=10)
        for k, (user, variant) in enumerate([("u1", "a"), ("u2", "b"), ("u1", "a"), ("u3", "a")]):
            rec.record(f"r{k}", "blend", _items(("i", "tf")), (("#variant", variant),),
                       (("HINCRBY", "c", f"answers|{variant}", 1), ("SADD", f"s:{variant}", user),
                        ("DEL", f"x{k}")))
        await rec.flush()
        return fake

    (pipeline,) = asyncio.run(go()).pipelines
    assert [c[0] for c in pipeline[:8]] == ["HSET", "EXPIRE"] * 4
    assert pipeline[0] == ["HSET", "p:{r:r0}", "#strategy", "blend", "i", "tf", "#variant", "a"]
    assert pipeline[8:] == [["HINCRBY", "c", "answers|a", 3], ["HINCRBY", "c", "answers|b", 1],
                            ["SADD", "s:a", "u1", "u3"], ["SADD", "s:b", "u2"],
                            ["DEL", "x0"], ["DEL", "x1"], ["DEL", "x2"], ["DEL", "x3"]]


def test_redis_down_drops_records_with_a_count_and_the_queue_stays_bounded() -> None:
    async def go() -> tuple[FakeRedis, Counter[str], int]:
        fake, counts = FakeRedis(), Counter[str]()
        fake.down = True
        rec = ServedRecorder(fake.run, Keys("p"), lambda o, n: counts.update({o: n}), max_queue=5, max_batch=3)
        rec.start()
        rec.record("r0", "blend", _items(("a", "trending")))
        for _ in range(3000):  # until the writer has tried, failed and backs off (no fixed delay)
            await asyncio.sleep(0.001)
            if counts["dropped_error"]:
                break
        for k in range(1, 9):  # recording never raises, whatever Redis does
            rec.record(f"r{k}", "blend", _items(("a", "trending")))
        queued = len(rec)
        fake.down = False
        await rec.stop()  # writes what is left
        return fake, counts, queued

    fake, counts, queued = asyncio.run(go())
    assert queued == 5
    assert counts == {"dropped_error": 1, "dropped_full": 3, "written": 5}
    assert sum(len(p) for p in fake.pipelines) == 2 * 5


def test_stop_counts_what_it_could_not_write() -> None:
    async def go() -> Counter[str]:
        fake, counts = FakeRedis(), Counter[str]()
        fake.down = True
        rec = ServedRecorder(fake.run, Keys("p"), lambda o, n: counts.update({o: n}))
        rec.record("r1", "blend", _items(("a", "trending")))
        rec.record("r2", "blend", _items(("b", "trending")))
        await rec.stop(timeout=0.5)
        return counts

    counts = asyncio.run(go())
    assert counts == {"dropped_error": 2}


def test_stop_ends_the_writer_even_when_a_library_swallows_its_cancellation() -> None:
    """Python 3.11's wait_for can swallow a cancellation that races a completing call; the writer
    then went back to waiting and stop() hung (seen once in the reader tests under load)."""
    async def main() -> None:
        counts: Counter[str] = Counter()
        swallowed = asyncio.Event()

        async def swallowing_run(cmds: list[list[Any]]) -> list[Any]:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # what the buggy wait_for did: carry on as if done
                swallowed.set()
            return [1] * len(cmds)

        rec = ServedRecorder(swallowing_run, Keys("p"), lambda o, n: counts.update({o: n}))
        rec.start()
        rec.record("r1", "blend", _items(("a", "item_item")))
        await asyncio.sleep(0.05)  # the writer is inside the write now
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopper = asyncio.ensure_future(rec.stop(timeout=1.0))
        done, _ = await asyncio.wait([stopper], timeout=5.0)
        assert stopper in done, "stop() hung"
        assert loop.time() - started < 3.0
        assert swallowed.is_set()
        assert rec._task is None

    asyncio.run(main())
