"""The local stack's Redis: append-only, with rewrites that do not come every few seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from driftrec.settings import Settings
from driftrec.stack import local
from driftrec.stack.local import AOF_REWRITE_ARGS, LocalStack

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _pairs(args: list[str] | tuple[str, ...]) -> dict[str, str]:
    return {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}


def test_rewrites_wait_for_five_times_the_data_uncompressed() -> None:
    got = _pairs(AOF_REWRITE_ARGS)
    assert got == {"--auto-aof-rewrite-percentage": "400", "--auto-aof-rewrite-min-size": "256mb",
                   "--rdbcompression": "no"}


def test_the_local_stack_starts_redis_with_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    class FakePopen:
        pid = 12345

        def __init__(self, cmd: list[str], **_: Any) -> None:
            started.append(cmd)

    monkeypatch.setattr(local.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(local, "_port_open", lambda port: False)
    monkeypatch.setattr(LocalStack, "_redis_binary", lambda self: "redis-server")
    LocalStack(Settings(home=tmp_path, redis_port=1))._start_redis()
    (cmd,) = started
    opts = _pairs(cmd)
    assert opts["--appendonly"] == "yes" and opts["--appendfsync"] == "everysec"
    assert _pairs(AOF_REWRITE_ARGS).items() <= opts.items()


def test_compose_runs_redis_the_same_way() -> None:
    cmd = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]["command"]
    assert _pairs(AOF_REWRITE_ARGS).items() <= _pairs(cmd).items()
