"""The reader: a Starlette app serving recommendations from Redis (``driftrec serve``).

:func:`create_app` wires the collaborators (store, published-model cache, trending snapshot,
event sink, metrics) and the routes of ``routes_*``; each collaborator can be passed in.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from driftrec.blas import limit_blas_threads
from driftrec.errors import InvalidRequestError
from driftrec.experiments import load_experiments_file
from driftrec.keys import Keys
from driftrec.models.blend import BlendWeights
from driftrec.models.decay import DecayPolicy
from driftrec.online.admission import Admission
from driftrec.online.ann import ann_config
from driftrec.online.catalogue import CatalogueView, newest_kept
from driftrec.online.errors import EXCEPTION_HANDLERS
from driftrec.online.experiments import ExperimentRegistry
from driftrec.online.ingest import EventSink, ItemSink, KafkaItemSink, KafkaSink
from driftrec.online.metrics import MetricsMiddleware, ReaderMetrics
from driftrec.online.model_cache import ModelCache
from driftrec.online.openapi import openapi_document
from driftrec.online.recommender import Recommender
from driftrec.online.resp import RespPool
from driftrec.online.routes_events import event_routes
from driftrec.online.routes_experiments import experiment_routes
from driftrec.online.routes_items import item_routes
from driftrec.online.routes_ops import ops_routes
from driftrec.online.routes_recs import recommendation_routes
from driftrec.online.routes_users import user_routes
from driftrec.online.served import ServedRecorder
from driftrec.online.shared_model import SharedModels
from driftrec.online.snapshot import TrendingSnapshot
from driftrec.online.store import ReaderStore
from driftrec.redis_conn import async_client
from driftrec.settings import Settings

__all__ = ["create_app", "create_store", "configured_weights", "tune_gc"]

logger = logging.getLogger(__name__)

_FIRST_SNAPSHOT_WAIT_S = 2.0
_FIRST_MODEL_WAIT_S = 10.0
#: A catalogue of 100k items is read in ~1-2 s (HSCAN, 1,000 a call).
_FIRST_CATALOGUE_WAIT_S = 10.0
_CLOSE_WAIT_S = 5.0


def tune_gc() -> None:
    """Keep the garbage collector's full collections short in a serving reader (``driftrec serve``).

    Everything alive at start-up (the imported modules: about 85,000 tracked objects) moves to
    the permanent generation, so a full collection no longer walks it. Measured in-process on
    the reader benchmark's data, 5,500 sequential recommendations: full collections 37-46 ms ->
    3-4 ms (about one per 2,700 requests), the longest request 70-96 -> 36-64 ms; p50, p99 and
    CPU per request unchanged within the noise. A 40 ms stall every ~1.4 s at 2,000 req/s would
    alone hold ~3 % of answers past 5 ms. The young-generation threshold stays at 700: raising
    it to 10,000 traded many 0.7 ms collections for 7-10 ms ones. Nothing leaks: frozen objects
    are still freed when their last reference goes; only reference cycles among them would
    stay, and start-up leaves none that die.
    """
    gc.collect()
    gc.freeze()


def create_store(settings: Settings) -> ReaderStore:
    """A store on ``settings.redis``: a text client for reads, a binary one for model blobs.

    Replies are decoded by hiredis; ``surrogateescape`` lets the float32 bytes of a user vector
    travel through the text client and come back exact. RESP2: redis-py 8 converts RESP3 score
    replies back to the legacy shape by formatting each float to text and parsing it again. The short socket timeout is what turns
    a hung Redis into a degraded answer rather than a hung request. A ``redis+cluster://`` URL
    gives cluster clients (``driftrec.redis_conn``); every read of one request is then routed
    per key by the cluster pipeline.
    """
    timeout = settings.reader_redis_timeout_s
    client = async_client(
        settings.redis, decode_responses=True, encoding_errors="surrogateescape", protocol=2,
        socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=256)
    # Model blobs are megabytes: a longer timeout, and bytes as they are.
    blob = async_client(
        settings.redis, decode_responses=False, protocol=2, socket_timeout=max(timeout, 10.0),
        socket_connect_timeout=timeout, max_connections=8)
    return ReaderStore(client, Keys(settings.key_prefix), blob, RespPool.from_url(settings.redis, timeout))


def configured_weights(settings: Settings) -> BlendWeights:
    """The blend defaults with ``reader_blend_weights`` applied (a bad entry stops start-up)."""
    try:
        return BlendWeights().with_overrides(settings.reader_blend_weights)
    except ValueError as exc:
        raise InvalidRequestError(f"reader_blend_weights: {exc}") from None


def create_app(settings: Settings, store: ReaderStore | None = None, *, sink: EventSink | None = None,
               item_sink: ItemSink | None = None, refresh_snapshot: bool = True) -> Starlette:
    """Build the reader.

    Parameters
    ----------
    settings : Settings
        The process settings.
    store : ReaderStore, optional
        Defaults to :func:`create_store` on ``settings.redis``.
    sink : EventSink, optional
        Where POSTed events and tombstones go; defaults to the clicks topic on Kafka.
    item_sink : ItemSink, optional
        Where catalogue writes go; defaults to the items topic on Kafka.
    refresh_snapshot : bool
        Run the periodic snapshot and catalogue refreshes (tests turn them off and call
        ``refresh`` themselves).
    """
    limit_blas_threads(settings.blas_threads)
    store = store if store is not None else create_store(settings)
    sink = sink if sink is not None else KafkaSink(settings)
    item_sink = item_sink if item_sink is not None else KafkaItemSink(settings)
    policy = DecayPolicy(settings.half_life_s)
    metrics = ReaderMetrics()
    # Several reader processes on one host build each model version once and map it.
    shared = SharedModels(Path(settings.reader_model_dir)) if settings.reader_model_dir else None
    models = ModelCache(store.model_parts, default_reg=settings.fold_in_regularization,
                        pool_size=settings.reader_similar_users_pool, scan_items=settings.reader_scan_items,
                        ann=ann_config(settings), shared=shared)
    snapshot = TrendingSnapshot(store, policy, n_items=settings.reader_snapshot_items,
                                per_category=min(settings.trending_k, 500),
                                interval_s=settings.reader_snapshot_interval_s)
    # What the catalogue hides, in memory, polled from the worker's change feed (online/catalogue.py).
    catalogue = CatalogueView(store.client, store.keys, interval_s=settings.reader_catalogue_poll_s,
                              newest_kept=newest_kept(settings))
    rec = Recommender(settings, store, models, snapshot, configured_weights(settings), catalogue)
    recorder = ServedRecorder(store.execute, store.keys, metrics.count_served)
    experiments = ExperimentRegistry(
        store, settings.key_prefix, rec, interval_s=settings.experiments_refresh_s,
        file_experiments=load_experiments_file(settings.experiments_file) if settings.experiments_file else (),
        model_cache=lambda: ModelCache(store.model_parts, default_reg=settings.fold_in_regularization,
                                       pool_size=settings.reader_similar_users_pool,
                                       scan_items=settings.reader_scan_items, ann=ann_config(settings)))
    metrics.watch(lambda: snapshot.age_s, lambda: models.version, lambda: models.loads)
    metrics.watch_caches({"neighbours": rec.nbr_rows, "similar_users": rec.user_rows,
                          "session_index": rec.session_rows, "session_clicks": rec.click_rows})
    metrics.watch_catalogue(lambda: len(catalogue.items), lambda: len(catalogue.hidden), lambda: catalogue.age_s)
    # Admission of ranking requests: the in-flight bound, the loop's lag (sampled by a task of
    # the lifespan) and the deadline (online/admission.py).
    gate = Admission(settings.reader_max_in_flight, settings.reader_deadline_s, settings.reader_max_loop_lag_ms / 1000)
    openapi = openapi_document(api_keys=bool(settings.api_keys), history_len=settings.history_len)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = exp_task = cat_task = None
        # With several reader processes, each keeps its gauges current in the shared folder.
        gauges = asyncio.get_running_loop().create_task(metrics.run()) if metrics.multiprocess else None
        lag = asyncio.get_running_loop().create_task(gate.watch_lag()) if gate.lag_limit_s else None
        recorder.start()
        await _first_model(store, models)
        if refresh_snapshot:
            # A first snapshot before serving, if Redis answers soon; never block start-up on it.
            try:
                await asyncio.wait_for(snapshot.refresh(), _FIRST_SNAPSHOT_WAIT_S)
            except Exception as exc:
                logger.warning("no trending snapshot at start-up (%s); degraded answers are empty until one", exc)
            task = asyncio.get_running_loop().create_task(snapshot.run())
            try:  # the catalogue before the first answer, so a restarted reader hides at once
                await asyncio.wait_for(catalogue.refresh(), _FIRST_CATALOGUE_WAIT_S)
            except Exception as exc:
                logger.warning("catalogue not read at start-up (%s: %s); retrying in the background",
                               type(exc).__name__, exc)
            cat_task = asyncio.get_running_loop().create_task(catalogue.run())
            try:  # experiments defined through the admin endpoint run from the first answer on
                await asyncio.wait_for(experiments.refresh(), _FIRST_SNAPSHOT_WAIT_S)
            except Exception as exc:
                logger.warning("experiments not read at start-up (%s); retrying in the background", exc)
            exp_task = asyncio.get_running_loop().create_task(experiments.run())
        try:
            yield
        finally:
            if task is not None:
                await snapshot.stop(task)
            if cat_task is not None:
                await catalogue.stop(cat_task)
            if exp_task is not None:
                experiments.stop()
                exp_task.cancel()
            await recorder.stop()
            if lag is not None:
                lag.cancel()
            if gauges is not None:
                gauges.cancel()
                metrics.process_exited()
            # A reader asked to stop must stop: closing a client whose peer went away can wait
            # on a socket that never closes.
            for name, close in (("event sink", sink.close), ("item sink", item_sink.close),
                                ("Redis clients", store.aclose)):
                try:
                    await asyncio.wait_for(close(), _CLOSE_WAIT_S)
                except Exception as exc:
                    logger.warning("closing the %s at shutdown failed (%s: %s); leaving it", name,
                                   type(exc).__name__, exc)

    routes: list[Route] = [
        *recommendation_routes(rec, metrics, recorder, admission=gate, experiments=experiments),
        *experiment_routes(settings, experiments),
        *user_routes(settings, store, sink, metrics, catalogue),
        *event_routes(settings, sink, metrics),
        *item_routes(settings, item_sink, catalogue),
        *ops_routes(store, models, snapshot, metrics, openapi),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(MetricsMiddleware, metrics=metrics)],
        lifespan=lifespan,
    )
    # An API, not a site: a trailing slash is a 404 JSON error, not a body-less redirect.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.store = store
    app.state.models = models
    app.state.snapshot = snapshot
    app.state.recommender = rec
    app.state.catalogue = catalogue
    app.state.item_sink = item_sink
    app.state.metrics = metrics
    app.state.sink = sink
    app.state.recorder = recorder
    app.state.experiments = experiments
    app.state.admission = gate
    return app


async def _first_model(store: ReaderStore, models: ModelCache) -> None:
    """Load the live model before serving, if Redis names one soon (never blocks start-up long).

    Without it the first answers of a fresh reader come without the model while it loads in
    the background; a load that fails or takes too long is left to the per-request path.
    """
    try:
        version = await asyncio.wait_for(store.model_version(), _FIRST_SNAPSHOT_WAIT_S)
        models.observe(version)
        await asyncio.wait_for(asyncio.shield(models.wait()), _FIRST_MODEL_WAIT_S)
    except Exception as exc:
        logger.warning("no model loaded at start-up (%s: %s); loading on the first requests",
                       type(exc).__name__, exc)
