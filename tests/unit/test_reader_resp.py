"""The reader's raw RESP pipeline: packing, reply framing across chunks, URL handling."""

from __future__ import annotations

import asyncio

import hiredis
import pytest
import redis.exceptions

from driftrec.online.resp import RespPool, _Connection, pack


def test_pack_is_resp_arrays_of_bulk_strings() -> None:
    assert pack([["GET", "k"]]) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert pack([["ZREVRANGE", "é", 0, -1], ["PING"]]) == (
        b"*4\r\n$9\r\nZREVRANGE\r\n$2\r\n\xc3\xa9\r\n$1\r\n0\r\n$2\r\n-1\r\n*1\r\n$4\r\nPING\r\n")
    assert pack([["SET", b"\x00\xff", 0.5]]) == b"*3\r\n$3\r\nSET\r\n$2\r\n\x00\xff\r\n$3\r\n0.5\r\n"
    reader = hiredis.Reader()
    reader.feed(pack([["A", "b c", 7]]))
    # A server parses the request the way hiredis parses a reply array.
    assert reader.gets() == [b"A", b"b c", b"7"]


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def test_replies_are_framed_across_arbitrary_chunks() -> None:
    async def go() -> None:
        conn = _Connection()
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        waiter: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        conn.send(pack([["GET", "a"], ["ZREVRANGE", "z", 0, -1, "WITHSCORES"], ["GET", "b"]]), 3, waiter)
        wire = b"$2\r\nhi\r\n*4\r\n$1\r\nx\r\n$3\r\n1.5\r\n$1\r\ny\r\n$1\r\n1\r\n$-1\r\n"
        for i in range(0, len(wire), 3):
            assert not waiter.done()
            conn.data_received(wire[i:i + 3])
        assert await waiter == ["hi", ["x", "1.5", "y", "1"], None]
        # A lost connection fails the batch waiting on it.
        waiter2: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        conn.send(pack([["PING"]]), 1, waiter2)
        conn.connection_lost(OSError("reset"))
        with pytest.raises(redis.exceptions.ConnectionError):
            await waiter2
        assert conn.broken

    asyncio.run(go())


def test_only_plain_tcp_urls_use_the_pool() -> None:
    pool = RespPool.from_url("redis://:pw@h:1234/3", 0.5)
    assert pool is not None and (pool.host, pool.port, pool.db, pool.password) == ("h", 1234, 3, "pw")
    assert RespPool.from_url("redis://h", 0.5) is not None
    for url in ("rediss://h:1/0", "unix:///tmp/r.sock", "redis://h:1/x", "redis://h:1/0?protocol=3"):
        assert RespPool.from_url(url, 0.5) is None

