"""The whole system at the product's defaults, under a shop's traffic: one benchmark, one run.

Usage: python benchmarks/system.py [--baseline-ref REF] [--quick] [--out FILE]
       (``make bench`` runs it with no options)

Starts the embedded local stack (Kafka KRaft + Redis, on free ports under .driftrec-bench/) unless
KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are both set, installs its two outside tools when missing
(vegeta with ``go install``, kcat from Debian), and then, for the working tree and, with
``--baseline-ref``, for commit REF on the same stack (each on its own topic, key prefix and ports):

1. publishes a warm-up log of live simulator clicks (``ShopSimulator.live``: 50,000 shoppers,
   10,000 items, ~10,000 open sessions interleaved, wall-clock timestamps) through kcat, an
   outside Kafka client (librdkafka, the Java clients' murmur2 partitioner);
2. trains and publishes the model exactly as a plain ``driftrec train`` does (ALS 128 factors +
   TF 256 wide at today's defaults), as a process of that tree;
3. starts ``driftrec worker`` and ``driftrec serve`` as processes, the way a user runs them;
   the worker applies the warm-up backlog: ``worker_catchup_events_per_s`` (full batches, fold-in
   against the published model, between 5 % and 100 % of the log);
4. **reader alone**: vegeta, open-loop at fixed offered rates (no ``-max-workers``), 20 s each,
   ``GET /v1/recommendations/{shopper}?n=20`` spread over the warm-up's shoppers, blending on:
   p50 / p99 / p99.9 / max, errors, 503 sheds and degraded answers per rate; a rate whose p99
   passes 1 s or whose success falls under 90 % saturates the reader, and the higher rates are
   not offered (recorded as ``null`` with the reason);
5. **worker step-up**: clicks published through kcat at rising fixed rates, 20 s each, with
   freshness probes; the highest rate at which the worker keeps up (applies >= 97 % of the
   offered rate) with freshness p99 <= 1 s and no probe lost (``worker_max_rate_fresh_1s``), and
   the events/s it applied there (**worker_events_per_s**); ``--profile`` records py-spy
   profiles of the worker at each step and of the reader at each offered rate;
6. **2,000 clicks/s background**: freshness probes (clicks for new shoppers from a bare aiokafka
   producer, timed from the broker's acknowledgement until ``GET /v1/users/{u}/history`` on the
   reader shows the click; polled every 20 ms; lost = not shown within 30 s), Redis stalls (the
   longest single command in ``SLOWLOG``, threshold 1 ms), then the **reader under writes**
   (vegeta at 500 req/s while the clicks go on).

Writes ``benchmarks/results/system.json`` (flat keys; ``baseline`` with the same keys) and
``system.png`` (reader latency against offered rate; freshness over the run). Everything runs on
this machine's cores together (Kafka, Redis, worker, reader, kcat, vegeta and this script): the
numbers are those of the whole system on one box, not of a component alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driftrec.kafka_admin import ensure_topics  # noqa: E402
from driftrec.keys import Keys  # noqa: E402
from driftrec.settings import Settings  # noqa: E402
from driftrec.simulator import ShopSimulator  # noqa: E402
from tools import benchinfo  # noqa: E402
from tools.chaos.procs import tree_pids, tree_rss_mb  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from write_path import _free_port, services  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.13.0"


@dataclass(frozen=True)
class Plan:
    """What one run offers; ``--quick`` shrinks it to check the harness, not to publish numbers."""

    shoppers: int = 50_000          # the shop's shoppers (the simulator's users)
    open_sessions: int = 10_000     # sessions open at once: the interleaving
    items: int = 10_000
    categories: int = 20
    warmup_events: int = 150_000
    reader_rates: tuple[int, ...] = (50, 100, 250, 500, 1000, 2000)
    reader_seconds: float = 20.0
    worker_rates: tuple[int, ...] = (500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10_000, 12_000, 15_000)
    step_seconds: float = 20.0
    background_rate: int = 2000
    freshness_seconds: float = 50.0
    under_writes_rate: int = 500
    under_writes_seconds: float = 20.0
    n: int = 20                     # items per recommendation request
    more_reader_processes: int = 2  # the reader sweep again with `serve --workers 2` (0: not)
    seed: int = 7

    @classmethod
    def quick(cls) -> Plan:
        return cls(shoppers=5000, open_sessions=2000, items=2000, warmup_events=20_000,
                   reader_rates=(100, 500), reader_seconds=5.0, worker_rates=(500, 2000),
                   step_seconds=6.0, freshness_seconds=10.0, under_writes_seconds=5.0)


# --- outside tools -------------------------------------------------------------------------------
def vegeta_bin() -> str:
    """vegeta on PATH or in Go's bin folder, installed with ``go install`` when missing."""
    gobin = Path(subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True,
                                check=True).stdout.strip()) / "bin"
    for cand in (shutil.which("vegeta"), gobin / "vegeta"):
        if cand and Path(cand).exists():
            return str(cand)
    print(f"installing vegeta ({VEGETA_MODULE}) ...", flush=True)
    subprocess.run(["go", "install", VEGETA_MODULE], check=True, cwd=tempfile.gettempdir())
    return str(gobin / "vegeta")


