"""The reader's HTTP errors and the handlers that turn every error into a JSON answer."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
import redis.exceptions
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from driftrec.errors import DriftrecError

__all__ = [
    "Unauthorized",
    "Forbidden",
    "PayloadTooLarge",
    "Unavailable",
    "json_error",
    "EXCEPTION_HANDLERS",
]

logger = logging.getLogger(__name__)

_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed"}


class Unauthorized(DriftrecError):
    """A write endpoint was called without a valid API key."""

    http_status = 401


class Forbidden(DriftrecError):
    """A write endpoint was called on a reader that takes no anonymous writes and has no API key."""

    http_status = 403


class PayloadTooLarge(DriftrecError):
    """The request body (or the number of events in it) is over the configured limit."""

    http_status = 413


class Unavailable(DriftrecError):
    """A backing service (Kafka for writes, Redis where no degraded answer exists) is down."""

    http_status = 503


def json_error(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """The one error body of the reader: ``{"error": <kind>, "detail": <text>}``."""
    return Response(
        orjson.dumps({"error": error, "detail": detail}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _on_driftrec_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DriftrecError)
    status = exc.http_status_code()
    if status >= 500 and not isinstance(exc, Unavailable):
        logger.error("internal error on %s: %s", request.url.path, exc)
    return json_error(status, type(exc).__name__, str(exc))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, "http")
    return json_error(exc.status_code, kind, str(exc.detail), exc.headers)


async def _on_redis_down(request: Request, exc: Exception) -> Response:
    # Endpoints with a degraded answer catch this themselves; the rest say "try later".
    logger.warning("Redis unavailable on %s: %s", request.url.path, exc)
    return json_error(503, "Unavailable", f"state store unavailable: {type(exc).__name__}",
                      {"Retry-After": "1"})


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # A bug, never bad input: logged with its trace, answered as JSON all the same.
    logger.exception("unhandled error on %s", request.url.path)
    return json_error(500, "internal", "internal error")


#: Starlette ``exception_handlers`` for :func:`driftrec.online.app.create_app`.
EXCEPTION_HANDLERS = {
    DriftrecError: _on_driftrec_error,
    HTTPException: _on_http_error,
    redis.exceptions.ConnectionError: _on_redis_down,
    redis.exceptions.TimeoutError: _on_redis_down,
    OSError: _on_redis_down,
    Exception: _on_unexpected,
}
