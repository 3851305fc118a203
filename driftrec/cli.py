"""The ``driftrec`` command line: one thin subcommand per process role."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from driftrec.settings import Settings, load_settings

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help="driftrec: streaming real-time recommendations.")
stack_app = typer.Typer(no_args_is_help=True, help="The embedded local stack (Kafka KRaft + Redis), no Docker.")
app.add_typer(stack_app, name="stack")
items_app = typer.Typer(no_args_is_help=True, help="The item catalogue (docs/redis-keys.md, Catalogue).")
app.add_typer(items_app, name="items")


def _settings() -> Settings:
    return load_settings()


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka and Redis under .driftrec/ (fetches Kafka's jars with Maven once)."""
    _logging()
    from driftrec.runtime import ensure_services
    from driftrec.stack import LocalStack

    s = _settings()
    if not s.local_stack:
        typer.echo("KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set: using them, starting nothing.")
    ensure_services(s)
    for st in LocalStack(s).status():
        typer.echo(st.line())


@stack_app.command("down")
def stack_down() -> None:
    """Stop the local Kafka and Redis."""
    from driftrec.stack import LocalStack

    LocalStack(_settings()).down()
    typer.echo("stopped")


@stack_app.command("status")
def stack_status() -> None:
    """Show whether the local services run and answer."""
    from driftrec.stack import LocalStack

    statuses = LocalStack(_settings()).status()
    for st in statuses:
        typer.echo(st.line())
    raise typer.Exit(0 if all(st.ready for st in statuses) else 1)


