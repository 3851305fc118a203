"""``driftrec serve --workers 2``: two reader processes on one port, one set of metrics, one stop."""

from __future__ import annotations

import os
import re
import time
import urllib.request

import orjson
import pytest

from driftrec.publisher import publish_events
from driftrec.settings import Settings
from tests.integration.services import wait_http

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


def test_two_processes_answer_on_one_port_and_report_together(settings: Settings, spawn) -> None:  # type: ignore[no-untyped-def]
    spawn(["worker"])
    reader = spawn(["serve", "--workers", "2"])
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
    assert served() - before == 40  # counted once each, whichever process answered

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
