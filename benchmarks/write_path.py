"""Write-path throughput: simulator clicks through real Kafka -> `driftrec worker` -> Redis.

Usage: python benchmarks/write_path.py [--events 200000] [--model] [--profile] [--baseline-ref REF]
       python benchmarks/write_path.py --ceiling-only

Uses KAFKA_BOOTSTRAP_SERVERS / REDIS_URL when both are set, else starts the embedded local stack
on free ports (under .driftrec-bench/). Steps, all on the same topic in the same run:

1. publish ``--events`` simulator clicks (JSON, keyed by user) to a fresh topic;
2. raw baseline: a plain aiokafka consumer reads the topic and decodes every value with orjson;
3. the worker: one ``driftrec worker`` process (every update on: popularity, trending, item-item,
   user weights/categories/history, user and item vectors) consumes the topic from the start;
   its rate is taken from Redis' applied-event counter between 2% and 100% of the events
   (start-up excluded);
4. the batch processor alone, in this process, on the same records (no Kafka, no Faust), and
   optionally (``--profile``) again under cProfile: ``benchmarks/results/write_path_profile.txt``
   (``--profile-worker FILE`` runs step 3's worker under cProfile instead, stats to FILE);
5. the ceiling Faust sets: a Faust worker built like ours whose agent only decodes the events,
   with the worker's batch consumer and with Faust's ``take_events`` stream.

``--model`` publishes random item factors first, so users are folded in (ALS) instead of ISGD.
``--baseline-ref REF`` first runs the worker with the consumption path (``CONSUMER_PATHS``) of git
commit REF and everything else as in the working tree, on the same topic: a before/after in one run
(``--baseline-paths streams models`` takes those folders from REF instead: the processor too). ``--ceiling-only`` publishes, measures the raw consumer and
every Faust no-op variant (``NOOP_VARIANTS``) and stops.
Writes ``benchmarks/results/write_path.json`` (``write_path_foldin.json`` with ``--model``,
``write_path_ceiling.json`` with ``--ceiling-only``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from common import RESULTS, ROOT, commit, machine
from common import free_port as _free_port  # also benchmarks/system.py's

from driftrec.kafka_admin import ensure_topics
from driftrec.keys import Keys
from driftrec.modelformat import pack_factors
from driftrec.settings import Settings, load_settings
from driftrec.simulator import ShopSimulator
from tools.chaos.scale import cpu_s


@contextlib.contextmanager
def services() -> Iterator[Settings]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL"):
        yield load_settings()
        return
    from driftrec.stack import LocalStack

    home = ROOT / ".driftrec-bench"
    base = load_settings(home=home, kafka_port=_free_port(), kafka_controller_port=_free_port(),
                         redis_port=_free_port())
    stack = LocalStack(base)
    stack.down()
    shutil.rmtree(home, ignore_errors=True)
    stack.up()
    try:
        yield load_settings(kafka_bootstrap_servers=base.bootstrap, redis_url=base.redis, home=home)
    finally:
        stack.down()


async def publish(s: Settings, events: list[dict[str, Any]]) -> list[tuple[int, int, bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(s.clicks_topic, orjson.dumps(e), key=e["user_id"].encode())
                   for e in events]
        await producer.flush()
        metas = [await f for f in futures]
    finally:
        await producer.stop()
    return [(m.partition, m.offset, orjson.dumps(e)) for m, e in zip(metas, events, strict=True)]


async def raw_consume(s: Settings, n: int) -> tuple[float, int]:
    """Seconds for a plain aiokafka consumer to read and orjson-decode ``n`` records."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(s.clicks_topic, p) for p in range(s.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, loads = 0, orjson.loads
        started = time.perf_counter()
        while seen < n:
            for rows in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                for rec in rows:
                    loads(rec.value)
                seen += len(rows)
        return time.perf_counter() - started, seen
    finally:
        await consumer.stop()


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a local process (all its threads), NaN when unknown."""
    try:
        return cpu_s(pid) if pid else float("nan")
    except OSError:
        return float("nan")


def _service_pids(s: Settings, r: redis.Redis) -> dict[str, int | None]:
    """Redis' pid (``INFO server``) and the local stack's Kafka pid (None for an external one)."""
    kafka: int | None = None
    try:
        from driftrec.stack import LocalStack

        kafka = next((st.pid for st in LocalStack(s).status() if st.name == "kafka" and st.running), None)
    except Exception:  # noqa: BLE001  (external services: no local stack to ask)
        kafka = None
    redis_pid = int(r.info("server")["process_id"])
    return {"redis": redis_pid if Path(f"/proc/{redis_pid}").exists() else None, "kafka": kafka}


def _commandstats(r: redis.Redis) -> dict[str, int]:
    return {k: int(v["calls"]) for k, v in r.info("commandstats").items()}


#: The files that make the worker's consumption path; ``--baseline-ref`` takes them from REF.
CONSUMER_PATHS = ("streams/agents.py", "streams/app.py")


def run_baseline(s: Settings, n: int, ref: str, paths: tuple[str, ...] = CONSUMER_PATHS) -> dict[str, Any]:
    """The worker with ``paths`` (files or folders; default the consumption path) of commit
    ``ref``, on the same topic.

    A copy of the working tree (tracked and untracked files) with ``paths`` as of ``ref``:
    everything else is the same code as the worker measured after it, so the difference is
    those paths alone.
    """
    tree = Path(tempfile.mkdtemp(prefix="driftrec-baseline-"))
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                               check=True, capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src = ROOT / name
            if src.is_file():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tree / name)
        for path in paths:  # a folder is replaced whole: REF's files, none of the working tree's
            shutil.rmtree(tree / path, ignore_errors=True)
            names = subprocess.run(["git", "ls-tree", "-r", "--name-only", ref, "--", path], cwd=ROOT,
                                   check=True, capture_output=True, text=True).stdout.split()
            for name in names:
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                (tree / name).write_bytes(subprocess.run(["git", "show", f"{ref}:{name}"], cwd=ROOT, check=True,
                                                         capture_output=True).stdout)
        (s.home / "faust").mkdir(parents=True, exist_ok=True)
        other = s.model_copy(update={"consumer_group": s.consumer_group + "-base",
                                     "key_prefix": s.key_prefix + "base",
                                     "worker_web_port": _free_port(), "worker_metrics_port": _free_port()})
        _copy_model(s, other)
        return run_worker(other, n, cwd=tree)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def publish_random_model(r: redis.Redis, s: Settings, item_ids: list[str], version: str = "bench") -> None:
    """Random item factors (seed 0) for ``item_ids`` as the live model of ``s``'s key prefix: the
    fold-in mode, without training one."""
    keys = Keys(s.key_prefix)
    y = np.random.default_rng(0).normal(0, 0.1, (len(item_ids), s.factors))
    for part, blob in pack_factors(item_ids, y, alpha=1.0, regularization=s.fold_in_regularization).items():
        r.set(keys.model_blob(version, part), blob)
    r.set(keys.model_current, version)


def _copy_model(src: Settings, dst: Settings) -> None:
    """The published model of ``src``'s prefix, if any, under ``dst``'s prefix."""
    r = redis.Redis.from_url(src.redis)
    a, b = Keys(src.key_prefix), Keys(dst.key_prefix)
    raw: Any = r.get(a.model_current)
    if raw is not None:
        version = raw.decode()
        for part in ("item_ids", "item_factors", "alpha", "regularization"):
            blob: Any = r.get(a.model_blob(version, part))
            r.set(b.model_blob(version, part), blob)
        r.set(b.model_current, version)


def run_worker(s: Settings, n: int, cwd: Path = ROOT, profile_to: Path | None = None) -> dict[str, Any]:
    r = redis.Redis.from_url(s.redis)
    meta = Keys(s.key_prefix).meta
    before = _commandstats(r)
    env = dict(os.environ)
    env.update(s.to_env())
    log = open(Path(tempfile.gettempdir()) / "driftrec-bench-worker.log", "wb")  # noqa: SIM115
    # Under cProfile the stats are written when the worker exits (it stops on SIGTERM).
    prof = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
    proc = subprocess.Popen([sys.executable, *prof, "-m", "driftrec.cli", "worker"], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    samples: list[tuple[float, int]] = []
    # CPU seconds of the worker, Redis and Kafka at each sample: where the 2 cores go per event.
    pids = {"worker": proc.pid, **_service_pids(s, r)}
    cpu: list[dict[str, float]] = []
    peak = 0.0
    try:
        deadline = time.monotonic() + 1800
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"worker died; see {log.name}")
            applied = int(r.hget(meta, "applied_events") or 0)
            samples.append((time.perf_counter(), applied))
            cpu.append({name: _cpu_s(pid) for name, pid in pids.items()})
            peak = max(peak, _rss_peak_mb(proc.pid))
            if applied >= n or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        paths = _batch_paths(s.worker_metrics_port)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    after = _commandstats(r)
    start = next(i for i, (_, a) in enumerate(samples) if a >= n * 0.02)
    t0, a0 = samples[start]
    t1, a1 = samples[-1]
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    scripts = calls.get("cmdstat_evalsha", 0) + calls.get("cmdstat_eval", 0)
    return {
        "events": a1, "measured_events": a1 - a0, "seconds": round(t1 - t0, 3),
        "events_per_s": round((a1 - a0) / (t1 - t0), 1),
        # Every command Redis executed, the ones the scripts run included (INFO commandstats).
        "redis_commands_per_event": round(sum(v for k, v in calls.items() if not k.startswith(
            ("cmdstat_info", "cmdstat_config"))) / a1, 2),
        "redis_round_trips_per_event": round(scripts / a1, 5),
        "redis_commands_by_type": {k.removeprefix("cmdstat_"): v for k, v in sorted(
            calls.items(), key=lambda kv: -kv[1]) if v},
        "peak_rss_mb": round(peak, 1),
        # Between the 2 % sample and the last one; NaN (null) where a process could not be read.
        "cpu_us_per_event": {name: (round((cpu[-1][name] - cpu[start][name]) / (a1 - a0) * 1e6, 1)
                                    if cpu[-1][name] == cpu[-1][name] else None) for name in pids},
        # driftrec_worker_batches_total by path (absent for a REF that predates the metric).
        "batches_by_path": paths,
    }


def _batch_paths(port: int) -> dict[str, float]:
    """The worker's ``driftrec_worker_batches_total`` by ``path`` label, from its metrics port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "driftrec_worker_batches":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels.get("path", "")] = sample.value
    return out