@app.command()
def worker(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the Faust worker: clicks topic -> Redis."""
    from driftrec.runtime import ensure_services
    from driftrec.streams.agents import build_worker
    from driftrec.streams.app import create_app

    # Log the wait for Kafka; Faust sets up its own logging later, so our handler goes again.
    before = list(logging.getLogger().handlers)
    _logging(verbose)
    try:
        s = ensure_services(_settings(), wait=True)  # Kafka down: wait for it, do not exit
    finally:
        for handler in set(logging.getLogger().handlers) - set(before):
            logging.getLogger().removeHandler(handler)
    from driftrec.errors import StoreFormatError
    from driftrec.keys import Keys
    from driftrec.redis_conn import sync_client
    from driftrec.streams.redis_state import check_score_format

    try:
        check_score_format(sync_client(s.redis, socket_timeout=10, socket_connect_timeout=5), Keys(s.key_prefix))
    except StoreFormatError as exc:
        typer.echo(f"driftrec worker: {exc}", err=True)
        raise typer.Exit(2) from None
    faust_app = create_app(s)
    build_worker(faust_app, s, metrics_port=s.worker_metrics_port)
    from faust.worker import Worker

    Worker(faust_app, loglevel="debug" if verbose else "info", quiet=True).execute_from_commandline()


@items_app.command("import")
def items_import(
    path: Annotated[Path, typer.Argument(help="JSON lines (one item object a line) or CSV (a header row: item_id, title, "
                                               "category, tags as a|b, price, available, image_url, other columns "
                                               "become properties).")],
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl | csv (default: from the first character).")] = None,
    rate: Annotated[float | None, typer.Option(help="Items per second (default: as fast as possible).")] = None,
) -> None:
    """Validate a catalogue file and publish it to the items topic, with a progress bar."""
    from tqdm import tqdm

    from driftrec.items_import import count_rows, import_items
    from driftrec.runtime import ensure_services

    if fmt not in (None, "jsonl", "csv"):
        raise typer.BadParameter("--format must be jsonl or csv")
    s = ensure_services(_settings())
    with tqdm(total=count_rows(path), unit="item", desc="importing") as bar:
        report = import_items(s, path, fmt=fmt, progress=bar, rate=rate)
    for line, reason in report.rejected[:20]:
        typer.echo(f"line {line} rejected: {reason}", err=True)
    if len(report.rejected) > 20:
        typer.echo(f"... and {len(report.rejected) - 20} more rejected", err=True)
    typer.echo(f"sent {report.sent}, rejected {len(report.rejected)} ({report.rate:,.0f} items/s) to {s.items_topic}")
    raise typer.Exit(1 if report.rejected else 0)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: reader_host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: reader_port).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Reader processes on the port (default: reader_workers; 0: one per core).")] = None,
) -> None:
    """Run the reader (Starlette + uvicorn), in one process or several on one port."""
    import os

    # Before numpy loads: the reader's products are one user against the catalogue, where BLAS
    # threads only fight the event loop for the core; a reader scales by running more processes.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import uvicorn

    from driftrec.online.processes import reader_processes, serve_processes

    s = _settings()
    try:
        n = reader_processes(s.reader_workers if workers is None else workers)
    except ValueError as exc:
        typer.echo(f"--workers: {exc}", err=True)
        raise typer.Exit(2) from None
    bind_host, bind_port = host or s.reader_host, port or s.reader_port
    if s.reader_native:
        from driftrec.online.native_front import native_binary, serve_native, unsupported

        _logging()
        log = logging.getLogger("driftrec.serve")
        binary = native_binary(s)
        why = unsupported(s)
        if binary is not None and why is None:
            raise typer.Exit(serve_native(s, binary, bind_host, bind_port, n))
        if binary is None:
            log.warning("reader_native is on but no driftrec-reader binary was found (`make install` builds it "
                        "with cargo): serving every request from the Python reader")
        else:
            log.info("the compiled front does not serve %s: the Python reader answers every request", why)
    if n > 1:
        _logging()
        serve_processes(s, bind_host, bind_port, n)
        return
    from driftrec.online.app import create_app, tune_gc

    reader = create_app(s)
    tune_gc()
    uvicorn.run(reader, host=bind_host, port=bind_port, log_level="warning", access_log=False)


@app.command()
def publish(
    source: Annotated[Path | None, typer.Argument(help="File of JSON events, one per line ('-' = stdin).")] = None,
    event: Annotated[str | None, typer.Option(help="One event as JSON.")] = None,
) -> None:
    """Publish click events (validated) to the clicks topic, keyed by user_id."""
    import orjson

    from driftrec.publisher import publish_events

    if event is not None:
        lines = [event]
    elif source is None or str(source) == "-":
        lines = [ln for ln in sys.stdin if ln.strip()]
    else:
        lines = [ln for ln in source.read_text().splitlines() if ln.strip()]
    events = []
    for i, line in enumerate(lines):
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            typer.echo(f"line {i + 1}: not valid JSON: {exc}", err=True)
            raise typer.Exit(2) from None
    report = publish_events(_settings(), events)
    for pos, reason in report.rejected:
        typer.echo(f"event {pos + 1} rejected: {reason}", err=True)
    typer.echo(f"sent {report.sent}, rejected {len(report.rejected)}")
    raise typer.Exit(1 if report.rejected else 0)


def _stream(events: Iterable[dict[str, Any]], total: int | None, rate: float | None) -> None:
    from tqdm import tqdm

    from driftrec.publisher import publish_events
    from driftrec.runtime import ensure_services

    s = ensure_services(_settings())
    with tqdm(total=total, unit="ev", desc="publishing") as bar:
        report = publish_events(s, events, rate=rate, progress=bar)
    typer.echo(f"sent {report.sent}, rejected {len(report.rejected)}")


@app.command()
def replay(
    path: Annotated[Path, typer.Argument(help="MovieLens ratings.csv / u.data, Online Retail, RetailRocket or user,item,type,timestamp CSV.")],
    rate: Annotated[float | None, typer.Option(help="Events per second (default: as fast as possible).")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
) -> None:
    """Publish a data set as click events in time order, with a progress bar."""
    import itertools

    from driftrec.datasets import load_any

    events: Iterable[dict[str, Any]] = load_any(path)
    if limit:
        events = itertools.islice(events, limit)
    _stream(events, limit, rate)


@app.command()
def simulate(
    events: Annotated[int, typer.Option(help="Events to publish.")] = 10_000,
    rate: Annotated[float | None, typer.Option(help="Events per second (0: as fast as possible).")] = 200.0,
    shoppers: Annotated[int, typer.Option(help="Shoppers in a session at once (their clicks interleave).")] = 10_000,
    users: Annotated[int, typer.Option(help="Registered shoppers sessions are drawn from (>= --shoppers).")] = 50_000,
    items: int = 10_000, categories: int = 20, seed: int = 7,
) -> None:
    """Publish live clicks from the built-in shop simulator (drifting tastes, interleaved shoppers).

    Every click is stamped with the wall-clock time it is sent, so a run of any length is live
    traffic to the worker; ids are fresh each run, so a second run adds clicks instead of
    repeating (and being deduplicated against) the first.
    """
    import itertools
    import uuid

    from driftrec.simulator import ShopSimulator, SimulatorConfigError, wall_clock

    rate = rate or None
    try:
        # Unthrottled runs get sessions shaped for 2,000 clicks/s; they still interleave shoppers.
        sim = ShopSimulator.live(rate=rate or 2000.0, shoppers=shoppers, n_users=users, n_items=items,
                                 n_categories=categories, seed=seed, id_prefix=f"sim-{uuid.uuid4().hex[:8]}")
    except SimulatorConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _stream(wall_clock(itertools.islice(sim.events(events), events)), events, rate)


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Events to stream.")] = 20_000,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 400.0,
    source: Annotated[str, typer.Option(help="auto | movielens | simulator")] = "auto",
) -> None:
    """Start the stack, worker and reader, stream clicks and print live recommendations."""
    from driftrec.demo import run_demo

    _logging()
    raise typer.Exit(run_demo(_settings(), events=events, rate=rate, source=source))


@app.command()
def lag(
    serve_: Annotated[bool, typer.Option("--serve", help="Run the exporter: /metrics, /dashboard, canary.")] = False,
    port: Annotated[int | None, typer.Option(help="Exporter port (default: settings.exporter_port).")] = None,
    host: Annotated[str, typer.Option(help="Exporter bind address.")] = "127.0.0.1",
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="Extra consumer group to watch.")] = None,
    all_groups: Annotated[bool, typer.Option("--all", help="Table: every group the broker lists.")] = False,
    reader_url: Annotated[str | None, typer.Option(help="Reader base URL (canary, health); 'none' = no reader.")] = None,
    worker_metrics_url: Annotated[str | None, typer.Option(help="Worker /metrics URL (health); 'none' = group membership only.")] = None,
    canary: Annotated[bool, typer.Option(help="Run the freshness canary (with --serve).")] = True,
    attribution: Annotated[bool, typer.Option(help="Count clicks per recommendation source (with --serve).")] = True,
) -> None:
    """Consumer lag from the broker: a table, or with --serve the long-running exporter."""
    import asyncio

    from driftrec.oncall.exporter import default_groups

    s = _settings()
    groups = default_groups(s, group or ())
    if not serve_:
        from rich.console import Console

        from driftrec.oncall.lag import LagCollector, LagError, LagSnapshot, render_table

        async def once() -> LagSnapshot:
            async with LagCollector(s.bootstrap, groups=None if all_groups else list(groups),
                                    topics=[] if all_groups else [s.clicks_topic]) as collector:
                return await collector.collect()

        try:
            snapshot = asyncio.run(once())
        except LagError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        Console(width=140).print(render_table(snapshot))
        raise typer.Exit(0)

    _logging()
    import uvicorn

    from driftrec.oncall.exporter import Exporter, ExporterConfig
    from driftrec.oncall.web import create_app as create_exporter_app

    # "none" leaves a component out (no reader deployed: the canary reads Redis, no reader health).
    reader = None if reader_url == "none" else reader_url or f"http://127.0.0.1:{s.reader_port}"
    worker_url = None if worker_metrics_url == "none" else (
        worker_metrics_url or f"http://127.0.0.1:{s.worker_metrics_port}/metrics")
    config = ExporterConfig(groups=groups, reader_url=reader, worker_metrics_url=worker_url,
                            canary=canary, attribution=attribution)
    uvicorn.run(create_exporter_app(Exporter(s, config)), host=host, port=port or s.exporter_port,
                log_level="warning", access_log=False)


@app.command()
def experiments(
    json_: Annotated[bool, typer.Option("--json", help="The figures as JSON (what the exporter's /api/state holds).")] = False,
) -> None:
    """Online experiments with their figures: answers, clicks, rates, difference vs control, split check."""
    import asyncio
    import json

    import redis.asyncio as aioredis
    from rich.console import Console

    from driftrec.errors import DriftrecError
    from driftrec.oncall.experiment_stats import read_experiments, render, summarise

    s = _settings()
    types = sorted(s.event_types)

    async def read() -> list[dict[str, Any]]:
        client = aioredis.Redis.from_url(s.redis, socket_timeout=5, socket_connect_timeout=5)
        try:
            return [summarise(e, c, types) for e, c in await read_experiments(client, s.key_prefix, types,
                                                                    s.experiments_file)]
        finally:
            await client.aclose()

    try:
        summaries = asyncio.run(read())
    except (OSError, aioredis.RedisError) as exc:
        typer.echo(f"Redis unavailable: {exc}", err=True)
        raise typer.Exit(2) from None
    except DriftrecError as exc:  # a bad experiments file
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if json_:
        typer.echo(json.dumps(summaries, indent=2))
        raise typer.Exit(0)
    if not summaries:
        typer.echo("no experiments defined (PUT /v1/experiments/{name} on the reader, or DRIFTREC_EXPERIMENTS_FILE)")
        raise typer.Exit(0)
    console = Console(width=160)
    for table in render(summaries, types):
        console.print(table)


@app.command()
def train(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="als | ease | svd | itemknn | userknn | tf | pop (repeat; default: als and tf).")] = None,
    every: Annotated[str | None, typer.Option(help="Retrain on a timer, e.g. 1h or 30m (default: once).")] = None,
    publish: Annotated[bool | None, typer.Option("--publish/--no-publish", help="Publish to Redis (default: when als is trained from the topic; with --from-file only if asked).")] = None,
    gate: Annotated[bool, typer.Option("--gate/--no-gate", help="Publish only if not worse than the live model on the newest events.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of every random choice (same log + seed = same model).")] = 0,
    from_file: Annotated[Path | None, typer.Option(help="Train on a data file (load_any layouts) instead of the clicks topic.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Hyperparameter MODEL.NAME=VALUE (repeat), e.g. als.factors=64.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also save the trained models (.npz) and their ids here.")] = None,
    activate: Annotated[str | None, typer.Option(help="Only switch the live model to this existing version (rollback).")] = None,
) -> None:
    """Train batch models from the click log and publish them to the online path."""
    _logging()
    from driftrec.errors import DriftrecError
    from driftrec.training.runner import TrainConfig, make_publisher, parse_params, train_once

    s = _settings()
    try:
        if activate is not None:
            old = make_publisher(s).activate(activate)
            typer.echo(f"live model: {activate} (was {old})")
            raise typer.Exit(0)
        config = TrainConfig(models=tuple(model or ("als", "tf")), params=parse_params(param or []),
                             seed=seed, publish=publish, gate=gate, from_file=from_file, out_dir=out,
                             progress=True)
        if every is None:
            train_once(s, config, echo=typer.echo)
            raise typer.Exit(0)
        import signal
        import threading

        from driftrec.training.schedule import parse_interval, run_every

        interval = parse_interval(every)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        run_every(interval, lambda: train_once(s, config, echo=typer.echo), stop)
    except DriftrecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def evaluate(
    dataset: Annotated[str, typer.Option(help="Data file or folder (MovieLens ratings.csv / u.data, Online Retail, RetailRocket, user,item,type,timestamp CSV), a folder name under the shared data sets, or 'simulator'.")],
    protocol: Annotated[str, typer.Option(help="prequential | offline")] = "prequential",
    max_windows: Annotated[int | None, typer.Option(help="Prequential: score this many evenly spaced hours of the second half (0 = every event).")] = 150,
    max_events: Annotated[int | None, typer.Option(help="Prequential: use only the first N events.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prequential: events per micro-batch around scored events.")] = 1,
    no_tf: Annotated[bool, typer.Option("--no-tf", help="Prequential: do not train the TF next-items model.")] = False,
    hourly_both: Annotated[bool, typer.Option(help="Prequential: replay hourly ALS even when item-kNN wins on the warm-up.")] = False,
    weights: Annotated[str | None, typer.Option(help='Prequential: blend weights as JSON, e.g. {"item_item": 1, "trending": 0.3}.')] = None,
    split: Annotated[str, typer.Option(help="Offline: stratified | time")] = "stratified",
    model: Annotated[list[str] | None, typer.Option(help="Offline: batch model (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
) -> None:
    """Evaluate: prequential (test-then-train on the live code path) or offline (75/25 splits)."""
    import json

    from driftrec.errors import DriftrecError

    _logging()
    try:
        if protocol == "prequential":
            from driftrec.evaluate import PrequentialOptions, prequential
            from driftrec.models.blend import BlendWeights

            opts = PrequentialOptions(max_windows=max_windows or None, max_events=max_events,
                                      batch_size=batch_size, tf=not no_tf, hourly_both=hourly_both)
            w = BlendWeights().with_overrides(json.loads(weights)) if weights else None
            report = prequential(dataset, _settings(), opts, w, log=typer.echo)
            for name, m in report["methods"].items():
                typer.echo(f"{name:20s} HR@10 {m['hr10']:.4f}  NDCG@10 {m['ndcg10']:.4f}  MRR@10 {m['mrr10']:.4f}")
            typer.echo(f"live / hourly batch: {report.get('live_vs_hourly_batch')}; live / best baseline "
                       f"({report.get('best_baseline')}): {report.get('live_vs_best_baseline')}")
        elif protocol == "offline":
            from driftrec.evaluate import offline

            if model:
                report = offline(dataset, models=tuple(model), split=split, log=typer.echo)
            else:
                report = offline(dataset, split=split, log=typer.echo)
        else:
            raise typer.BadParameter("protocol must be prequential or offline")
    except DriftrecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if out is not None:
        out.write_text(json.dumps(report, indent=1, default=str))
        typer.echo(f"wrote {out}")


@app.command()
def tune(
    source: Annotated[str, typer.Argument(help="The shop's click log: a data file or folder (the layouts `driftrec replay` reads), a shared data-set name, 'simulator', or 'kafka' / 'kafka:<topic>' for every retained event of a topic.")],
    budget: Annotated[str, typer.Option(help="Time budget, e.g. 10m, 600s, 1h (the check on the later part included).")] = "10m",
    seed: Annotated[int, typer.Option(help="Seed of the random search (same log + seed + budget = same choice).")] = 0,
    tune_fraction: Annotated[float, typer.Option(help="Share of the log (from its start) tuned on; the rest checks.")] = 0.5,
    max_windows: Annotated[int | None, typer.Option(help="Score this many evenly spaced hours per replay (0 = every event).")] = 150,
    max_events: Annotated[int | None, typer.Option(help="Use only the first N events.")] = None,
    model: Annotated[bool, typer.Option("--model/--no-model", help="Publish ALS on the warm-up so the user-vector and similar-users sources count (as with `driftrec train`).")] = True,
    out: Annotated[Path, typer.Option(help="Settings file to write (read by worker and serve via DRIFTREC_SETTINGS_FILE).")] = Path("driftrec-tuned.json"),
    report: Annotated[Path | None, typer.Option(help="Also write the whole tuning report (JSON) here.")] = None,
    force: Annotated[bool, typer.Option(help="Write the settings file even when the tuned settings are not better beyond the interval.")] = False,
) -> None:
    """Tune the live settings on a click log's first part, check them on its later part, write a settings file."""
    import json

    from driftrec.errors import DriftrecError
    from driftrec.tune import TuneOptions, load_events, parse_budget, settings_file_content
    from driftrec.tune import tune as run_tune

    logging.basicConfig(level=logging.WARNING)
    s = _settings()
    try:
        name, events = load_events(source, s, max_events)
    except (DriftrecError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if len(events) < 100:
        typer.echo(f"error: {name}: {len(events)} events, too few to tune on", err=True)
        raise typer.Exit(1)
    opts = TuneOptions(tune_fraction=tune_fraction, budget_s=parse_budget(budget), seed=seed,
                       max_windows=max_windows or None, model=model)
    typer.echo(f"{name}: {len(events)} events")
    result = run_tune(events, s, opts, log=typer.echo)
    check, ci = result.check, result.intervals
    typer.echo(f"\non the later part ({result.scored['check']} scored events, never tuned on):")
    for m in ("defaults", "tuned", "raw_cooccurrence", "vsknn"):
        typer.echo(f"  {m:18s} HR@10 {check[m]['hr10']:.4f}  NDCG@10 {check[m]['ndcg10']:.4f}")
    for key, (lo, hi) in ci.items():
        typer.echo(f"  {key:26s} 95 % interval [{lo:.2f}, {hi:.2f}]")
    changed = settings_file_content(result, s)
    typer.echo(f"tuned settings (changed from the current): {json.dumps(changed)}")
    if report is not None:
        report.write_text(json.dumps({"source": name, "events": len(events), "options": opts.__dict__,
                                      **result.as_dict()}, indent=1, default=str))
        typer.echo(f"wrote {report}")
    if not result.recommended and not force:
        typer.echo(f"not recommended: {result.reason}; no settings file written (--force writes it anyway)")
        raise typer.Exit(3)
    out.write_text(json.dumps(changed, indent=1, default=str) + "\n")
    typer.echo(f"{'recommended' if result.recommended else 'NOT recommended (--force)'}: {result.reason}\n"
               f"wrote {out}: run DRIFTREC_SETTINGS_FILE={out} driftrec worker / driftrec serve")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
