"""Services of one chaos run alone (own folder, own ports), so killing them hurts nobody else.

:class:`PrivateStack` is a :class:`driftrec.stack.LocalStack` (Kafka KRaft + Redis with AOF
``everysec``) under a unique home on free ports; :class:`PrivateRedis` is a Redis server only,
with the same persistence, for tests that share the suite's broker.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from driftrec.errors import StackError
from driftrec.settings import Settings, load_settings

__all__ = ["PrivateStack", "PrivateRedis", "LocalRedisCluster", "free_port", "drop_aof_tail"]

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A free loopback port *below* the kernel's ephemeral range, for a server.

    A port from the ephemeral range (what binding port 0 gives) can be taken while its server is
    down: a client retrying its connection there may be handed that very port as its own source
    port, and Linux then connects the socket to itself (TCP simultaneous open). The restarted
    server finds its port held by the client. A chaos run lost its Redis restart that way.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise StackError(f"no free port between 10000 and {low}")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, 10_100)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except (ProcessLookupError, OSError):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _ping(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class PrivateStack:
    """Kafka + Redis of one run under ``home``; the settings of its clients in :attr:`settings`."""

    def __init__(self, home: Path) -> None:
        from driftrec.stack import LocalStack

        self.home = Path(home)
        self.base = load_settings(home=self.home, kafka_port=free_port(), kafka_controller_port=free_port(),
                                  redis_port=free_port())
        self.stack = LocalStack(self.base)
        self.settings = load_settings(kafka_bootstrap_servers=self.base.bootstrap,
                                      redis_url=self.base.redis, home=self.home)

    def up(self, timeout_s: float = 180.0) -> None:
        self.stack.up(timeout_s)

    def down(self) -> None:
        for pid in (self.kafka_pid, self.redis_pid):  # a frozen service ignores SIGTERM
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
        self.stack.down()

    @property
    def redis_pid(self) -> int | None:
        return _read(self.stack.redis_dir / "redis.pid")

    @property
    def kafka_pid(self) -> int | None:
        return _read(self.stack.kafka_dir / "kafka.pid")

    # --- faults ---------------------------------------------------------------------------
    def kill9_redis(self) -> None:
        pid = self.redis_pid
        if not _alive(pid):
            raise StackError("Redis is not running")
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        _wait_gone(pid, 10)  # type: ignore[arg-type]

    def start_redis(self, timeout_s: float = 60.0) -> None:
        """Start Redis again (it replays its AOF) and wait until it answers."""
        self.stack.up(timeout_s)

    def drop_aof_tail(self, batches: int) -> int:
        """Cut the AOF of a stopped Redis back to before its last ``batches`` applied batches
        (and whatever came after them): what an OS crash loses with ``appendfsync everysec``."""
        return drop_aof_tail(self.stack.redis_dir, batches)

    def stop_kafka(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the broker (controlled shutdown) and wait for it to exit; SIGKILL if it hangs."""
        pid = self.kafka_pid
        if not _alive(pid):
            raise StackError("Kafka is not running")
        os.kill(pid, signal.SIGTERM)  # type: ignore[arg-type]
        if not _wait_gone(pid, timeout_s):  # type: ignore[arg-type]
            os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
            _wait_gone(pid, 10)  # type: ignore[arg-type]

    def start_kafka(self, timeout_s: float = 180.0) -> None:
        self.stack.up(timeout_s)

    def freeze_kafka(self, frozen: bool) -> None:
        os.kill(self.kafka_pid, signal.SIGSTOP if frozen else signal.SIGCONT)  # type: ignore[arg-type]


def drop_aof_tail(redis_dir: Path, batches: int) -> int:
    """Truncate the newest incremental AOF before the last ``batches`` MULTI blocks that count
    applied events; returns the bytes dropped.

    Scripts reach the AOF as their effects wrapped in MULTI/EXEC. A batch's events are counted
    (``HINCRBY ... applied_events``) by its last script: the one script of a batch applied whole,
    or the finish of a batch applied in chunks (``streams/chunked.py``), whose begin and chunks
    come before it. Counting those blocks loses ``batches`` whole applied batches, plus any
    chunks of a batch still in flight after them, whatever the chunking.
    """
    incr = sorted((redis_dir / "appendonlydir").glob("*.incr.aof"), key=lambda p: p.stat().st_mtime)
    if not incr:
        raise StackError(f"no incremental AOF under {redis_dir}")
    path = incr[-1]
    data = path.read_bytes()
    marker = b"*1\r\n$5\r\nMULTI\r\n"
    cut, found = len(data), 0
    while found < batches:
        at = data.rfind(marker, 0, cut)
        if at < 0:
            break
        found += b"applied_events" in data[at:cut]
        cut = at
    with open(path, "r+b") as fh:
        fh.truncate(cut)
    return len(data) - cut


def _read(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class PrivateRedis:
    """A ``redis-server`` in ``workdir``: with the local stack's persistence (AOF everysec), or
    with ``persist=False`` none; ``config`` adds ``name value ...`` pairs (e.g.
    ``("zset-max-listpack-entries", "512")``)."""

    def __init__(self, workdir: Path, port: int | None = None, *, persist: bool = True,
                 config: Sequence[str] = ()) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.persist = persist
        self.config = tuple(config)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout_s: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             *(["--appendonly", "yes", "--appendfsync", "everysec"] if self.persist else ["--appendonly", "no"]),
             "--save", "", "--logfile", str(self.workdir / "redis.log"),
             *(f"--{a}" if i % 2 == 0 else a for i, a in enumerate(self.config))],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _ping(self.url):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise StackError(f"private redis-server on {self.port} did not start")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def settings_for(base: Settings, **update: object) -> Settings:
    """``base`` with ``update`` applied (a frozen settings object's copy)."""
    return base.model_copy(update=update)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    import random

    for _ in range(1000):
        port = random.randrange(20000, 55500)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise StackError("no free port pair for a cluster node")


class LocalRedisCluster:
    """``n`` ``redis-server --cluster-enabled yes`` nodes on free ports in ``workdir``, joined with
    ``redis-cli --cluster create ... --cluster-replicas 0`` (every node a primary)."""

    def __init__(self, workdir: Path, n: int = 3) -> None:
        self.workdir = Path(workdir)
        self.ports = [_cluster_port() for _ in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The cluster URL driftrec takes (every node as a seed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout_s: float = 60.0) -> None:
        for port in self.ports:
            d = self.workdir / str(port)
            d.mkdir(parents=True, exist_ok=True)
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000", "--appendonly", "no", "--save", "",
                 "--logfile", str(d / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            while not _ping(f"redis://127.0.0.1:{port}/0"):
                if time.monotonic() > deadline:
                    raise StackError(f"cluster node {port} did not start")
                time.sleep(0.05)
        create = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=timeout_s)
        if create.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}")
        while True:  # every node must see every slot covered before clients use it
            states = []
            for port in self.ports:
                client = redis.Redis(port=port, socket_timeout=1.0)
                try:
                    states.append(client.cluster("info").get("cluster_state"))
                finally:
                    client.close()
            if all(s == "ok" for s in states):
                return
            if time.monotonic() > deadline:
                raise StackError(f"cluster not ok: {states}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
