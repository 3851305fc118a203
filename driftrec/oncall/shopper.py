"""The dashboard's shopper page: one shopper's latest clicks and current recommendations, from the reader.

The exporter asks the reader (``--reader-url``) and answers the page on its own origin, so the
browser needs no CORS and the reader needs no change of its own. Every failure is a JSON answer
with a 4xx or 502/503 status, never a 500: a bad id is the caller's error (400), an id the reader
refuses keeps the reader's status, a reader that is down or not configured is the exporter's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

__all__ = ["ShopperView", "ShopperAnswer", "valid_user_id"]

logger = logging.getLogger(__name__)

# The event contract's id pattern (driftrec/events.py): a shopper id the site cannot send is a 400
# here, before any request to the reader. fullmatch, so a trailing newline is refused too.
_ID_RE = re.compile(r"[A-Za-z0-9._:@/+\-]{1,128}")
#: Catalogue fields asked for: the page shows titles and prices (null where the catalogue lacks the item).
_FIELDS = "title,price"


def valid_user_id(value: str | None) -> bool:
    """Whether ``value`` is a shopper id the write path would accept."""
    return value is not None and _ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class ShopperAnswer:
    """An HTTP status and its JSON body."""

    status: int
    body: dict[str, Any]


def _error(status: int, error: str, detail: str) -> ShopperAnswer:
    return ShopperAnswer(status, {"error": error, "detail": detail})


class ShopperView:
    """Builds the shopper page's JSON from two reader calls made together.

    Parameters
    ----------
    http:
        The exporter's client (its connections are reused every refresh).
    reader_url:
        The reader's base URL; None when the exporter runs without a reader (every answer is a 503).
    timeout_s:
        Per reader call: the page refreshes about every second, a slower answer is stale anyway.
    """

    def __init__(self, http: httpx.AsyncClient, reader_url: str | None, *, timeout_s: float = 2.0) -> None:
        self.http = http
        self.reader_url = reader_url.rstrip("/") if reader_url else None
        self.timeout_s = timeout_s

    async def get(self, user: str | None, *, clicks: int = 10, recs: int = 10) -> ShopperAnswer:
        if not user:
            return _error(400, "invalid_request", "user: a shopper id is required (?user=ID)")
        if not valid_user_id(user):
            return _error(400, "invalid_request", "user: must be 1-128 characters of letters, digits and ._:@/+-")
        if self.reader_url is None:
            return _error(503, "no_reader", "the exporter runs without a reader (--reader-url none)")
        base = f"{self.reader_url}/v1"
        uid = quote(user, safe="")
        # strategy=blend: the page must not enrol the shopper in an experiment (nor count as an answer of one).
        history, ranked = await asyncio.gather(
            self._call(f"{base}/users/{uid}/history", {"n": str(clicks), "fields": _FIELDS}),
            self._call(f"{base}/recommendations/{uid}", {"n": str(recs), "fields": _FIELDS, "strategy": "blend"}),
        )
        for part in (history, ranked):
            if isinstance(part, ShopperAnswer):
                return part
        assert isinstance(history, dict) and isinstance(ranked, dict)
        return ShopperAnswer(200, {
            "user_id": user,
            "fetched_at": time.time(),
            "clicks": [{"item_id": x.get("item_id"), "title": x.get("title"), "category": x.get("category"),
                        "timestamp": x.get("timestamp")} for x in history.get("items", [])],
            "categories": history.get("categories", []),
            "recommendations": [{"item_id": x.get("item_id"), "title": x.get("title"), "price": x.get("price"),
                                 "score": x.get("score"), "reason": x.get("reason"), "source": x.get("source")}
                                for x in ranked.get("items", [])],
            "model_version": ranked.get("model_version"),
            "degraded": ranked.get("degraded", False),
        })

    async def _call(self, url: str, params: dict[str, str]) -> dict[str, Any] | ShopperAnswer:
        try:
            resp = await self.http.get(url, params=params, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            return _error(502, "reader_unreachable", f"{self.reader_url}: {type(exc).__name__}")
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            body = None
        if resp.status_code != 200 or not isinstance(body, dict):
            if 400 <= resp.status_code < 500:
                # The reader's own verdict on the id (its body is already {"error", "detail"}).
                detail = body.get("detail") if isinstance(body, dict) else None
                error = body.get("error") if isinstance(body, dict) else None
                return _error(resp.status_code, str(error or "invalid_request"), str(detail or resp.text[:200]))
            logger.debug("reader answered %s for %s", resp.status_code, url)
            return _error(502, "reader_error", f"the reader answered HTTP {resp.status_code}")
        return body
