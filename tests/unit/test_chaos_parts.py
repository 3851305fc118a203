"""Pieces of the chaos suite without I/O: fuzzed bad events, capped-list overlap, and the reader's
RESP client after a Redis restart (the chaos run found a closed idle connection answered 500)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis.exceptions

from driftrec.models.online import EventView, InMemoryState
from driftrec.online.resp import RespPool, _Connection
from driftrec.settings import Settings
from tools.chaos.fuzz import FAMILIES, bad_events, is_rejected
from tools.chaos.state import compare, snapshot_of

WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


def test_every_fuzzed_event_is_rejected_and_every_family_shows_up() -> None:
    events = list(bad_events(3000, seed=9, weights=WEIGHTS))
    assert len(events) == 3000
    assert all(is_rejected(e.value, WEIGHTS) for e in events)
    assert set(Counter(e.family for e in events)) == set(FAMILIES)
    assert all(e.key is not None or e.value is not None for e in events)  # Kafka needs one of them


def test_fuzzed_events_are_deterministic_for_a_seed() -> None:
    a = [(e.key, e.value) for e in bad_events(500, seed=4, weights=WEIGHTS)]
    b = [(e.key, e.value) for e in bad_events(500, seed=4, weights=WEIGHTS)]
    c = [(e.key, e.value) for e in bad_events(500, seed=5, weights=WEIGHTS)]
    assert a == b and a != c


def test_a_valid_event_is_not_counted_as_rejected() -> None:
    good = b'{"event_id":"e","user_id":"u","item_id":"i","type":"view","timestamp":1700000000}'
    assert not is_rejected(good, WEIGHTS)
    assert is_rejected(good.replace(b"view", b"like"), WEIGHTS)


def _oracle(events: list[EventView]) -> InMemoryState:
    s = Settings(neighbours_k=3, neighbours_kept=3, history_len=50, trending_k=500)
    st = InMemoryState.from_settings(s, user_items_k=50, user_cats_k=32, landmark=0.0)
    st.process(events)
    return st


def test_compare_finds_a_lost_event_and_tolerates_a_pruned_list_differing() -> None:
    s = Settings(neighbours_k=3, neighbours_kept=3, history_len=50, trending_k=500)
    evs = [EventView("u1", f"i{j}", "view", 100.0 + j, "c", j, 0) for j in range(6)]
    oracle = _oracle(evs)
    snap = snapshot_of(oracle)
    assert compare(snap, oracle, s).equal
    capped = next(k for k, v in oracle.cooc.items() if len(v) >= 3)
    snap.cooc[capped] = {m: v * 1.5 for m, v in snap.cooc[capped].items()}  # batch-dependent: not exact
    assert compare(snap, oracle, s).equal
    snap.pop["i2"] *= 2  # an event applied twice
    got = compare(snap, oracle, s)
    assert not got.equal and got.mismatches == {"pop": 1}
    snap.pop["i2"] /= 2
    snap.meta["applied_events"] = str(oracle.applied - 1)
    assert compare(snap, oracle, s).mismatches == {"applied_events": 1}


class ClosedTransport:
    """uvloop's transport after the peer closed: writing raises."""

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    def close(self) -> None:
        pass


def test_a_write_on_a_closed_connection_is_a_redis_connection_error() -> None:
    async def go() -> None:
        conn = _Connection()
        conn.transport = ClosedTransport()  # type: ignore[assignment]
        waiter: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        with pytest.raises(redis.exceptions.ConnectionError):
            conn.send(b"*1\r\n$4\r\nPING\r\n", 1, waiter)
        assert conn.broken
        with pytest.raises(redis.exceptions.ConnectionError):  # and it stays unusable
            conn.send(b"*1\r\n$4\r\nPING\r\n", 1, waiter)

    asyncio.run(go())


def test_the_pool_drops_idle_connections_that_were_lost() -> None:
    async def go() -> None:
        pool = RespPool("127.0.0.1", 1, timeout=0.2)
        lost = _Connection()
        lost.transport = ClosedTransport()  # type: ignore[assignment]
        lost.connection_lost(None)
        pool._idle.append(lost)
        # Port 1 refuses: the pool must try a new connection (ConnectionError), not write on the lost one.
        with pytest.raises(redis.exceptions.ConnectionError, match="cannot connect"):
            await pool.execute([["PING"]])
        assert pool._idle == []

    asyncio.run(go())


def test_a_batch_beyond_the_stored_offsets_is_a_gap_to_read_back() -> None:
    from driftrec.streams.gapfill import find_gaps

    positions = [(0, 120), (0, 121), (1, 50), (2, 10), (3, 7)]
    stored = {0: 99, 1: 49, 2: -1}  # 3: Redis never saw the partition
    assert find_gaps(positions, stored, max_records=1000) == {0: (100, 120)}
    assert find_gaps(positions, stored, max_records=10) == {}  # too large: logged, not filled
    assert find_gaps([(0, 100)], {0: 99}, 1000) == {}


def test_tree_rss_counts_the_children_of_a_launcher() -> None:
    # `driftrec serve` is a launcher whose front and Python reader are its children: the soak and
    # the system benchmark report the reader's memory as the whole tree.
    import subprocess
    import time

    from tools.chaos.procs import rss_mb, tree_pids, tree_rss_mb

    proc = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(tree_pids(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = tree_pids(proc.pid)
        assert pids[0] == proc.pid and len(pids) == 3
        total, own = tree_rss_mb(proc.pid), rss_mb(proc.pid)
        assert total is not None and own is not None
        assert total == sum(rss_mb(p) or 0.0 for p in pids) and total > own
    finally:
        for p in tree_pids(proc.pid)[1:]:
            subprocess.run(["kill", str(p)], check=False)
        proc.kill()
        proc.wait()
    assert tree_rss_mb(proc.pid) is None
