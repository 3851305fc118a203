"""The reader: a Starlette app serving recommendations from Redis (``driftrec serve``)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from driftrec.errors import DriftrecError, InvalidRequestError
from driftrec.keys import Keys
from driftrec.settings import Settings
from online.store import ReaderStore

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+\-]{1,128}$")


def _id(value: str, name: str) -> str:
    if not _ID_RE.match(value):
        raise InvalidRequestError(f"{name}: must be 1-128 characters of letters, digits and ._:@/+-")
    return value


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"{name}: must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidRequestError(f"{name}: must be between {lo} and {hi}")
    return value


def create_app(settings: Settings, store: ReaderStore | None = None) -> Starlette:
    """Build the reader. ``store`` defaults to one on ``settings.redis``."""
    if store is None:
        client = aioredis.Redis.from_url(settings.redis, socket_timeout=2, socket_connect_timeout=1)
        store = ReaderStore(client, Keys(settings.key_prefix))

    async def recommendations(request: Request) -> Response:
        user = _id(request.path_params["user_id"], "user_id")
        n = _int_param(request, "n", 10, 1, 100)
        category = request.query_params.get("category")
        if category is not None and not 1 <= len(category) <= 64:
            raise InvalidRequestError("category: must be 1-64 characters")
        top, seen = await store.popular_unseen(user, n, category, settings.history_len)
        items = [
            {"item_id": item, "score": score, "reason": f"popular in {category}" if category else "popular now"}
            for item, score in top if item not in seen
        ][:n]
        return JSONResponse({
            "request_id": uuid.uuid4().hex, "model_version": None, "generated_at": time.time(),
            "degraded": False, "user_id": user, "items": items,
        })

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await store.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            return JSONResponse({"status": "not ready", "redis": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready", "redis": "ok"})

    async def on_driftrec_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DriftrecError)
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=exc.http_status_code())

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": "http", "detail": exc.detail}, status_code=exc.status_code)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await store.client.aclose()

    return Starlette(
        routes=[
            Route("/v1/recommendations/{user_id:path}", recommendations, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={DriftrecError: on_driftrec_error, HTTPException: on_http_error},
        lifespan=lifespan,
    )
