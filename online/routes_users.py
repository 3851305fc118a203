"""A user's history (GET) and forgetting a user (DELETE: a tombstone applied by the worker)."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from driftrec.events import TOMBSTONE_TYPE, ClickEvent, validate_event
from driftrec.online.catalogue import CatalogueView
from driftrec.online.http import json_response, require_api_key
from driftrec.online.ingest import EventSink
from driftrec.online.metrics import ReaderMetrics
from driftrec.online.params import check_id, fields_param, int_param, reject_unknown
from driftrec.online.store import ReaderStore
from driftrec.settings import Settings

__all__ = ["user_routes", "tombstone"]

logger = logging.getLogger(__name__)

_HISTORY_PARAMS = frozenset({"n", "fields"})


def tombstone(user: str, now: float | None = None) -> ClickEvent:
    """The ``forget_user`` event for ``user`` (validated like any event)."""
    return validate_event({
        "event_id": f"forget-{uuid.uuid4().hex}", "user_id": user, "item_id": "",
        "type": TOMBSTONE_TYPE, "timestamp": time.time() if now is None else now,
    })


def user_routes(settings: Settings, store: ReaderStore, sink: EventSink, metrics: ReaderMetrics,
                catalogue: CatalogueView | None = None) -> list[Route]:
    rate = settings.decay_rate

    async def history(request: Request) -> Response:
        q = request.query_params
        reject_unknown(q, _HISTORY_PARAMS)
        user = check_id(request.path_params["user_id"], "user_id")
        n = int_param(q, "n", settings.history_len, 1, max(settings.history_len, 1))
        names = fields_param(q)
        meta, hist, cats = await store.history(user, n)
        categories = await store.item_categories([i for i, _ in hist])
        f = meta.factor(rate)
        items = [{"item_id": i, "timestamp": t, "category": categories.get(i)} for i, t in hist]
        if names and catalogue is not None:
            # From the reader's in-memory catalogue, as for recommendations: no Redis read per item.
            # An item the catalogue does not know keeps the category its clicks carried.
            for x in items:
                extra = catalogue.fields(str(x["item_id"]), names)
                x.update({k: v for k, v in extra.items() if v is not None or k != "category"})
        return json_response({
            "user_id": user,
            "items": items,
            "categories": [{"category": c, "weight": w * f} for c, w in cats],
        })

    async def forget(request: Request) -> Response:
        require_api_key(request, settings.api_keys, settings.allow_anonymous_writes)
        user = check_id(request.path_params["user_id"], "user_id")
        event = tombstone(user)
        await sink.send_all([event])
        metrics.forgets.inc()
        logger.info("forget_user tombstone %s produced", event.event_id)
        return json_response({"user_id": user, "event_id": event.event_id, "status": "scheduled",
                              "detail": "the worker deletes the user's keys when it reaches the tombstone"},
                             status=202)

    return [
        Route("/v1/users/{user_id:path}/history", history, methods=["GET"]),
        Route("/v1/users/{user_id:path}", forget, methods=["DELETE"]),
    ]
