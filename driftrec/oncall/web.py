"""HTTP face of the exporter: ``/metrics`` for Prometheus, ``/dashboard`` and its ``/api/state``,
``/dashboard/shopper`` and its ``/api/shopper``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from driftrec.oncall.exporter import Exporter
from driftrec.oncall.shopper import ShopperView

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _dashboard_html(name: str = "dashboard.html") -> str:
    return resources.files("driftrec.oncall").joinpath(f"static/{name}").read_text(encoding="utf-8")


def create_app(exporter: Exporter) -> Starlette:
    """The exporter's app; its lifespan starts and stops the exporter's loops."""
    page = _dashboard_html()  # read once: a broken package fails at start, not at 3 a.m.
    shopper_page = _dashboard_html("shopper.html")
    shoppers = ShopperView(exporter.http, exporter.config.reader_url)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(exporter.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def state(request: Request) -> Response:
        return Response(orjson.dumps(exporter.state(), option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json", headers={"Cache-Control": "no-store"})

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def shopper_dashboard(request: Request) -> Response:
        return HTMLResponse(shopper_page, headers={"Cache-Control": "no-store"})

    async def shopper(request: Request) -> Response:
        """``/api/shopper?user=ID``: the shopper page's data, from the reader (driftrec.oncall.shopper)."""
        answer = await shoppers.get(request.query_params.get("user"))
        return Response(orjson.dumps(answer.body), status_code=answer.status, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def root(request: Request) -> Response:
        return RedirectResponse("/dashboard")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await exporter.start()
        try:
            yield
        finally:
            await exporter.stop()

    return Starlette(routes=[
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/api/shopper", shopper, methods=["GET"]),
        Route("/dashboard/shopper", shopper_dashboard, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/", root, methods=["GET"]),
    ], lifespan=lifespan)
