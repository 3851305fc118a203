"""GET routes that rank items: recommendations for a user, similar items, trending."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from driftrec.errors import InvalidRequestError
from driftrec.models.blend import SOURCES, BlendWeights
from driftrec.online.admission import Admission
from driftrec.online.experiments import ExperimentRegistry, Pick, Ranked
from driftrec.online.http import json_response
from driftrec.online.metrics import ReaderMetrics
from driftrec.online.params import (
    category_param,
    check_id,
    fields_param,
    id_list_param,
    int_param,
    item_filter_param,
    reject_unknown,
)
from driftrec.online.recommender import Answer, Recommender
from driftrec.online.served import ServedRecorder

__all__ = ["recommendation_routes", "STRATEGIES", "SIMILAR_STRATEGY", "parse_weights"]

logger = logging.getLogger(__name__)

#: ``strategy=`` presets: "blend" uses the configured weights, any source name uses that source
#: alone (trending still back-fills a short list).
STRATEGIES = ("blend", *SOURCES)
#: Catalogue fields (``fields=``) and business rules (tag, price range) every ranking endpoint takes.
_CATALOGUE_PARAMS = frozenset({"fields", "tag", "price_min", "price_max"})
_REC_PARAMS = frozenset({"n", "exclude", "category", "strategy", "weights", "context"}) | _CATALOGUE_PARAMS
_SIMILAR_PARAMS = frozenset({"n", "category"}) | _CATALOGUE_PARAMS
_TRENDING_PARAMS = frozenset({"n", "category", "exclude"}) | _CATALOGUE_PARAMS
MAX_N = 100
#: ``#strategy`` of a similar-items answer's record (recommendations record their ``strategy=``).
SIMILAR_STRATEGY = "similar_items"


def parse_weights(query: Mapping[str, str], base: BlendWeights) -> BlendWeights:
    """``strategy=`` and ``weights=source:w,...`` applied over the configured weights."""
    strategy = query.get("strategy", "blend")
    if strategy not in STRATEGIES:
        raise InvalidRequestError(f"strategy: must be one of {', '.join(STRATEGIES)}")
    weights = base
    if strategy != "blend":
        weights = BlendWeights(**{s: (1.0 if s == strategy else 0.0) for s in SOURCES})
    raw = query.get("weights")
    if raw is not None:
        overrides: dict[str, float] = {}
        for part in raw.split(","):
            if not part:
                continue
            name, sep, value = part.partition(":")
            if not sep or name not in SOURCES:
                raise InvalidRequestError(f"weights: entries are source:weight with a source in {', '.join(SOURCES)}")
            try:
                overrides[name] = float(value)
            except ValueError:
                raise InvalidRequestError(f"weights: {name} needs a number") from None
        try:
            weights = weights.with_overrides(overrides)
        except ValueError as exc:
            raise InvalidRequestError(f"weights: {exc}") from None
    return weights


def _body(answer: Answer, extra: dict[str, object], metrics: ReaderMetrics, endpoint: str,
          request_id: str | None = None) -> dict[str, object]:
    if answer.degraded:
        metrics.degraded.labels(endpoint).inc()
    counts: dict[str, int] = {}
    items = []
    for x in answer.items:
        counts[x.source] = counts.get(x.source, 0) + 1
        items.append({"item_id": x.item, "score": x.score, "reason": x.reason, "source": x.source})
    for source, c in counts.items():
        metrics.items_by_source.labels(source).inc(c)
    return {
        "request_id": request_id or uuid.uuid4().hex,
        "model_version": answer.model_version,
        "generated_at": time.time(),
        "degraded": answer.degraded,
        **extra,
        "items": items,
    }


#: Reasons that end with the id of the item they refer to (models/blend.py, online/recommender.py).
_ABOUT_ITEM = ("because you viewed ", "often viewed with ", "liked by the same shoppers as ")


def _add_fields(body: dict[str, object], names: tuple[str, ...], rec: Recommender) -> None:
    """``fields=``: each item's catalogue fields, from the reader's in-memory view (no Redis read).

    With ``title`` asked for, a reason naming another item names it by its title too
    ("because you viewed Toy Story (1995)"), so a list renders without looking that item up.
    """
    if not names:
        return
    view = rec.catalogue
    titled = "title" in names
    for x in body["items"]:  # type: ignore[attr-defined]
        x.update(view.fields(x["item_id"], names))
        if titled:
            reason = x["reason"]
            for prefix in _ABOUT_ITEM:
                if reason.startswith(prefix):
                    info = view.get(reason[len(prefix):])
                    if info is not None and info.title:
                        x["reason"] = prefix + info.title
                    break


def recommendation_routes(rec: Recommender, metrics: ReaderMetrics,
                          recorder: ServedRecorder | None = None,
                          admission: Admission | None = None,
                          experiments: ExperimentRegistry | None = None) -> list[Route]:
    base = rec.weights
    gate = admission or Admission(rec.settings.reader_max_in_flight, rec.settings.reader_deadline_s,
                                  rec.settings.reader_max_loop_lag_ms / 1000)

    async def admitted(endpoint: str, rank: Callable[[], Awaitable[Answer]],
                       fallback: Callable[[], Answer]) -> Answer:
        """``rank()``, unless the reader is full (shed at once) or it overruns the deadline."""
        refused = gate.admit()
        if refused is not None:
            metrics.shed.labels(endpoint, refused).inc()
            return fallback()
        try:
            async with asyncio.timeout(gate.deadline_s):
                return await rank()
        except TimeoutError:
            metrics.shed.labels(endpoint, "deadline").inc()
            return fallback()
        finally:
            gate.leave()

    def record(body: dict[str, object], strategy: str, answer: Answer) -> None:
        # Queued after the answer is built; written by the recorder's task, never on this path.
        # A degraded answer is not recorded: Redis is what is missing.
        if recorder is not None and not answer.degraded:
            recorder.record(str(body["request_id"]), strategy, answer.items)

    async def recommendations(request: Request) -> Response:
        q = request.query_params
        reject_unknown(q, _REC_PARAMS)
        user = check_id(request.path_params["user_id"], "user_id")
        n = int_param(q, "n", 10, 1, MAX_N)
        exclude = id_list_param(q, "exclude")
        context = id_list_param(q, "context", limit=20)
        category = category_param(q)
        weights = parse_weights(q, base)
        names = fields_param(q)
        rule = item_filter_param(q)
        # A caller that chose a strategy, weights or a catalogue rule is not enrolled: the
        # experiment would not be what it measures. With no experiment defined this is one
        # attribute read. (Hidden items are hidden in every variant: the Recommender does it.)
        if (experiments is not None and experiments.active and "strategy" not in q and "weights" not in q
                and not rule.active):
            pick = experiments.pick(user)
            if pick is not None:
                return await in_experiment(pick, user, n, exclude, context, category, names)
        answer = await admitted(
            "recommendations",
            lambda: rec.for_user(user, n, exclude=exclude, category=category, weights=weights, context=context,
                                 rule=rule),
            lambda: rec.degraded(n, category, {*exclude, *context}, rule))
        strategy = q.get("strategy", "blend")
        body = _body(answer, {"user_id": user, "strategy": strategy}, metrics, "recommendations")
        record(body, strategy, answer)
        _add_fields(body, names, rec)
        return json_response(body, headers={"X-Request-ID": str(body["request_id"])})

    async def in_experiment(pick: Pick, user: str, n: int, exclude: list[str], context: list[str],
                            category: str | None, names: tuple[str, ...] = ()) -> Response:
        assert experiments is not None
        request_id = uuid.uuid4().hex
        ranked: list[Ranked] = []

        async def rank() -> Answer:
            r = await experiments.rank(pick, user, n, request_id, exclude=exclude, category=category, context=context)
            ranked.append(r)
            return r.answer

        answer = await admitted("recommendations", rank, lambda: rec.degraded(n, category, {*exclude, *context}))
        if ranked and ranked[0].answer is answer:
            r = ranked[0]
            info = r.info
            if recorder is not None and not answer.degraded:
                recorder.record(request_id, r.strategy, answer.items, r.fields, r.commands)
        else:  # shed: the snapshot answered, the variant's ranking never ran
            info = {"name": pick.live.exp.name, "variant": None, "method": pick.live.exp.method,
                    "fallback": "degraded: answered from the trending snapshot"}
        body = _body(answer, {"user_id": user, "strategy": "experiment", "experiment": info}, metrics,
                     "recommendations", request_id)
        _add_fields(body, names, rec)
        return json_response(body, headers={"X-Request-ID": request_id})

    async def similar(request: Request) -> Response:
        q = request.query_params
        reject_unknown(q, _SIMILAR_PARAMS)
        item = check_id(request.path_params["item_id"], "item_id")
        n = int_param(q, "n", 10, 1, MAX_N)
        category = category_param(q)
        names = fields_param(q)
        rule = item_filter_param(q)
        answer = await admitted("similar", lambda: rec.similar(item, n, category, rule),
                                lambda: rec.degraded(n, category, {item}, rule))
        body = _body(answer, {"item_id": item}, metrics, "similar")
        record(body, SIMILAR_STRATEGY, answer)
        _add_fields(body, names, rec)
        return json_response(body, headers={"X-Request-ID": str(body["request_id"])})

    async def trending(request: Request) -> Response:
        q = request.query_params
        reject_unknown(q, _TRENDING_PARAMS)
        n = int_param(q, "n", 10, 1, MAX_N)
        category = category_param(q)
        names = fields_param(q)
        answer = await rec.trending(n, category, id_list_param(q, "exclude"), item_filter_param(q))
        body = _body(answer, {"category": category}, metrics, "trending")
        _add_fields(body, names, rec)
        return json_response(body, headers={"X-Request-ID": str(body["request_id"])})

    return [
        Route("/v1/recommendations/{user_id:path}", recommendations, methods=["GET"]),
        Route("/v1/items/{item_id:path}/similar", similar, methods=["GET"]),
        Route("/v1/trending", trending, methods=["GET"]),
    ]
