"""The reader's OpenAPI 3.1 document, written out by hand (the routes are plain Starlette)."""

from __future__ import annotations

import logging
from typing import Any

from driftrec.catalogue import FIELDS
from driftrec.experiments import NAME_PATTERN
from driftrec.models.blend import SOURCES
from driftrec.online.params import ID_PATTERN

__all__ = ["openapi_document"]

logger = logging.getLogger(__name__)

_ID = {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 128}
_CATEGORY = {"type": "string", "minLength": 1, "maxLength": 64}


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _p(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID, "description": description}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_ERRORS = {
    "400": _json("Error", "Bad parameter or id."),
    "404": _json("Error", "No such route."),
    "405": _json("Error", "Method not allowed."),
}
_N = _q("n", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}, "How many items.")
_EXP = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME_PATTERN},
        "description": "Experiment name."}
_EXCLUDE = _q("exclude", {"type": "string"}, "Comma-separated item ids never to return (at most 100).")
#: Catalogue fields and business rules every ranking endpoint takes (docs: driftrec/catalogue.py).
_CATALOGUE_PARAMS = [
    _q("fields", {"type": "string", "examples": ["title,price,image_url"]},
       f"Comma-separated catalogue fields each item carries ({', '.join(FIELDS)}); null where unknown. "
       "With title, a reason that names another item names it by its title."),
    _q("tag", _CATEGORY, "Only items whose catalogue record carries this tag."),
    _q("price_min", {"type": "number", "minimum": 0}, "Only items whose catalogue price is at least this."),
    _q("price_max", {"type": "number", "minimum": 0}, "Only items whose catalogue price is at most this."),
]


