"""The catalogue over HTTP: PUT / DELETE one item, POST many, GET the reader's view of one.

Writes go to the items topic (:class:`~driftrec.online.ingest.KafkaItemSink`), the same log the
shop's own producers and ``driftrec items import`` write, and the worker applies them to Redis;
the reader hides an item once its poll of the change feed sees it (well under a second). Why not
write Redis here: the compacted topic is the catalogue's one history, in one order per item
(Kafka keeps a key's records in order), from which the worker can rebuild Redis; a change written
to Redis beside it would be lost by such a rebuild and could race a change sent through Kafka.
The price is that a write is accepted (202) before it is applied.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from driftrec.catalogue import FIELDS, ItemEvent, validate_item_event
from driftrec.errors import InvalidEventError, InvalidRequestError, NotFoundError
from driftrec.online.catalogue import CatalogueView
from driftrec.online.errors import PayloadTooLarge
from driftrec.online.http import json_response, read_body, require_api_key
from driftrec.online.ingest import ItemSink
from driftrec.online.params import check_id
from driftrec.settings import Settings

__all__ = ["item_routes", "MAX_ITEMS", "split_items"]

logger = logging.getLogger(__name__)

#: Most items one bulk POST may carry.
MAX_ITEMS = 1000


def split_items(data: Any) -> tuple[list[ItemEvent], list[dict[str, object]]]:
    """Validate one item, a list of items or ``{"items": [...]}``; each may be ``{"op": "delete", ...}``.

    Returns the valid events in order and, for the others, ``{"index", "error", "field"}``.
    """
    if isinstance(data, dict) and set(data) == {"items"}:
        data = data["items"]
    batch = data if isinstance(data, list) else [data]
    if not batch:
        raise InvalidRequestError("no items in the body")
    if len(batch) > MAX_ITEMS:
        raise PayloadTooLarge(f"{len(batch)} items in one request; the limit is {MAX_ITEMS}")
    good: list[ItemEvent] = []
    errors: list[dict[str, object]] = []
    for i, raw in enumerate(batch):
        try:
            good.append(validate_item_event(raw))
        except InvalidEventError as exc:
            errors.append({"index": i, "error": exc.reason, "field": exc.field})
    return good, errors


async def _json_body(request: Request, limit: int) -> Any:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise InvalidRequestError("Content-Type must be application/json")
    body = await read_body(request, limit)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"body is not valid JSON: {exc}") from None


def item_routes(settings: Settings, sink: ItemSink, catalogue: CatalogueView) -> list[Route]:
    def authorised(request: Request) -> None:
        require_api_key(request, settings.api_keys, settings.allow_anonymous_writes)

    async def put_item(request: Request) -> Response:
        authorised(request)
        item = check_id(request.path_params["item_id"], "item_id")
        data = await _json_body(request, settings.max_request_bytes)
        if isinstance(data, dict) and data.get("op", "upsert") != "upsert":
            raise InvalidEventError("op: PUT upserts; delete with DELETE /v1/items/{id}", field="op")
        event = validate_item_event(data, item)
        await sink.send_all([event])
        return json_response({"item_id": item, "op": "upsert", "status": "scheduled"}, status=202)

    async def delete_item(request: Request) -> Response:
        authorised(request)
        item = check_id(request.path_params["item_id"], "item_id")
        await sink.send_all([validate_item_event({"op": "delete", "item_id": item})])
        return json_response({"item_id": item, "op": "delete", "status": "scheduled"}, status=202)

    async def post_items(request: Request) -> Response:
        authorised(request)
        good, errors = split_items(await _json_body(request, settings.max_request_bytes))
        if good:
            await sink.send_all(good)
        # 202 once anything was accepted; a batch with nothing valid is the client's error.
        return json_response({"accepted": len(good), "rejected": len(errors), "errors": errors},
                             status=202 if good else 422)

    async def get_item(request: Request) -> Response:
        item = check_id(request.path_params["item_id"], "item_id")
        info = catalogue.get(item)
        if info is None:
            raise NotFoundError(f"item {item!r} is not in the catalogue (as of this reader's last poll)")
        return json_response({"item_id": item, "deleted": info.deleted, "hidden": info.hidden,
                              **catalogue.fields(item, FIELDS)})

    by_method = {"PUT": put_item, "DELETE": delete_item, "GET": get_item, "HEAD": get_item}

    async def one_item(request: Request) -> Response:
        return await by_method[request.method](request)

    return [
        Route("/v1/items", post_items, methods=["POST"]),
        Route("/v1/items/{item_id:path}", one_item, methods=["GET", "PUT", "DELETE"]),
    ]