async def processor_alone(s: Settings, records: list[tuple[int, int, bytes]], suffix: str,
                          profile: bool, overlap: bool = False) -> dict[str, Any]:
    """The batch processor alone (no Kafka, no Faust) on a fresh prefix, optionally under cProfile;
    ``overlap``: each batch planned while Redis applies the one before (``feed``), as the worker
    does, else one after another (``process``)."""
    import redis.asyncio as aioredis

    from driftrec.streams.processor import BatchProcessor, RawRecord
    from driftrec.streams.published import FactorCache
    from driftrec.streams.redis_state import RedisState

    worker_keys = Keys(s.key_prefix)
    s = s.model_copy(update={"key_prefix": s.key_prefix + suffix})
    keys = Keys(s.key_prefix)
    client = aioredis.Redis.from_url(s.redis)
    version = await client.get(worker_keys.model_current)
    if version is not None:  # the same model as the worker run
        for part in ("item_ids", "item_factors", "alpha", "regularization"):
            await client.set(keys.model_blob(version.decode(), part),
                             await client.get(worker_keys.model_blob(version.decode(), part)))
        await client.set(keys.model_current, version)
    state = RedisState(client, keys, s.clicks_topic, window=s.cooc_window, history_len=s.history_len,
                       neighbours_k=s.neighbours_cut, trending_k=s.trending_k, chunk_cost=s.apply_chunk_cost)

    async def sink(dead: Any) -> None:
        pass

    proc = BatchProcessor(s, state, sink, FactorCache(client, keys, s.fold_in_regularization))
    raws = [RawRecord(s.clicks_topic, p, o, v) for p, o, v in sorted(records)]
    # Batches as the worker gets them: a slice of the stream across partitions.
    by_time = sorted(raws, key=lambda r: (r.offset, r.partition))
    prof = cProfile.Profile()
    started = time.perf_counter()
    if profile:
        prof.enable()
    cuts = [by_time[i: i + s.batch_max_events] for i in range(0, len(by_time), s.batch_max_events)]
    for k, cut in enumerate(cuts):
        if overlap:  # with the next batch as upcoming, as the worker has it from its fetches
            await proc.feed(cut, k, upcoming=cuts[k + 1] if k + 1 < len(cuts) else None)
        else:
            await proc.process(cut)
    if overlap:
        await proc.flush()
    took = time.perf_counter() - started
    if profile:
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
        (RESULTS / "write_path_profile.txt").write_text(out.getvalue())
    await client.aclose()
    return {"events": len(raws), "seconds": round(took, 3), "events_per_s": round(len(raws) / took, 1),
            "redis_round_trips": state.commands_sent}


