"""Where the integration suite's Kafka and Redis come from, and child processes of driftrec.

Order: KAFKA_BOOTSTRAP_SERVERS / REDIS_URL from the environment -> testcontainers when a Docker
engine answers -> the embedded local stack (Kafka from its Maven jars, Debian's redis-server).
A service that cannot be reached is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from driftrec.settings import Settings, load_settings
from tools.chaos.procs import Child, wait_http
from tools.chaos.stack import free_port

__all__ = ["free_port", "docker_answers", "provide_services", "Proc", "wait_http", "ROOT"]

ROOT = Path(__file__).resolve().parents[2]


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def provide_services() -> Iterator[Settings]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL"):
        yield load_settings()
        return
    if docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        kport, rport = free_port(), free_port()
        kafka = (DockerContainer("apache/kafka:4.1.1").with_bind_ports(9092, kport)
                 .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{kport}"))
        redis_c = DockerContainer("redis:7").with_bind_ports(6379, rport)
        with kafka, redis_c:
            wait_for_logs(kafka, "Kafka Server started", timeout=120)
            yield load_settings(kafka_bootstrap_servers=f"127.0.0.1:{kport}",
                                redis_url=f"redis://127.0.0.1:{rport}/0")
        return
    from driftrec.stack import LocalStack

    # A fresh broker per session, in a folder of its own: stale data from an earlier run must not
    # leak into this one, and two runs side by side must not stop each other's services.
    home = ROOT / ".driftrec-test" / f"run-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    base = load_settings(home=home, kafka_port=free_port(), kafka_controller_port=free_port(),
                         redis_port=free_port())
    stack = LocalStack(base)
    stack.up()
    try:
        yield load_settings(kafka_bootstrap_servers=base.bootstrap, redis_url=base.redis, home=home)
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


class Proc(Child):
    """A driftrec subcommand in a child process started at once from the project root, with
    settings passed through the environment (:class:`tools.chaos.procs.Child`)."""

    def __init__(self, settings: Settings, args: list[str], log: Path) -> None:
        super().__init__(settings, args, log, cwd=ROOT)
        self.start()
