"""Read-only access to the worker's Redis state, in as few round trips as a request allows."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from driftrec.keys import Keys

__all__ = ["ReaderStore"]

logger = logging.getLogger(__name__)


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


class ReaderStore:
    """What the reader reads; every method is one Redis round trip."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def history(self, user: str, n: int = 50) -> list[tuple[str, float]]:
        """The user's most recent items, newest first, with their last event time."""
        rows = await self.client.zrevrange(self.keys.user_hist(user), 0, n - 1, withscores=True)
        return [(_s(m), float(t)) for m, t in rows]

    async def popular_unseen(self, user: str, n: int, category: str | None = None,
                             history_len: int = 50) -> tuple[list[tuple[str, float]], set[str]]:
        """Top items by decayed popularity (overall or in ``category``) and the user's seen set."""
        key = self.keys.trending(category) if category else self.keys.popularity
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(key, 0, n + history_len - 1, withscores=True)
        pipe.zrange(self.keys.user_hist(user), 0, -1)
        top, seen_raw = await pipe.execute()
        seen = {_s(m) for m in seen_raw}
        return [(_s(m), float(s)) for m, s in top], seen
