"""HTTP helpers shared by the routes: orjson answers, API-key checks, bounded request bodies."""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from driftrec.errors import InvalidRequestError
from driftrec.online.errors import Forbidden, PayloadTooLarge, Unauthorized

__all__ = ["json_response", "require_api_key", "read_body"]

logger = logging.getLogger(__name__)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson-encoded JSON (several times faster than the standard library's encoder)."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def require_api_key(request: Request, keys: tuple[str, ...], allow_anonymous: bool = False) -> None:
    """Accept ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` when keys are configured.

    With no key configured, writes are refused (403) unless the operator allowed anonymous
    writes explicitly (``allow_anonymous_writes``): a reader exposed by mistake must not take
    events or forget users for anyone who asks. Every configured key is compared, in constant
    time, whatever matched: the time taken says nothing about how much of a guess was right,
    nor which key it was close to.
    """
    if not keys:
        if allow_anonymous:
            return
        raise Forbidden("writes are off: this reader has no API key configured (set DRIFTREC_API_KEYS, "
                        "or DRIFTREC_ALLOW_ANONYMOUS_WRITES=true to take writes without one)")
    given = request.headers.get("x-api-key")
    if given is None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
    if not given:
        raise Unauthorized("missing API key (X-API-Key header or Authorization: Bearer)")
    candidate = given.encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(candidate, key.encode("utf-8"))
    if not ok:
        raise Unauthorized("invalid API key")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("Content-Length must be a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
