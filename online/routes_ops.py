"""Operational routes: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import logging

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from driftrec.online.http import json_response
from driftrec.online.metrics import CONTENT_TYPE_LATEST, ReaderMetrics
from driftrec.online.model_cache import ModelCache
from driftrec.online.recommender import STORE_DOWN
from driftrec.online.snapshot import TrendingSnapshot
from driftrec.online.store import ReaderStore

__all__ = ["ops_routes"]

logger = logging.getLogger(__name__)


def ops_routes(store: ReaderStore, models: ModelCache, snapshot: TrendingSnapshot, metrics: ReaderMetrics,
               openapi: dict[str, object]) -> list[Route]:
    openapi_bytes = orjson.dumps(openapi)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        body: dict[str, object] = {"model_version": models.version, "snapshot_age_s": snapshot.age_s}
        try:
            await store.ping()
        except STORE_DOWN as exc:
            # Not ready: a balancer should prefer readers that can see Redis, though this one
            # still answers (degraded) if it is all there is.
            return json_response({"status": "not ready", "redis": type(exc).__name__, **body}, status=503)
        return json_response({"status": "ready", "redis": "ok", **body})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(request: Request) -> Response:
        return Response(openapi_bytes, media_type="application/json")

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