#: Faust no-op agents measured side by side on the same topic (see ``noop_agent``).
NOOP_VARIANTS = ("take_events", "take_events+uvloop", "take_events+uvloop+quiet", "events_noack+uvloop",
                 "batches", "batches+uvloop")


def faust_ceiling(s: Settings, n: int, variant: str = "batches") -> float:
    """Events/s of a Faust worker whose agent only decodes (this file, --noop-agent)."""
    env = dict(os.environ)
    env.update(s.to_env())
    env["DRIFTREC_WORKER_WEB_PORT"] = str(_free_port())
    out = subprocess.run([sys.executable, __file__, "--noop-agent", str(n), "--noop-variant", variant],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    found = re.search(r"NOOP ([0-9.]+)", out.stdout + out.stderr)  # Faust logs what agents print
    if found:
        return float(found.group(1))
    raise SystemExit(f"no-op Faust worker ({variant}) failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def noop_agent(n: int, variant: str) -> None:
    """A Faust app like the worker's whose agent does nothing but orjson-decode (the ceiling).

    Variants: ``take_events`` (Faust's stream, batched by ``take_events``), ``events_noack`` (the
    stream's events with acks off, batched here and acked after the batch), ``batches`` (the
    worker's :class:`~driftrec.streams.batch_consumer.BatchConsumer`: whole fetches, no per-event stream);
    ``+uvloop`` runs it on uvloop, ``+quiet`` swaps Faust's Monitor for one that records nothing.
    """
    from faust.sensors import Monitor
    from faust.worker import Worker

    from driftrec.streams.app import create_app

    if "uvloop" in variant:
        import mode.loop

        mode.loop.use("uvloop")
    s = load_settings()
    s = s.model_copy(update={"consumer_group": f"{s.consumer_group}-noop-{variant.replace('+', '-')}"})
    if variant.startswith("batches"):
        app = create_app(s)
    else:
        from driftrec.streams.app import faust_settings

        conf = faust_settings(s)
        if "quiet" in variant:
            class QuietMonitor(Monitor):  # records no per-message statistics
                def on_message_in(self, *a: Any) -> None: ...
                def on_stream_event_in(self, *a: Any) -> None: ...
                def on_stream_event_out(self, *a: Any) -> None: ...
                def on_message_out(self, *a: Any) -> None: ...

            conf["Monitor"] = QuietMonitor
        import faust

        app = faust.App(s.consumer_group, **conf)
    topic = app.topic(s.clicks_topic, value_type=bytes, value_serializer="raw", key_type=bytes,
                      key_serializer="raw")
    state: dict[str, float] = {"n": 0}

    def count(k: int) -> None:
        if "t0" not in state and state["n"] >= n * 0.02:
            state["t0"], state["n0"] = time.perf_counter(), state["n"]
        state["n"] += k
        if state["n"] >= n:
            print(f"NOOP {(state['n'] - state['n0']) / (time.perf_counter() - state['t0']):.1f}", flush=True)
            os._exit(0)

    loads = orjson.loads

    @app.agent(topic, concurrency=1, name="noop")
    async def noop(stream: Any) -> None:
        if variant.startswith("take_events"):
            async for events in stream.take_events(s.batch_max_events, within=s.batch_max_wait_s):
                for e in events:
                    loads(e.message.value)
                count(len(events))
        elif variant.startswith("events_noack"):
            quiet = stream.noack()
            buf: list[Any] = []
            async for e in quiet.events():
                buf.append(e)
                if len(buf) >= s.batch_max_events or not quiet.channel.queue.qsize():
                    for ev in buf:
                        loads(ev.message.value)
                    for ev in buf:
                        await quiet.ack(ev)
                    count(len(buf))
                    buf.clear()
        else:
            from driftrec.streams.batch_consumer import BatchConsumer

            consumer: BatchConsumer = app.consumer  # type: ignore[assignment]
            async for batch in consumer.batches(stream, s.batch_max_events):
                try:
                    for rec in batch.records:
                        loads(rec.value or b"null")
                    batch.applied()
                    count(len(batch.records))
                finally:
                    batch.release()

    Worker(app, loglevel=os.environ.get("NOOP_LOGLEVEL", "warning"), quiet=True).execute_from_commandline()


def _git_commit() -> str:
    return commit(ROOT)


def _machine() -> dict[str, Any]:
    info = machine(("faust", "aiokafka", "redis", "orjson"))
    info["load_avg_at_start"] = info.pop("load_avg")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--model", action="store_true", help="publish item factors first (fold-in mode)")
    ap.add_argument("--profile", action="store_true", help="also profile the processor alone")
    ap.add_argument("--profile-worker", type=Path, metavar="FILE",
                    help="run the worker under cProfile, writing its stats to FILE (slows it down)")
    ap.add_argument("--out", type=Path, help="result file (default: see the module docstring)")
    ap.add_argument("--baseline-ref", help="also run the worker with the consumption path of this commit")
    ap.add_argument("--baseline-paths", nargs="+", default=list(CONSUMER_PATHS), metavar="PATH",
                    help="files or folders --baseline-ref takes from that commit (default: the "
                         "consumption path, %(default)s); e.g. `streams models` for the processor")
    ap.add_argument("--noop-agent", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--noop-variant", default="batches", help=argparse.SUPPRESS)
    ap.add_argument("--ceiling-only", action="store_true",
                    help="publish, raw consume and the Faust no-op variants only (no worker)")
    args = ap.parse_args()
    if args.noop_agent:
        sys.argv = [sys.argv[0], "worker"]
        noop_agent(args.noop_agent, args.noop_variant)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    sim = ShopSimulator(n_users=args.users, n_items=args.items, n_categories=20, seed=7)
    events = list(sim.events(args.events))
    with services() as base:
        tag = uuid.uuid4().hex[:8]
        s = base.model_copy(update={
            "clicks_topic": f"bench-{tag}.clicks", "dead_letter_topic": f"bench-{tag}.dlq",
            "consumer_group": f"bench-{tag}", "key_prefix": f"bench{tag}",
            "worker_web_port": _free_port(), "worker_metrics_port": _free_port(),
        })
        ensure_topics(s.bootstrap, {s.clicks_topic: s.topic_partitions, s.dead_letter_topic: 1})
        mode = "isgd"
        if args.model:
            publish_random_model(redis.Redis.from_url(s.redis), s, list(sim.item_ids))
            mode = "fold-in"
        print(f"publishing {len(events):,} events ...", flush=True)
        records = asyncio.run(publish(s, events))
        print("raw consume ...", flush=True)
        raw_s, raw_n = asyncio.run(raw_consume(s, len(events)))
        print(f"raw: {raw_n / raw_s:,.0f} events/s", flush=True)
        if args.ceiling_only:
            ceiling = {}
            for variant in NOOP_VARIANTS:
                ceiling[variant] = faust_ceiling(s, len(events), variant)
                print(f"Faust no-op agent, {variant}: {ceiling[variant]:,.0f} events/s", flush=True)
            out = args.out or RESULTS / "write_path_ceiling.json"
            machine["load_avg_at_end"] = os.getloadavg()
            out.write_text(json.dumps({
                "events": len(events), "raw_consume_events_per_s": round(raw_n / raw_s, 1),
                "faust_noop_agent_events_per_s": ceiling, "machine": machine, "commit": _git_commit(),
                "settings": {k: getattr(s, k) for k in ("batch_max_events", "batch_max_wait_s",
                                                        "topic_partitions")},
            }, indent=2) + "\n")
            return
        baseline = None
        if args.baseline_ref:
            print(f"worker at {args.baseline_ref} ({mode}) ...", flush=True)
            baseline = run_baseline(s, len(events), args.baseline_ref, tuple(args.baseline_paths))
            print(f"worker at {args.baseline_ref}: {baseline['events_per_s']:,.0f} events/s", flush=True)
        print(f"worker ({mode}) ...", flush=True)
        worker = run_worker(s, len(events), profile_to=args.profile_worker)
        print(f"worker: {worker['events_per_s']:,.0f} events/s", flush=True)
        result: dict[str, Any] = {
            "events": worker["events"],
            "seconds": worker["seconds"],
            "events_per_s": worker["events_per_s"],
            "raw_consume_events_per_s": round(raw_n / raw_s, 1),
            "ratio": round(worker["events_per_s"] / (raw_n / raw_s), 4),
            "redis_commands_per_event": worker["redis_commands_per_event"],
            "peak_rss_mb": worker["peak_rss_mb"],
            "machine": machine,
            "commit": _git_commit(),
            "vectors": mode,
            "measured_events": worker["measured_events"],
            "redis_round_trips_per_event": worker["redis_round_trips_per_event"],
            "redis_commands_by_type": worker["redis_commands_by_type"],
            "batches_by_path": worker["batches_by_path"],
            "cpu_us_per_event": worker["cpu_us_per_event"],
            "settings": {k: getattr(s, k) for k in ("batch_max_events", "batch_max_wait_s", "topic_partitions",
                                                    "cooc_window", "history_len", "neighbours_k", "factors")},
            "simulator": {"users": args.users, "items": args.items, "categories": 20, "seed": 7},
        }
        print("processor alone ...", flush=True)
        result["processor_only"] = asyncio.run(processor_alone(s, records, "-alone", profile=False))
        result["processor_only_overlapped"] = asyncio.run(
            processor_alone(s, records, "-overlap", profile=False, overlap=True))
        print(f"processor alone: {result['processor_only']['events_per_s']:,.0f} events/s one batch after "
              f"another, {result['processor_only_overlapped']['events_per_s']:,.0f} overlapped; "
              "Faust no-op agents ...", flush=True)
        # The worker's consumer (whole batches), and Faust's take_events stream for scale.
        result["faust_noop_agent_events_per_s"] = faust_ceiling(s, len(events), "batches")
        result["faust_noop_take_events_events_per_s"] = faust_ceiling(s, len(events), "take_events")
        print(f"Faust no-op: {result['faust_noop_agent_events_per_s']:,.0f} events/s "
              f"(take_events: {result['faust_noop_take_events_events_per_s']:,.0f})", flush=True)
        if baseline is not None:
            result["baseline"] = {"ref": args.baseline_ref, "paths": args.baseline_paths, **baseline}
        if args.profile:
            print("processor alone, profiled ...", flush=True)
            result["processor_only_profiled"] = asyncio.run(processor_alone(s, records, "-prof", profile=True))
        result["machine"]["load_avg_at_end"] = os.getloadavg()
    out = args.out or RESULTS / ("write_path_foldin.json" if args.model else "write_path.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("events", "seconds", "events_per_s", "raw_consume_events_per_s",
                                             "ratio", "redis_commands_per_event", "peak_rss_mb")}, indent=2))


if __name__ == "__main__":
    main()
