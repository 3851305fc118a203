"""/v1/experiments: list, read, define (PUT) and delete experiments; writes need an API key."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from driftrec.errors import InvalidRequestError
from driftrec.experiments import (
    NAME_PATTERN,
    Experiment,
    ExperimentConflict,
    InvalidExperimentError,
    UnknownExperiment,
    check_no_overlap,
    experiment_keys,
    parse_experiment,
)
from driftrec.online.experiments import ExperimentRegistry
from driftrec.online.http import json_response, read_body, require_api_key
from driftrec.online.params import reject_unknown
from driftrec.settings import Settings

__all__ = ["experiment_routes"]

logger = logging.getLogger(__name__)

_NO_PARAMS: frozenset[str] = frozenset()
_NAME_RE = re.compile(NAME_PATTERN)


def _view(registry: ExperimentRegistry, exp: Experiment) -> dict[str, Any]:
    return {**exp.model_dump(mode="json"), "status": exp.status(registry.clock()), "defined_in": registry.source(exp.name)}


def experiment_routes(settings: Settings, registry: ExperimentRegistry) -> list[Route]:
    store = registry.store

    def name_of(request: Request) -> str:
        # The definitions' pattern, checked before any key is built from the name.
        name = str(request.path_params["name"])
        if not _NAME_RE.match(name):
            raise InvalidRequestError("name: must be 1-64 characters of letters, digits and ._-")
        return name

    async def list_all(request: Request) -> Response:
        reject_unknown(request.query_params, _NO_PARAMS)
        await registry.refresh()  # an operator's read sees what was just defined elsewhere
        defs = sorted(registry.definitions().values(), key=lambda e: (e.start_ts, e.name))
        return json_response({"experiments": [_view(registry, e) for e in defs]})

    async def get_one(request: Request) -> Response:
        reject_unknown(request.query_params, _NO_PARAMS)
        name = name_of(request)
        await registry.refresh()
        exp = registry.definitions().get(name)
        if exp is None:
            raise UnknownExperiment(f"no experiment named {name!r}")
        return json_response(_view(registry, exp))

    async def put_one(request: Request) -> Response:
        require_api_key(request, settings.api_keys, settings.allow_anonymous_writes)
        reject_unknown(request.query_params, _NO_PARAMS)
        name = name_of(request)
        body = await read_body(request, settings.max_request_bytes)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"body is not valid JSON: {exc}") from None
        exp = parse_experiment(data, name)
        if name in registry.file:
            raise ExperimentConflict(f"{name} is defined in {settings.experiments_file}; change it there")
        await registry.refresh()
        check_no_overlap(exp, registry.definitions().values())
        versions = sorted(exp.model_versions)
        if versions:
            found = await store.execute([["EXISTS", store.keys.model_blob(v, "item_ids")] for v in versions])
            missing = [v for v, ok in zip(versions, found, strict=True) if not int(ok)]
            if missing:
                raise InvalidExperimentError(f"model_version: no published model {', '.join(missing)}")
        old = registry.stored.get(name)
        cmds: list[list[Any]] = [["HSET", registry.key, name, exp.to_json()]]
        if old is not None and (old.method, old.variants) != (exp.method, exp.variants):
            # Other arms: the old counts would be credited to the new ones.
            cmds.append(["DEL", *experiment_keys(registry.prefix, old, settings.event_types)])
        await store.execute(cmds)
        await registry.refresh()
        logger.info("experiment %s %s", name, "replaced" if old else "defined")
        return json_response(_view(registry, exp), status=200 if old else 201)

    async def delete_one(request: Request) -> Response:
        require_api_key(request, settings.api_keys, settings.allow_anonymous_writes)
        reject_unknown(request.query_params, _NO_PARAMS)
        name = name_of(request)
        if name in registry.file:
            raise ExperimentConflict(f"{name} is defined in {settings.experiments_file}; remove it there")
        await registry.refresh()
        old = registry.stored.get(name)
        if old is None:
            raise UnknownExperiment(f"no experiment named {name!r}")
        await store.execute([["HDEL", registry.key, name],
                             ["DEL", *experiment_keys(registry.prefix, old, settings.event_types)]])
        await registry.refresh()
        logger.info("experiment %s deleted", name)
        return json_response({"name": name, "status": "deleted"})

    handlers = {"GET": get_one, "PUT": put_one, "DELETE": delete_one}

    async def one(request: Request) -> Response:
        # One route per path, so each path lists all its methods (OpenAPI, 405 answers).
        return await handlers[request.method](request)

    return [
        Route("/v1/experiments", list_all, methods=["GET"]),
        Route("/v1/experiments/{name}", one, methods=list(handlers)),
    ]
