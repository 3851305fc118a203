"""``driftrec serve --workers 2``: two reader processes on one port, one set of metrics, one stop."""

from __future__ import annotations

import os
import re
import time
import urllib.request

import numpy as np
import orjson
import pytest
import redis

from driftrec.keys import Keys
from driftrec.publisher import publish_events
from driftrec.settings import Settings
from tests.integration.services import wait_http
from tests.integration.test_reader_support import publish_model

pytestmark = pytest.mark.integration


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_processes_answer_on_one_port_and_report_together(settings: Settings, spawn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(3)] + [f"x{j}" for j in range(97)]
    client = redis.Redis.from_url(settings.redis)
    publish_model(client, Keys(settings.key_prefix), "m1", items, rng.normal(size=(100, 8)),
                  user_ids=[f"u{j}" for j in range(5)], U=rng.normal(size=(5, 8)))
    client.close()
    models = tmp_path / "models"
    spawn(["worker"])
    # The Python reader's processes themselves, on the port (the compiled front would sit in front
    # of them and answer the recommendations: tests/integration/test_reader_native.py).
    reader = spawn(["serve", "--workers", "2"], settings.model_copy(update={"reader_model_dir": str(models),
                                                                            "reader_native": False}))
    base = f"http://127.0.0.1:{settings.reader_port}"
    wait_http(f"{base}/readyz", 60, reader)
    publish_events(settings, [{"event_id": f"e{i}", "user_id": f"u{i % 5}", "item_id": f"i{i % 3}",
                               "type": "view", "timestamp": 1_700_000_000.0 + i} for i in range(30)])
    # Both processes must be up before counting: each reports its own snapshot-age gauge.
    deadline = time.monotonic() + 60
    pids: set[str] = set()
    while time.monotonic() < deadline and len(pids) < 2:
        for _ in range(20):  # new connections spread over the processes
            _get(f"{base}/healthz")
        pids = set(re.findall(r'driftrec_reader_snapshot_age_seconds\{pid="(\d+)"\}', _get(f"{base}/metrics").decode()))
        time.sleep(0.5)
    assert len(pids) == 2, f"expected two reader processes, saw {pids}\n{reader.tail()}"
    assert {int(p) for p in pids} == set(_children(reader.proc.pid)) & {int(p) for p in pids}

    def served() -> float:
        text = _get(f"{base}/metrics").decode()
        return sum(float(v) for v in re.findall(
            r'driftrec_reader_requests_total\{endpoint="/v1/recommendations/\{user_id\}",method="GET",status="200"\} (\S+)', text))

    before = served()
    for i in range(40):
        body = orjson.loads(_get(f"{base}/v1/recommendations/u{i % 5}?n=3"))
        assert body["user_id"] == f"u{i % 5}" and len(body["items"]) <= 3
        assert body["model_version"] == "m1"
    assert served() - before == 40  # counted once each, whichever process answered
    # The model was built once, into the shared folder both processes map.
    built = [d for d in models.iterdir() if d.is_dir() and (d / "manifest.json").exists()]
    assert len(built) == 1 and built[0].name.startswith("m1-")
    log = reader.log.read_text(errors="replace")
    this_run = log[log.rfind("==== start"):]  # the log file collects every run of this test
    assert this_run.count("built and shared") == 1, reader.tail()

    children = _children(reader.proc.pid)
    assert len(children) >= 2
    assert reader.stop(30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.2)
    assert not any(_alive(c) for c in children), "reader processes outlived `driftrec serve`"


def test_bad_process_count_is_a_clear_error(settings: Settings, spawn) -> None:  # type: ignore[no-untyped-def]
    reader = spawn(["serve", "--workers", "-1"])
    assert reader.proc.wait(60) == 2
    assert "--workers" in reader.tail()