def kcat_bin() -> str:
    """kcat on PATH, installed from Debian's package when missing (needs root, as redis-server)."""
    found = shutil.which("kcat")
    if found:
        return found
    print("installing kcat (Debian package) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = subprocess.run(["apt-get", "install", "-y", "-q", "kcat"], env=env).returncode == 0
    if not ok:
        ok = (subprocess.run(["apt-get", "update", "-q"], env=env).returncode == 0
              and subprocess.run(["apt-get", "install", "-y", "-q", "kcat"], env=env).returncode == 0)
    found = shutil.which("kcat")
    if not found:
        raise SystemExit("kcat is needed (an outside Kafka client) and could not be installed: "
                         "apt-get install kcat")
    return found


# --- code trees and processes --------------------------------------------------------------------
@contextlib.contextmanager
def code_tree(ref: str | None) -> Iterator[Path]:
    """The working tree (``ref`` None) or a checkout of commit ``ref`` in a temporary folder."""
    if ref is None:
        yield ROOT
        return
    tree = Path(tempfile.mkdtemp(prefix="driftrec-system-"))
    try:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)


class Proc:
    """``driftrec <args>`` of one code tree, settings in the environment, output to a log."""

    def __init__(self, tree: Path, s: Settings, args: list[str], log: Path) -> None:
        env = {**os.environ, **s.to_env(), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
        self.log = log
        self.args = args
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "driftrec.cli", *args], cwd=tree, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise SystemExit(f"`driftrec {' '.join(self.args)}` exited ({self.proc.returncode}); "
                             f"see {self.log}:\n{self.log.read_text(errors='replace')[-3000:]}")

    def rss_mb(self) -> float | None:
        """RSS of the process and every process below it (``serve``: the launcher, the compiled
        front and the Python reader), shared model pages counted once per process mapping them."""
        got = tree_rss_mb(self.proc.pid)
        return None if got is None else round(got, 1)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_for(cond: Any, timeout: float, what: str, procs: tuple[Proc, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check()
        if cond():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def py_spy(proc: Proc, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``proc`` from outside for ``seconds`` (raw stacks to ``out``); it changes
    nothing in the process, but takes CPU of its own: profiled runs are not for the numbers."""
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.proc.pid),
                             "--duration", str(int(seconds)), "--format", "raw", "--rate", "50", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def settle(url: str, procs: tuple[Proc, ...], timeout: float = 300.0) -> float:
    """Wait until ``url`` answers in under 50 ms three times running: a reader that was offered
    more than it could serve has worked off its queue. Returns the seconds waited."""
    started = time.monotonic()
    fast = 0
    while fast < 3:
        for p in procs:
            p.check()
        if time.monotonic() - started > timeout:
            raise SystemExit(f"the reader did not recover within {timeout:.0f} s")
        t = time.perf_counter()
        ok = http_ok(url)
        fast = fast + 1 if ok and time.perf_counter() - t < 0.05 else 0
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


def metric_total(url: str, name: str) -> float:
    """Sum of a Prometheus counter's ``_total`` samples over all labels (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) if fam.name == name
               for s in fam.samples if s.name.endswith("_total"))


def front_answers(url: str) -> int:
    """Answers of the compiled front (the ``front="native"`` series of the reader's request
    counter); 0 for a reader without one."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return int(sum(s.value for fam in text_string_to_metric_families(text) if fam.name == "driftrec_reader_requests"
                   for s in fam.samples if s.name.endswith("_total") and s.labels.get("front") == "native"))


# --- traffic ---------------------------------------------------------------------------------------
class Clicks:
    """One live simulator stream, published through kcat with each click stamped as it is written."""

    def __init__(self, plan: Plan, kcat: str, s: Settings, tag: str) -> None:
        sim = ShopSimulator.live(rate=plan.background_rate, shoppers=plan.open_sessions,
                                 n_users=plan.shoppers, n_items=plan.items, n_categories=plan.categories,
                                 seed=plan.seed, id_prefix=f"sys-{tag}")
        self.stream = iter(sim)
        self.items = list(sim.item_ids)
        self.cmd = [kcat, "-P", "-b", s.bootstrap, "-t", s.clicks_topic, "-K", "\t", "-X",
                    "partitioner=murmur2_random", "-X", "queue.buffering.max.ms=5", "-X", "acks=all"]
        self.sent = 0
        self.users_seen: set[str] = set()

    def _lines(self, k: int, now: float) -> bytes:
        out = []
        stamp = round(now, 3)
        for _ in range(k):
            ev = next(self.stream)
            ev["timestamp"] = stamp
            self.users_seen.add(ev["user_id"])
            out.append(ev["user_id"].encode() + b"\t" + orjson.dumps(ev) + b"\n")
        self.sent += k
        return b"".join(out)

    def warmup(self, n: int) -> list[str]:
        """Publish ``n`` clicks as fast as kcat takes them; returns the user ids in stream order."""
        proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE)
        assert proc.stdin is not None
        users: list[str] = []
        chunk = 2000
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            data = self._lines(k, time.time())
            users.extend(line.split(b"\t", 1)[0].decode() for line in data.splitlines())
            proc.stdin.write(data)
        proc.stdin.close()
        if proc.wait(300) != 0:
            raise SystemExit("kcat failed to publish the warm-up log")
        return users

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        """Publish at ``rate`` clicks/s (fixed, open-loop: 10 ms ticks) until ``stop`` is set."""
        proc = await asyncio.create_subprocess_exec(*self.cmd, stdin=asyncio.subprocess.PIPE)
        assert proc.stdin is not None
        started, done = time.monotonic(), 0
        try:
            while not stop.is_set():
                due = int((time.monotonic() - started) * rate) - done
                if due > 0:
                    proc.stdin.write(self._lines(due, time.time()))
                    await proc.stdin.drain()
                    done += due
                await asyncio.sleep(0.01)
        finally:
            proc.stdin.close()
            await proc.wait()


@dataclass
class Probe:
    sent_at: float          # seconds since the phase started, at the broker's ack
    ms: float | None        # ack -> the reader shows it; None: lost


class Prober:
    """Clicks for new shoppers from a bare aiokafka producer; times until the reader shows each."""

    def __init__(self, s: Settings, reader: str, items: list[str], tag: str, t0: float) -> None:
        self.s, self.reader, self.items, self.tag, self.t0 = s, reader, items, tag, t0
        self.count = 0
        self.sent = 0

    async def __aenter__(self) -> Prober:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.s.bootstrap, acks="all", linger_ms=0)
        await self.producer.start()
        self.http = httpx.AsyncClient(timeout=2.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.http.aclose()

    async def one(self, poll_s: float = 0.02, lost_after_s: float = 30.0) -> Probe:
        self.count += 1
        user = f"probe-{self.tag}-{self.count}"
        item = random.choice(self.items[:200])
        ev = {"event_id": f"probe-{self.tag}-{self.count}", "user_id": user, "item_id": item,
              "type": "view", "timestamp": round(time.time(), 3)}
        await self.producer.send_and_wait(self.s.clicks_topic, orjson.dumps(ev), key=user.encode())
        acked = time.monotonic()
        self.sent += 1
        url = f"{self.reader}/v1/users/{user}/history"
        while time.monotonic() - acked < lost_after_s:
            try:
                resp = await self.http.get(url)
                if resp.status_code == 200 and any(it.get("item_id") == item for it in resp.json().get("items", [])):
                    return Probe(acked - self.t0, (time.monotonic() - acked) * 1000)
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(poll_s)
        return Probe(acked - self.t0, None)

    async def every(self, period_s: float, stop: asyncio.Event, out: list[Probe]) -> None:
        tasks = []
        while not stop.is_set():
            tasks.append(asyncio.create_task(self.one()))
            await asyncio.sleep(period_s)
        out.extend(await asyncio.gather(*tasks))


def freshness(probes: list[Probe]) -> dict[str, Any]:
    """p50 / p99 / max of the probes, the lost ones counting as infinitely late."""
    ms = np.array([p.ms if p.ms is not None else math.inf for p in probes])

    def q(x: float) -> float | None:
        v = float(np.quantile(ms, x, method="higher")) if len(ms) else math.nan
        return round(v, 1) if math.isfinite(v) else None

    return {"probes": len(probes), "lost": int(np.isinf(ms).sum()), "p50_ms": q(0.5), "p99_ms": q(0.99),
            "max_ms": q(1.0)}


# --- the reader under fixed offered rates ----------------------------------------------------------
def vegeta(bin_: str, targets: Path, rate: int, seconds: float, work: Path) -> dict[str, Any]:
    """One open-loop vegeta attack: latency percentiles (ms) over every request, status counts."""
    res = work / f"r{rate}-{uuid.uuid4().hex[:6]}.bin"
    with open(res, "wb") as out:
        subprocess.run([bin_, "attack", f"-targets={targets}", f"-rate={rate}/s", f"-duration={seconds}s",
                        "-timeout=10s"], stdout=out, check=True)
    csv = subprocess.run([bin_, "encode", "--to", "csv", str(res)], capture_output=True, text=True,
                         check=True).stdout
    res.unlink()
    codes: dict[str, int] = {}
    lat = []
    for line in csv.splitlines():
        parts = line.split(",")
        codes[parts[1]] = codes.get(parts[1], 0) + 1
        lat.append(int(parts[2]) / 1e6)
    a = np.array(lat) if lat else np.array([math.nan])
    total = sum(codes.values())
    return {"offered_per_s": rate, "requests": total, "p50_ms": round(float(np.quantile(a, 0.5)), 2),
            "p99_ms": round(float(np.quantile(a, 0.99)), 2), "p999_ms": round(float(np.quantile(a, 0.999)), 2),
            "max_ms": round(float(a.max()), 2), "status": codes,
            # The overload target: answered (shed or degraded included) within 50 ms.
            "within_50ms": round(float(np.mean(a <= 50.0)), 4) if lat else 0.0,
            "success": round(codes.get("200", 0) / total, 4) if total else 0.0,
            "shed": codes.get("503", 0)}


def reader_targets(base: str, users: list[str], n: int, path: Path, seed: int) -> Path:
    rng = random.Random(seed)
    pool = sorted(set(users))
    path.write_text("".join(f"GET {base}/v1/recommendations/{rng.choice(pool)}?n={n}\n" for _ in range(20_000)))
    return path


# --- one phase: one code tree measured end to end -----------------------------------------------
class CpuMeter:
    """Where the machine's CPU went during a window: each named process's share of one core and
    the whole machine's busy share of all its cores (from /proc; the rest of the busy time is the
    load generators, the profiler and anything else on the machine)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.t0 = time.monotonic()
        self.p0 = {name: self._proc(pid) for name, pid in self.pids.items()}
        self.m0 = self._machine()

    @staticmethod
    def _proc(pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    @staticmethod
    def _machine() -> tuple[float, float]:
        cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = cpu[3] + cpu[4]  # idle + iowait
        return float(sum(cpu) - idle), float(sum(cpu))

    def read(self) -> dict[str, float]:
        """Percent of one core per process, and ``machine_busy_pct`` of all cores."""
        dt = time.monotonic() - self.t0
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            a, b = self.p0[name], self._proc(pid)
            if a is not None and b is not None and dt > 0:
                out[f"{name}_cpu_pct"] = round(100 * (b - a) / dt, 1)
        (busy0, all0), (busy1, all1) = self.m0, self._machine()
        if all1 > all0:
            out["machine_busy_pct"] = round(100 * (busy1 - busy0) / (all1 - all0), 1)
        return out


def stack_pids(s: Settings) -> dict[str, int | None]:
    """Pids of the local stack's broker and Redis (None when they are not ours to see)."""
    home = Path(s.home).resolve()
    out: dict[str, int | None] = {}
    for name, pidfile in (("kafka", home / "kafka" / "kafka.pid"), ("redis", home / "redis" / "redis.pid")):
        try:
            out[name] = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            out[name] = None
    return out


@dataclass
class Phase:
    name: str
    tree: Path
    s: Settings
    work: Path
    out: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)


def aof_rewrites(r: redis.Redis) -> int:
    """AOF rewrites Redis started since it started (``INFO persistence``)."""
    return int(r.info("persistence").get("aof_rewrites", 0))


def applied(r: redis.Redis, s: Settings) -> int:
    return int(r.hget(Keys(s.key_prefix).meta, "applied_events") or 0)


async def end_offsets(s: Settings, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


def reader_sweep(ph: Phase, plan: Plan, reader_proc: Proc, worker: Proc, targets: Path, probe_url: str,
                 procs: tuple[Proc, ...], vegeta_: str, profile: bool, label: str = "reader") -> dict[str, Any]:
    """The reader alone at each of ``plan.reader_rates`` (stops after the first saturated rate)."""
    base = probe_url.split("/v1/")[0]
    reader_pids = tree_pids(reader_proc.proc.pid)  # serve: the launcher, the front, the Python reader(s)
    reader_at: dict[str, Any] = {}
    saturated_at = None
    for rate in plan.reader_rates:
        if saturated_at is not None:
            reader_at[str(rate)] = {"offered_per_s": rate, "skipped": f"saturated at {saturated_at}/s"}
            continue
        degraded0 = metric_total(f"{base}/metrics", "driftrec_reader_degraded_answers")
        spy = py_spy(reader_proc, plan.reader_seconds, ph.work / f"reader-{rate}.txt") if profile else None
        meter = CpuMeter({**{f"reader{j or ''}": pid for j, pid in enumerate(reader_pids)},
                          "worker": worker.proc.pid, **stack_pids(ph.s)})
        res = vegeta(vegeta_, targets, rate, plan.reader_seconds, ph.work)
        res["cpu"] = meter.read()
        if spy is not None:
            spy.wait(60)
        res["degraded"] = int(metric_total(f"{base}/metrics", "driftrec_reader_degraded_answers") - degraded0)
        reader_at[str(rate)] = res
        print(f"[{ph.name}] {label} {rate}/s: p50 {res['p50_ms']} p99 {res['p99_ms']} p99.9 {res['p999_ms']} ms, "
              f"success {res['success']:.2%}, degraded {res['degraded']}; CPU {res['cpu']}", flush=True)
        if res["p99_ms"] > 1000 or res["success"] < 0.9:
            saturated_at = rate
        res["settle_s"] = settle(probe_url, procs)  # the next rate starts on an idle reader
    return reader_at


def max_rate_p99_10ms(reader_at: dict[str, Any]) -> int:
    ok = [int(k) for k, v in reader_at.items() if v.get("p99_ms") is not None and v["p99_ms"] <= 10
          and v["success"] >= 0.99]
    return max(ok) if ok else 0


def memory_mb(pid: int) -> dict[str, float]:
    """RSS of ``pid`` and its parts: private (anonymous) memory, and shared memory-mapped pages
    (files under /dev/shm count as shmem) that every process mapping them also counts."""
    out: dict[str, float] = {}
    names = {"VmRSS:": "rss_mb", "RssAnon:": "anon_mb", "RssFile:": "file_mb", "RssShmem:": "shmem_mb"}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0] + ":"
            if key in names:
                out[names[key]] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def run_phase(ph: Phase, plan: Plan, kcat: str, vegeta_: str, profile: bool = False) -> dict[str, Any]:
    s, r = ph.s, redis.Redis.from_url(ph.s.redis)
    ensure_topics(s.bootstrap, {s.clicks_topic: s.topic_partitions, s.dead_letter_topic: 1})
    clicks = Clicks(plan, kcat, s, ph.name)
    print(f"[{ph.name}] warm-up: {plan.warmup_events:,} live clicks through kcat ...", flush=True)
    users = clicks.warmup(plan.warmup_events)
    windows = [len(set(users[i: i + 2000])) for i in range(0, len(users) - 1999, 2000)]
    out: dict[str, Any] = {"distinct_users_per_2000_events": round(float(np.mean(windows)), 1),
                           "warmup_events": plan.warmup_events, "warmup_shoppers": len(set(users))}

    # The code measured: the tree as it is when its processes start (-dirty: uncommitted changes).
    out["commit"] = benchinfo.commit(ph.tree) if ph.tree == ROOT else None
    print(f"[{ph.name}] driftrec train (the defaults) ...", flush=True)
    started = time.monotonic()
    train = Proc(ph.tree, s, ["train"], ph.work / "train.log")
    if train.proc.wait(3600) != 0:
        raise SystemExit(f"driftrec train failed; see {train.log}:\n{train.log.read_text()[-3000:]}")
    out["train_seconds"] = round(time.monotonic() - started, 1)
    raw = r.get(Keys(s.key_prefix).model_current)
    if raw is None:
        raise SystemExit(f"driftrec train published no model; see {train.log}")
    version = raw.decode() if isinstance(raw, bytes) else str(raw)
    out["model_version"] = version
    out.update(model_shape(s, version))

    print(f"[{ph.name}] worker catches up on the warm-up log ...", flush=True)
    worker = Proc(ph.tree, s, ["worker"], ph.work / "worker.log")
    reader_proc = Proc(ph.tree, s, ["serve"], ph.work / "reader.log")
    base = f"http://127.0.0.1:{s.reader_port}"
    procs = (worker, reader_proc)
    marks: list[tuple[float, int]] = []

    def caught_up() -> bool:
        marks.append((time.perf_counter(), applied(r, s)))
        return marks[-1][1] >= plan.warmup_events

    wait_for(caught_up, 3600, "the worker to apply the warm-up log", procs)
    i0 = next(i for i, (_, a) in enumerate(marks) if a >= 0.05 * plan.warmup_events)
    (t0, a0), (t1, a1) = marks[i0], marks[-1]
    # A backlog fills every batch: the most the worker applies, not what it sustains fresh.
    out["worker_catchup_events_per_s"] = round((a1 - a0) / (t1 - t0), 1) if t1 > t0 else None
    wait_for(lambda: http_ok(f"{base}/readyz"), 120, "the reader", procs)

    # Reader alone: fixed offered rates, no writes.
    targets = reader_targets(base, users, plan.n, ph.work / "targets.txt", plan.seed)
    probe_url = f"{base}/v1/recommendations/{users[0]}?n={plan.n}"
    vegeta(vegeta_, targets, 100, 5.0, ph.work)  # warm the reader's caches; not recorded
    reader_at = reader_sweep(ph, plan, reader_proc, worker, targets, probe_url, procs, vegeta_, profile)
    out["reader"] = reader_at
    # Recommendations the compiled front (reader_native) ranked itself, not passed to Python.
    out["reader_front_answers"] = front_answers(f"{base}/metrics")
    out["reader_p99_ms_at"] = {k: v.get("p99_ms") for k, v in reader_at.items()}
    out["reader_max_rate_p99_10ms"] = max_rate_p99_10ms(reader_at)
    out["reader_rss_mb"] = reader_proc.rss_mb()
    if plan.more_reader_processes > 1 and ph.tree == ROOT:
        # The same sweep with `driftrec serve --workers N` (this tree's option; a baseline may
        # predate it), then the default reader again for the rest of the run.
        n = plan.more_reader_processes
        reader_proc.stop()
        multi = Proc(ph.tree, s, ["serve", "--workers", str(n)], ph.work / f"reader-{n}p.log")
        wait_for(lambda: http_ok(f"{base}/readyz"), 120, f"{n} reader processes", (worker, multi))
        time.sleep(5)  # every process loads the model on its own
        vegeta(vegeta_, targets, 100, 5.0, ph.work)
        multi_at = reader_sweep(ph, plan, multi, worker, targets, probe_url, (worker, multi), vegeta_, False,
                                label=f"{n} processes")
        out[f"reader_{n}_processes"] = {"p99_ms_at": {k: v.get("p99_ms") for k, v in multi_at.items()},
                                        "max_rate_p99_10ms": max_rate_p99_10ms(multi_at),
                                        "memory_mb": [memory_mb(pid) for pid in tree_pids(multi.proc.pid)[1:]],
                                        "rates": multi_at}
        multi.stop()
        reader_proc = Proc(ph.tree, s, ["serve"], ph.work / "reader-2.log")
        procs = (worker, reader_proc)
        wait_for(lambda: http_ok(f"{base}/readyz"), 120, "the reader", procs)
        vegeta(vegeta_, targets, 100, 5.0, ph.work)

    asyncio.run(writes(ph, plan, clicks, worker, reader_proc, r, base, targets, vegeta_, out, profile))
    out["dead_letters"] = asyncio.run(end_offsets(s, s.dead_letter_topic, 1))
    out["worker_rss_mb"] = worker.rss_mb()
    out["reader_rss_mb_end"] = reader_proc.rss_mb()
    out["redis_used_memory_mb"] = round(int(r.info("memory")["used_memory"]) / 2**20, 1)
    for p in procs:
        p.check()
        p.stop()
    return out


def model_shape(s: Settings, version: str) -> dict[str, Any]:
    """Factors of the published ALS model, the TF hidden width and the item count, read with the
    project's own model reader (chunked parts joined)."""
    from driftrec.online.model_cache import decode_array
    from driftrec.training.runner import make_publisher

    parts = make_publisher(s).read_version(version)
    y = decode_array(parts.get("item_factors"), "item_factors")
    hidden = None
    if parts.get("tf_layer0_weight") is not None:
        hidden = int(decode_array(parts["tf_layer0_weight"], "tf_layer0_weight").shape[1])
    return {"model_factors": int(y.shape[1]), "tf_hidden": hidden, "items": int(y.shape[0])}


async def drain(r: redis.Redis, s: Settings, published: int, worker: Proc, limit_s: float = 300.0) -> float:
    """Wait until the worker has applied ``published`` clicks (the warm-up log included)."""
    started = time.monotonic()
    while applied(r, s) < published and time.monotonic() - started < limit_s:
        worker.check()
        await asyncio.sleep(0.5)
    return round(time.monotonic() - started, 1)


async def worker_step(ph: Phase, plan: Plan, clicks: Clicks, prober: Prober, worker: Proc, r: redis.Redis,
                      rate: int, profile: bool, attempt: int) -> dict[str, Any]:
    """Clicks at ``rate`` for ``plan.step_seconds`` with freshness probes; does the worker keep up?"""
    s = ph.s
    stop = asyncio.Event()
    probes: list[Probe] = []
    a0, c0 = applied(r, s), time.monotonic()
    load = asyncio.create_task(clicks.run(rate, stop))
    probing = asyncio.create_task(prober.every(0.5, stop, probes))
    spy = py_spy(worker, plan.step_seconds, ph.work / f"worker-{rate}-{attempt}.txt") if profile else None
    meter = CpuMeter({"worker": worker.proc.pid, **stack_pids(s)})
    await asyncio.sleep(plan.step_seconds)
    cpu = meter.read()
    if spy is not None:
        await asyncio.to_thread(spy.wait, 60)
    a1, c1 = applied(r, s), time.monotonic()
    stop.set()
    await asyncio.gather(load, probing)
    f = freshness(probes)
    per_s = (a1 - a0) / (c1 - c0)
    keeps_up = per_s >= 0.97 * rate
    fresh = keeps_up and f["lost"] == 0 and f["p99_ms"] is not None and f["p99_ms"] <= 1000
    ph.series.setdefault("step_probes", []).extend((p.sent_at, p.ms, rate) for p in probes)
    print(f"[{ph.name}] worker at {rate}/s (try {attempt}): applied {per_s:,.0f}/s, freshness p99 "
          f"{f['p99_ms']} ms, lost {f['lost']}; CPU {cpu}", flush=True)
    worker.check()
    return {"offered_per_s": rate, "attempt": attempt, "applied_per_s": round(per_s, 1), **f,
            "keeps_up": keeps_up, "fresh": fresh, "cpu": cpu}


async def writes(ph: Phase, plan: Plan, clicks: Clicks, worker: Proc, reader_proc: Proc, r: redis.Redis,
                 base: str, targets: Path, vegeta_: str, out: dict[str, Any], profile: bool = False) -> None:
    s = ph.s
    t0 = time.monotonic()
    async with Prober(s, base, clicks.items, ph.name, t0) as prober:
        # Worker step-up: the highest fixed rate it keeps up with, freshness p99 <= 1 s.
        steps: list[dict[str, Any]] = []
        best = 0
        # A rate that fails is offered once more before the step-up stops: on a shared machine one
        # noisy moment (another process's burst) should not end the search; both tries are kept.
        for rate in plan.worker_rates:
            for attempt in (1, 2):
                step = await worker_step(ph, plan, clicks, prober, worker, r, rate, profile, attempt)
                steps.append(step)
                if step["fresh"]:
                    break
                await drain(r, s, clicks.sent + prober.sent, worker)
            if not steps[-1]["fresh"]:
                break
            best = rate
        out["worker_steps"] = steps
        out["worker_max_rate_fresh_1s"] = best
        # What the worker applies while it keeps every click fresh (the highest such step).
        out["worker_events_per_s"] = next((st["applied_per_s"] for st in steps
                                           if st["offered_per_s"] == best and st["fresh"]), 0.0)
        # Let the worker drain what the last step left before the 2,000/s window.
        out["drain_seconds"] = await drain(r, s, clicks.sent + prober.sent, worker)

        # 2,000 clicks/s: freshness, Redis stalls, then the reader under writes.
        r.config_set("slowlog-log-slower-than", 1000)
        r.config_set("slowlog-max-len", 100_000)  # every slow command of the window, not the last 128
        r.slowlog_reset()
        rewrites0 = aof_rewrites(r)
        stop = asyncio.Event()
        load = asyncio.create_task(clicks.run(plan.background_rate, stop))
        a0, c0 = applied(r, s), time.monotonic()
        probes: list[Probe] = []
        stop_probes = asyncio.Event()
        probing = asyncio.create_task(prober.every(0.4, stop_probes, probes))
        await asyncio.sleep(plan.freshness_seconds)
        stop_probes.set()
        await probing
        f = freshness(probes)
        first = min((p.sent_at for p in probes), default=0.0)
        ph.series["background_probes"] = [(p.sent_at - first, p.ms) for p in probes]
        out.update({"freshness_p50_ms": f["p50_ms"], "freshness_p99_ms": f["p99_ms"],
                    "freshness_max_ms": f["max_ms"], "freshness_lost": f["lost"], "freshness_probes": f["probes"]})
        print(f"[{ph.name}] freshness at {plan.background_rate}/s: {f}", flush=True)
        degraded0 = metric_total(f"{base}/metrics", "driftrec_reader_degraded_answers")
        rewrites1 = aof_rewrites(r)
        res = await asyncio.to_thread(vegeta, vegeta_, targets, plan.under_writes_rate, plan.under_writes_seconds,
                                      ph.work)
        res["degraded"] = int(metric_total(f"{base}/metrics", "driftrec_reader_degraded_answers") - degraded0)
        # An AOF rewrite forks Redis and rewrites the dataset (a core for ~0.5-1 s): say whether
        # one fell in this window, since it moves the tail (driftrec/stack/local.py).
        res["redis_aof_rewrites"] = aof_rewrites(r) - rewrites1
        a1, c1 = applied(r, s), time.monotonic()
        stop.set()
        await load
        out["reader_under_writes"] = res
        out["reader_p99_ms_under_writes"] = res["p99_ms"]
        out["background_events_per_s"] = round((a1 - a0) / (c1 - c0), 1)
        slow = r.slowlog_get(100_000)
        out["redis_slowest_command_ms"] = round(max((e["duration"] for e in slow), default=0) / 1000, 2)
        out["redis_commands_over_1ms"] = len(slow)
        out["redis_aof_rewrites"] = aof_rewrites(r) - rewrites0  # in the whole 2,000 clicks/s window
        out["redis_latest_fork_ms"] = round(int(r.info("stats").get("latest_fork_usec", 0)) / 1000, 2)
        out["redis_slowest_commands"] = [
            {"ms": round(e["duration"] / 1000, 2), "command": e["command"][:60].decode(errors="replace")
             if isinstance(e["command"], bytes) else str(e["command"])[:60]}
            for e in sorted(slow, key=lambda e: -e["duration"])[:5]]
        print(f"[{ph.name}] reader at {plan.under_writes_rate}/s under writes: p99 {res['p99_ms']} ms; slowest "
              f"Redis command {out['redis_slowest_command_ms']} ms", flush=True)
        worker.check()
        reader_proc.check()


# --- the report --------------------------------------------------------------------------------
FLAT = ("model_factors", "tf_hidden", "items", "distinct_users_per_2000_events", "worker_events_per_s",
        "worker_max_rate_fresh_1s", "worker_catchup_events_per_s", "background_events_per_s", "freshness_p50_ms", "freshness_p99_ms",
        "freshness_lost", "redis_slowest_command_ms", "reader_p99_ms_at", "reader_max_rate_p99_10ms",
        "reader_p99_ms_under_writes")


def plot(result: dict[str, Any], series: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res, style in (("this tree", result, "-"), (f"baseline {result.get('baseline', {}).get('ref', '')}",
                                                          result.get("baseline"), "--")):
        if not res:
            continue
        rows = [(int(k), v) for k, v in res["reader"].items() if "p99_ms" in v]
        for q, colour in (("p50_ms", "tab:blue"), ("p99_ms", "tab:orange"), ("p999_ms", "tab:red")):
            ax1.plot([k for k, _ in rows], [v[q] for _, v in rows], style, marker="o", color=colour,
                     label=f"{q[:-3]} ({name})")
    ax1.set(xscale="log", yscale="log", xlabel="offered req/s (open loop)", ylabel="latency, ms",
            title="reader alone: GET /v1/recommendations, n=20")
    ax1.axhline(10, color="grey", lw=0.5)
    ax1.legend(fontsize=7)
    for name, style in (("current", "o"), ("baseline", "x")):
        ser = series.get(name)
        if not ser:
            continue
        pts = ser.get("background_probes", [])
        ax2.plot([t for t, _ in pts], [m if m is not None else 30_000 for _, m in pts], style, ms=3,
                 label=f"{name} at 2,000 clicks/s (lost plotted at 30 s)")
    ax2.set(yscale="log", xlabel="seconds into the 2,000 clicks/s window", ylabel="click -> reader shows it, ms",
            title="freshness")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(result: dict[str, Any]) -> str:
    """The README's performance table, from a result file (``--table``)."""
    b = result.get("baseline")
    plan = result["plan"]

    def ms(v: Any) -> str:
        return "—" if v is None else f"{v:,.1f} ms" if v < 100 else f"{v:,.0f} ms"

    def reader(res: dict[str, Any], rate: str) -> str:
        r = res["reader"].get(rate, {})
        if "p99_ms" not in r:
            return "saturated"
        shed = r.get("degraded", 0) / max(r["requests"], 1)
        return (f"p50 {ms(r['p50_ms'])}, p99 {ms(r['p99_ms'])}, p99.9 {ms(r['p999_ms'])}"
                + (f", {shed:.0%} degraded" if shed >= 0.005 else "")
                + (f", {1 - r['success']:.1%} errors" if r["success"] < 0.9995 else ""))

    def fresh(res: dict[str, Any]) -> str:
        return (f"p50 {ms(res['freshness_p50_ms'])}, p99 {ms(res['freshness_p99_ms'])}, "
                f"{res['freshness_lost']} of {res['freshness_probes']} lost")

    def overload(res: dict[str, Any]) -> str:
        top = res.get("reader_max_rate_p99_10ms")
        r = res["reader"].get(str(2 * top), {}) if top else {}
        if "within_50ms" not in r:
            return "—"
        return f"{r['within_50ms']:.1%} at {2 * top:,} req/s"

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("worker: clicks/s applied at the highest offered rate it keeps fresh (p99 ≤ 1 s)",
         lambda r: f"{r['worker_events_per_s']:,.0f} clicks/s"),
        ("worker, catching up on a backlog (full batches)",
         lambda r: f"{r.get('worker_catchup_events_per_s') or r.get('worker_events_per_s'):,.0f} clicks/s"),
        (f"freshness at {plan['background_rate']:,} clicks/s (click acked → reader shows it)", fresh),
        ("longest single Redis command at that load", lambda r: ms(r["redis_slowest_command_ms"])),
        *[(f"reader alone, {rate} req/s offered", (lambda rt: lambda r: reader(r, rt))(str(rate)))
          for rate in plan["reader_rates"]],
        ("reader, highest offered rate with p99 ≤ 10 ms", lambda r: f"{r['reader_max_rate_p99_10ms']:,} req/s"),
        ("reader at twice that rate: answered within 50 ms (degraded included)", overload),
        *[(f"`serve --workers {n}`, highest offered rate with p99 ≤ 10 ms",
           (lambda key: lambda r: f"{r[key]['max_rate_p99_10ms']:,} req/s" if key in r else "—")(
               f"reader_{n}_processes"))
          for n in sorted({int(k.split("_")[1]) for k in result if k.startswith("reader_") and k.endswith("_processes")})],
        (f"reader at {plan['under_writes_rate']} req/s while {plan['background_rate']:,} clicks/s arrive",
         lambda r: reader({"reader": {"x": r["reader_under_writes"]}}, "x")
         + (" (an AOF rewrite in the window)" if r["reader_under_writes"].get("redis_aof_rewrites") else "")),
    ]
    head = f"| | this version ({result['commit'][:7]}) |" + (f" before ({b['commit'][:7]}) |" if b else "")
    out = [head, "|---|---|" + ("---|" if b else "")]
    for name, cell in rows:
        out.append(f"| {name} | {cell(result)} |" + (f" {cell(b)} |" if b else ""))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-ref", help="also measure commit REF on the same stack in the same run")
    ap.add_argument("--quick", action="store_true", help="a small run to check the harness (numbers not comparable)")
    ap.add_argument("--out", type=Path, help="result file (default benchmarks/results/system.json)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the worker at each step and the reader at each rate (raw profiles in the "
                         "logs folder; the profiler's CPU perturbs the numbers)")
    ap.add_argument("--reader-rates", help="comma-separated offered rates for the reader alone (default: the plan's)")
    ap.add_argument("--table", type=Path, metavar="RESULT",
                    help="print the README's table from a result file and stop")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    plan = Plan.quick() if args.quick else Plan()
    if args.reader_rates:
        plan = dataclasses.replace(plan, reader_rates=tuple(int(x) for x in args.reader_rates.split(",")))
    out_path = args.out or RESULTS / ("system_quick.json" if args.quick else "system.json")
    kcat, vegeta_ = kcat_bin(), vegeta_bin()
    machine = benchinfo.machine(("faust", "aiokafka", "redis", "numpy"))
    result: dict[str, Any] = {"commit": benchinfo.commit(ROOT), "machine": machine}
    series: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="driftrec-system-work-"))
    print(f"logs under {work}", flush=True)
    with services() as stack:
        # The local stack runs Redis at the priority `local_redis_priority` asks (normal by
        # default); recorded because Redis' longest command depends on it.
        from driftrec.stack.local import LocalStack
        result["redis_cpu_priority"] = next((st.priority for st in LocalStack(stack).status()
                                             if st.name == "redis"), None)
        phases = [("current", None)] + ([("baseline", args.baseline_ref)] if args.baseline_ref else [])
        for name, ref in phases:
            tag = uuid.uuid4().hex[:8]
            s = stack.model_copy(update={
                "clicks_topic": f"sys-{tag}.clicks", "dead_letter_topic": f"sys-{tag}.dlq",
                "consumer_group": f"sys-{tag}", "key_prefix": f"sys{tag}",
                "worker_web_port": _free_port(), "worker_metrics_port": _free_port(),
                "reader_port": _free_port(),
            })
            (work / name).mkdir()
            with code_tree(ref) as tree:
                ph = Phase(name, tree, s, work / name)
                res = run_phase(ph, plan, kcat, vegeta_, args.profile)
            series[name] = ph.series
            if ref is None:
                result.update(res)  # its "commit" is the tree's when its processes started
            else:
                res["commit"] = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True,
                                               text=True).stdout.strip()
                result["baseline"] = {"ref": ref, **res}
    result["shoppers"] = plan.shoppers
    result["plan"] = {k: getattr(plan, k) for k in plan.__dataclass_fields__}
    result["machine"]["load_avg_at_end"] = list(os.getloadavg())
    if "baseline" in result:
        b = result["baseline"]
        result["ratios"] = {k: (round(result[k] / b[k], 2) if isinstance(result.get(k), int | float)
                                and isinstance(b.get(k), int | float) and b[k] else None)
                            for k in ("worker_events_per_s", "worker_catchup_events_per_s", "reader_max_rate_p99_10ms")}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, series, out_path.with_suffix(".png"))
    print(json.dumps({k: result.get(k) for k in FLAT}, indent=1))
    print(f"wrote {out_path} and {out_path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
