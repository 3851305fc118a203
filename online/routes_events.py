"""POST /v1/events: validated clicks for sites that cannot publish to Kafka themselves."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from driftrec.errors import InvalidEventError, InvalidRequestError
from driftrec.events import TOMBSTONE_TYPE, ClickEvent, validate_event
from driftrec.online.errors import PayloadTooLarge
from driftrec.online.http import json_response, read_body, require_api_key
from driftrec.online.ingest import EventSink
from driftrec.online.metrics import ReaderMetrics
from driftrec.settings import Settings

__all__ = ["event_routes", "MAX_EVENTS", "split_batch"]

logger = logging.getLogger(__name__)

#: Largest batch one POST may carry.
MAX_EVENTS = 500


def split_batch(data: Any, allowed: frozenset[str]) -> tuple[list[ClickEvent], list[dict[str, object]]]:
    """Validate one event, a list of events or ``{"events": [...]}``.

    Returns the valid events in order and, for the others, ``{"index", "error", "field"}``.
    """
    if isinstance(data, dict) and set(data) == {"events"}:
        data = data["events"]
    batch = data if isinstance(data, list) else [data]
    if not batch:
        raise InvalidRequestError("no events in the body")
    if len(batch) > MAX_EVENTS:
        raise PayloadTooLarge(f"{len(batch)} events in one request; the limit is {MAX_EVENTS}")
    good: list[ClickEvent] = []
    errors: list[dict[str, object]] = []
    for i, raw in enumerate(batch):
        try:
            if isinstance(raw, dict) and raw.get("type") == TOMBSTONE_TYPE:
                # Forgetting goes through DELETE /v1/users/{id}, which checks who asks.
                raise InvalidEventError("type: forget_user is produced by DELETE /v1/users/{id} only",
                                        field="type")
            good.append(validate_event(raw, allowed))
        except InvalidEventError as exc:
            errors.append({"index": i, "error": exc.reason, "field": exc.field})
    return good, errors


def event_routes(settings: Settings, sink: EventSink, metrics: ReaderMetrics) -> list[Route]:
    allowed = settings.event_types

    async def post_events(request: Request) -> Response:
        require_api_key(request, settings.api_keys, settings.allow_anonymous_writes)
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", ""):
            raise InvalidRequestError("Content-Type must be application/json")
        body = await read_body(request, settings.max_request_bytes)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"body is not valid JSON: {exc}") from None
        good, errors = split_batch(data, allowed)
        if good:
            await sink.send_all(good)
        metrics.events.labels("accepted").inc(len(good))
        metrics.events.labels("rejected").inc(len(errors))
        # 202 once anything was accepted; a batch with nothing valid is the client's error.
        return json_response({"accepted": len(good), "rejected": len(errors), "errors": errors},
                             status=202 if good else 422)

    return [Route("/v1/events", post_events, methods=["POST"])]
