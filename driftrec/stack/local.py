"""Start, probe and stop a single-node Kafka (KRaft) broker and a Redis server on loopback.

Kafka runs from its Maven Central jars: ``kafka-pom.xml`` (shipped beside this module) is resolved
once with ``mvn dependency:copy-dependencies`` into a cache folder shared by every checkout
(``$DRIFTREC_CACHE`` or ``~/.cache/driftrec``), so later starts never touch the network. Storage
is formatted with Kafka's own ``kafka.tools.StorageTool``. Redis is Debian's ``redis-server``
(installed with apt-get when missing and we are root), with the append-only file on.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from driftrec.errors import StackError
from driftrec.settings import Settings

__all__ = ["AOF_REWRITE_ARGS", "LocalStack", "ServiceStatus", "cache_dir", "priority_of", "raise_priority"]

#: When Redis compacts its append-only file: once the file has grown to 5x what the last
#: rewrite left (and past 256 MB), not Redis' default 2x (and 64 MB). Each rewrite forks Redis
#: (a pause of ~6 ms at ~100 MB) and the child rewrites the whole dataset, a core for ~1 s: on
#: two shared cores, at 2,000 clicks/s (~3.4 MB of AOF a second), the default rewrote every
#: ~25 s and each rewrite put the reader's p99 at 60-80 ms for ~1.5 s (docs/experiments.md).
#: The file can take up to ~5x the dataset on disk between rewrites; a restart replays it.
#: Uncompressed, the rewrite's RDB preamble is ~20 % larger and takes half the child's time
#: (0.41 vs 0.83 s for a 75 MB dataset here).
AOF_REWRITE_ARGS = ("--auto-aof-rewrite-percentage", "400", "--auto-aof-rewrite-min-size", "256mb",
                    "--rdbcompression", "no")

logger = logging.getLogger(__name__)

_KAFKA_MAIN = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"


def raise_priority(pid: int, mode: str) -> str:
    """Give the thread ``pid`` (Redis' command thread) the CPU priority ``mode`` names
    (setting ``local_redis_priority``) and return the policy it runs under.

    Redis runs one command at a time: when the kernel preempts its thread for the worker, the
    reader or Kafka on the same cores, the command it was running stalls every client for the
    rest of the time slice (``SLOWLOG`` showed 50-400 ms on two shared cores; with SCHED_FIFO the
    same load's longest command was 6 ms, ``docs/write-path.md``). ``SCHED_RESET_ON_FORK``
    keeps a fork (snapshot, AOF rewrite) at normal priority. Best effort: without the right to
    raise it (root or CAP_SYS_NICE) Redis stays as it is, with a warning.
    """
    try:
        if mode == "realtime":
            os.sched_setscheduler(pid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(10))
            return "SCHED_FIFO 10"
        if mode == "high":
            os.setpriority(os.PRIO_PROCESS, pid, -10)
            return "nice -10"
    except OSError as exc:  # EPERM without CAP_SYS_NICE; a container may forbid real-time
        logger.warning("could not raise the local Redis' CPU priority to %s (%s); it runs at normal priority, "
                       "and its commands may stall while other processes use the cores", mode, exc)
    return "normal"


def cache_dir() -> Path:
    """Where the Kafka jars are kept between checkouts."""
    root = os.environ.get("DRIFTREC_CACHE") or os.path.join(Path.home(), ".cache", "driftrec")
    return Path(root)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    running: bool
    ready: bool
    priority: str | None = None

    def line(self) -> str:
        state = "ready" if self.ready else ("starting" if self.running else "stopped")
        pid = f"pid {self.pid}" if self.pid else "no pid"
        cpu = f"  cpu priority: {self.priority}" if self.priority else ""
        return f"{self.name:6} {self.address:24} {state:9} {pid}{cpu}"


def priority_of(pid: int | None) -> str | None:
    """The CPU policy thread ``pid`` runs under, as :func:`raise_priority` names it."""
    if not _pid_alive(pid):
        return None
    assert pid is not None
    try:
        policy = os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK
        if policy == os.SCHED_FIFO:
            return f"SCHED_FIFO {os.sched_getparam(pid).sched_priority}"
        nice = os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None
    return f"nice {nice}" if nice else "normal"


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class LocalStack:
    """The embedded stack under ``settings.home``: ``up()``, ``down()``, ``status()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = Path(settings.home).resolve()
        self.kafka_dir = self.home / "kafka"
        self.redis_dir = self.home / "redis"
        #: The CPU policy the local Redis runs under once :meth:`up` returns (``raise_priority``).
        self.redis_priority: str | None = None

    # --- public ---------------------------------------------------------------------------
    def up(self, timeout_s: float = 120.0) -> None:
        """Start whatever is not running yet and wait until both services answer."""
        self.home.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        self._start_kafka()
        deadline = time.monotonic() + timeout_s
        self._wait(self._redis_ready, deadline, "Redis", self.redis_dir / "redis.log")
        # Once it answers, its helper threads (AOF fsync, lazy free) exist and keep their policy.
        pid = _read_pid(self.redis_dir / "redis.pid")
        if pid is not None:
            self.redis_priority = raise_priority(pid, self.settings.local_redis_priority)
        self._wait(self._kafka_ready, deadline, "Kafka", self.kafka_dir / "logs" / "server.log")

    def down(self, timeout_s: float = 30.0) -> None:
        """Stop both services cleanly (SIGTERM, then SIGKILL after ``timeout_s``)."""
        for name, pidfile in (("kafka", self.kafka_dir / "kafka.pid"), ("redis", self.redis_dir / "redis.pid")):
            pid = _read_pid(pidfile)
            if _pid_alive(pid):
                assert pid is not None
                logger.info("stopping %s (pid %d)", name, pid)
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            pidfile.unlink(missing_ok=True)

    def status(self) -> list[ServiceStatus]:
        s = self.settings
        kpid = _read_pid(self.kafka_dir / "kafka.pid")
        rpid = _read_pid(self.redis_dir / "redis.pid")
        return [
            ServiceStatus("kafka", s.bootstrap, kpid, _pid_alive(kpid), self._kafka_ready()),
            ServiceStatus("redis", s.redis, rpid, _pid_alive(rpid), self._redis_ready(), priority_of(rpid)),
        ]

    # --- Redis ----------------------------------------------------------------------------
    def _redis_binary(self) -> str:
        found = shutil.which("redis-server")
        if found:
            return found
        if os.geteuid() == 0 and shutil.which("apt-get"):
            logger.info("redis-server missing: installing Debian's package")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env, check=False,
                           stdout=subprocess.DEVNULL)
            found = shutil.which("redis-server")
            if not found:
                subprocess.run(["apt-get", "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL)
                subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env, check=False,
                               stdout=subprocess.DEVNULL)
                found = shutil.which("redis-server")
        if not found:
            raise StackError(
                "redis-server not found. Install it (Debian/Ubuntu: apt-get install redis-server) "
                "or set REDIS_URL to an existing Redis."
            )
        return found

    def _start_redis(self) -> None:
        pidfile = self.redis_dir / "redis.pid"
        if _pid_alive(_read_pid(pidfile)):
            return
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        port = self.settings.redis_port
        if _port_open(port):
            raise StackError(f"port {port} is taken by another process; set DRIFTREC_REDIS_PORT")
        cmd = [
            self._redis_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(self.redis_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            *AOF_REWRITE_ARGS, "--save", "", "--daemonize", "no", "--logfile", str(self.redis_dir / "redis.log"),
            "--protected-mode", "yes",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)
        pidfile.write_text(str(proc.pid))

    def _redis_ready(self) -> bool:
        import redis

        try:
            client = redis.Redis.from_url(self.settings.redis, socket_timeout=1.0, socket_connect_timeout=1.0)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    # --- Kafka ----------------------------------------------------------------------------
    def kafka_classpath(self) -> str:
        """Resolve (once) the broker's jars with Maven and return the Java classpath."""
        if not shutil.which("java"):
            raise StackError("java not found: the local Kafka broker needs Java 17+ (apt-get install openjdk-17-jre-headless)")
        version = self.settings.kafka_version
        lib = cache_dir() / f"kafka-{version}" / "lib"
        marker = lib.parent / ".complete"
        if not marker.exists():
            if not shutil.which("mvn"):
                raise StackError("mvn not found: Maven is needed once to fetch Kafka's jars (apt-get install maven)")
            lib.mkdir(parents=True, exist_ok=True)
            pom = resources.files("driftrec.stack").joinpath("kafka-pom.xml")
            with resources.as_file(pom) as pom_path:
                logger.info("fetching Apache Kafka %s jars with Maven into %s", version, lib)
                proc = subprocess.run(
                    ["mvn", "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
                     f"-DoutputDirectory={lib}", "-DincludeScope=runtime", f"-Dkafka.version={version}"],
                    capture_output=True, text=True,
                )
            if proc.returncode != 0:
                raise StackError(f"Maven could not fetch Kafka {version}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            marker.write_text(version)
        return os.pathsep.join(str(p) for p in sorted(lib.glob("*.jar")))

    def _server_properties(self) -> Path:
        s = self.settings
        data = self.kafka_dir / "data"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": str(s.topic_partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "-1",  # the clicks topic is the replayable log; see README
            "log.segment.bytes": str(256 * 1024 * 1024),
        }
        path = self.kafka_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _start_kafka(self) -> None:
        pidfile = self.kafka_dir / "kafka.pid"
        if _pid_alive(_read_pid(pidfile)):
            return
        for port in (self.settings.kafka_port, self.settings.kafka_controller_port):
            if _port_open(port):
                raise StackError(f"port {port} is taken by another process; set DRIFTREC_KAFKA_PORT / _CONTROLLER_PORT")
        classpath = self.kafka_classpath()
        logs = self.kafka_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = self._server_properties()
        java = ["java", "-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dkafka.logs.dir={logs}",
                f"-Dlog4j2.configurationFile={resources.files('driftrec.stack').joinpath('log4j2.xml')}",
                "-cp", classpath]
        if not (self.kafka_dir / "data" / "meta.properties").exists():
            cluster_id = subprocess.run(java + [_STORAGE_TOOL, "random-uuid"], capture_output=True,
                                        text=True, check=True).stdout.strip().splitlines()[-1]
            fmt = subprocess.run(java + [_STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(props),
                                         "--standalone"], capture_output=True, text=True)
            if fmt.returncode != 0:
                raise StackError(f"Kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        out = open(logs / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(java + [_KAFKA_MAIN, str(props)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        pidfile.write_text(str(proc.pid))

    def _kafka_ready(self) -> bool:
        if not _port_open(self.settings.kafka_port):
            return False
        from driftrec.kafka_admin import broker_ready

        return broker_ready(self.settings.bootstrap)

    def _wait(self, probe: Callable[[], bool], deadline: float, name: str, log: Path) -> None:
        while time.monotonic() < deadline:
            if probe():
                return
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        print(tail, file=sys.stderr)
        raise StackError(f"{name} did not become ready in time; see {log}")