def openapi_document(*, api_keys: bool, history_len: int) -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    security: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}] if api_keys else []
    write_errors = {**_ERRORS, "401": _json("Error", "Missing or wrong API key."),
                    "503": _json("Error", "The event log (Kafka) is unavailable.")}
    ranked = {"200": _json("Ranked", "Ranked items."), **_ERRORS}
    return {
        "openapi": "3.1.0",
        "info": {"title": "driftrec reader", "version": "1",
                 "description": "Live recommendations from the streaming state in Redis."},
        "paths": {
            "/v1/recommendations/{user_id}": {"get": {
                "summary": "Blended recommendations for a user (seen items removed)",
                "parameters": [
                    _p("user_id", "Shopper id."), _N, _EXCLUDE,
                    _q("category", _CATEGORY, "Only items of this category."),
                    _q("strategy", {"type": "string", "enum": ["blend", *SOURCES], "default": "blend"},
                       "blend, or one source alone."),
                    _q("weights", {"type": "string", "examples": ["item_item:1,trending:0.1"]},
                       "Per-request blend weights, source:weight, comma-separated."),
                    _q("context", {"type": "string"}, "Comma-separated items of the current session "
                       "not yet in the stream (at most 20)."),
                    *_CATALOGUE_PARAMS,
                ],
                "responses": ranked,
            }},
            "/v1/items/{item_id}/similar": {"get": {
                "summary": "Items similar to one item (trending in its category when unknown)",
                "parameters": [_p("item_id", "Item id."), _N,
                               _q("category", _CATEGORY, "Category to fall back to for an unknown item."),
                               *_CATALOGUE_PARAMS],
                "responses": ranked,
            }},
            "/v1/trending": {"get": {
                "summary": "Trending items, overall or in a category",
                "parameters": [_N, _EXCLUDE, _q("category", _CATEGORY, "Category."), *_CATALOGUE_PARAMS],
                "responses": ranked,
            }},
            "/v1/users/{user_id}/history": {"get": {
                "summary": "A user's recent items and category tastes",
                "parameters": [_p("user_id", "Shopper id."),
                               _q("n", {"type": "integer", "minimum": 1, "maximum": history_len},
                                  "How many recent items."), _CATALOGUE_PARAMS[0]],
                "responses": {"200": _json("History", "Recent history."), **_ERRORS,
                              "503": _json("Error", "Redis unavailable.")},
            }},
            "/v1/users/{user_id}": {"delete": {
                "summary": "Forget a user: a tombstone the worker applies in stream order",
                "parameters": [_p("user_id", "Shopper id.")],
                "security": security,
                "responses": {"202": _json("Forget", "Tombstone produced."), **write_errors},
            }},
            "/v1/events": {"post": {
                "summary": "Ingest one event or a batch of up to 500",
                "security": security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/ClickEvent"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/ClickEvent"}, "maxItems": 500},
                    {"type": "object", "required": ["events"], "properties": {"events": {
                        "type": "array", "items": {"$ref": "#/components/schemas/ClickEvent"}, "maxItems": 500}}},
                ]}}}},
                "responses": {"202": _json("Ingested", "Valid events produced to the clicks topic."),
                              "413": _json("Error", "Body or batch too large."),
                              "422": _json("Ingested", "No event was valid."), **write_errors},
            }},
            "/v1/items": {"post": {
                "summary": "Upsert or delete up to 1,000 catalogue items (each may be {op: delete, item_id})",
                "security": security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/CatalogueItem"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/CatalogueItem"}, "maxItems": 1000},
                    {"type": "object", "required": ["items"], "properties": {"items": {
                        "type": "array", "items": {"$ref": "#/components/schemas/CatalogueItem"}, "maxItems": 1000}}},
                ]}}}},
                "responses": {"202": _json("Ingested", "Valid items produced to the items topic."),
                              "413": _json("Error", "Body or batch too large."),
                              "422": _json("Ingested", "No item was valid."), **write_errors},
            }},
            "/v1/items/{item_id}": {
                "get": {"summary": "This reader's catalogue record of an item (as of its last poll)",
                        "parameters": [_p("item_id", "Item id.")],
                        "responses": {"200": _json("CatalogueItem", "The record, with deleted and hidden."),
                                      **_ERRORS, "404": _json("Error", "Not in the catalogue.")}},
                "put": {"summary": "Upsert an item: its whole record (replaces the previous one)",
                        "parameters": [_p("item_id", "Item id.")], "security": security,
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/CatalogueItem"}}}},
                        "responses": {"202": _json("Status", "Produced to the items topic; the worker applies it."),
                                      "422": _json("Error", "Invalid item (the field is named)."), **write_errors}},
                "delete": {"summary": "Delete an item: never recommended again unless upserted",
                           "parameters": [_p("item_id", "Item id.")], "security": security,
                           "responses": {"202": _json("Status", "Delete produced to the items topic."),
                                         **write_errors}},
            },
            "/v1/experiments": {"get": {
                "summary": "Every experiment this reader knows (file and admin-defined), with its status",
                "responses": {"200": _json("Experiments", "Definitions."), **_ERRORS}}},
            "/v1/experiments/{name}": {
                "get": {"summary": "One experiment's definition", "parameters": [_EXP],
                        "responses": {"200": _json("Experiment", "Definition."), **_ERRORS,
                                      "404": _json("Error", "No such experiment.")}},
                "put": {"summary": "Define (or replace) an experiment: variants, shares, start and stop",
                        "parameters": [_EXP], "security": security,
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Experiment"}}}},
                        "responses": {"200": _json("Experiment", "Replaced."), "201": _json("Experiment", "Defined."),
                                      "409": _json("Error", "Overlaps another experiment, or defined in the file."),
                                      "422": _json("Error", "Shares, strategy, weights or model version invalid."),
                                      **write_errors}},
                "delete": {"summary": "Delete an experiment and its counts", "parameters": [_EXP],
                           "security": security,
                           "responses": {"200": _json("Status", "Deleted."), **write_errors,
                                         "404": _json("Error", "No such experiment."),
                                         "409": _json("Error", "Defined in the file.")}},
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json("Status", "Alive.")}}},
            "/readyz": {"get": {"summary": "Readiness (Redis reachable)", "responses": {
                "200": _json("Status", "Ready."), "503": _json("Status", "Redis unreachable.")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Text exposition format.", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3.1.", "content": {"application/json": {}}}}}},
        },
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error", "detail"], "properties": {
                    "error": {"type": "string"}, "detail": {"type": "string"}}},
                "Item": {"type": "object", "required": ["item_id", "score", "reason", "source"], "properties": {
                    "item_id": {"type": "string"}, "score": {"type": "number"},
                    "reason": {"type": "string", "examples": ["because you viewed sku-1", "popular in shoes"]},
                    "source": {"type": "string", "enum": list(SOURCES)}}},
                "Ranked": {"type": "object", "required": ["request_id", "model_version", "generated_at",
                                                          "degraded", "items"], "properties": {
                    "request_id": {"type": "string", "description": "Send it back as the click's request_id."},
                    "model_version": {"type": ["string", "null"]},
                    "generated_at": {"type": "number", "description": "Unix seconds."},
                    "degraded": {"type": "boolean", "description": "True: Redis was unreachable; trending "
                                 "from the reader's in-memory snapshot."},
                    "experiment": {"type": "object", "description": "Only in an answer served in an experiment "
                                   "(strategy \"experiment\"): its name, the shopper's variant (\"interleaved\" "
                                   "for team-draft answers), the method, and fallback when the variant could not "
                                   "be served as defined.", "properties": {
                        "name": {"type": "string"}, "variant": {"type": ["string", "null"]},
                        "method": {"type": "string", "enum": ["ab", "interleave"]}, "fallback": {"type": "string"}}},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}},
                "History": {"type": "object", "properties": {
                    "user_id": {"type": "string"},
                    "items": {"type": "array", "items": {"type": "object", "properties": {
                        "item_id": {"type": "string"}, "timestamp": {"type": "number"},
                        "category": {"type": ["string", "null"]}}}},
                    "categories": {"type": "array", "items": {"type": "object", "properties": {
                        "category": {"type": "string"}, "weight": {"type": "number"}}}}}},
                "Forget": {"type": "object", "properties": {
                    "user_id": {"type": "string"}, "event_id": {"type": "string"}, "status": {"type": "string"}}},
                "Ingested": {"type": "object", "required": ["accepted", "rejected", "errors"], "properties": {
                    "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "error": {"type": "string"},
                        "field": {"type": ["string", "null"]}}}}}},
                "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
                "Experiment": {"type": "object", "required": ["name", "variants"], "properties": {
                    "name": {"type": "string", "pattern": NAME_PATTERN},
                    "method": {"type": "string", "enum": ["ab", "interleave"], "default": "ab"},
                    "variants": {"type": "array", "minItems": 2, "items": {"type": "object", "required": ["name"],
                                 "properties": {
                        "name": {"type": "string", "pattern": NAME_PATTERN},
                        "share": {"type": "number", "description": "A/B shares add up to 1."},
                        "strategy": {"type": "string", "enum": ["blend", *SOURCES]},
                        "weights": {"type": "object", "additionalProperties": {"type": "number"}},
                        "n": {"type": "integer", "minimum": 1, "maximum": 100},
                        "model_version": {"type": "string"}}}},
                    "start": {"type": ["string", "null"], "format": "date-time"},
                    "stop": {"type": ["string", "null"], "format": "date-time"},
                    "status": {"type": "string", "enum": ["scheduled", "running", "stopped"]}}},
                "Experiments": {"type": "object", "properties": {"experiments": {
                    "type": "array", "items": {"$ref": "#/components/schemas/Experiment"}}}},
                "CatalogueItem": {"type": "object", "required": ["item_id"], "additionalProperties": False,
                                  "properties": {
                    "op": {"type": "string", "enum": ["upsert", "delete"], "default": "upsert"},
                    "item_id": _ID, "title": {"type": "string", "minLength": 1, "maxLength": 500},
                    "category": _CATEGORY,
                    "tags": {"type": "array", "maxItems": 32, "items": {"type": "string", "maxLength": 64}},
                    "price": {"type": "number", "minimum": 0}, "available": {"type": "boolean", "default": True},
                    "image_url": {"type": "string", "format": "uri", "maxLength": 2048},
                    "properties": {"type": "object", "maxProperties": 32},
                    "updated_at": {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]},
                    "added_at": {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
                                 "description": "When the item entered the catalogue (the new-item source's age)."}}},
                "ClickEvent": {"type": "object", "required": ["event_id", "user_id", "item_id", "type", "timestamp"],
                               "additionalProperties": False, "properties": {
                    "event_id": _ID, "user_id": _ID, "item_id": _ID,
                    "type": {"type": "string", "examples": ["view", "add_to_cart", "purchase"]},
                    "timestamp": {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]},
                    "session_id": _ID, "request_id": _ID, "category": _CATEGORY,
                    "properties": {"type": "object", "maxProperties": 32}}},
            },
        },
    }
