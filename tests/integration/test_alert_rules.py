"""Prometheus' own promtool on deploy/prometheus: config syntax, rule syntax and rule unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.debian import debian_tool

pytestmark = pytest.mark.integration

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's ``prometheus`` package ships promtool."""
    return debian_tool("promtool", "prometheus")


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]], ids=["config", "rules", "rule-tests"])
def test_promtool(promtool: str, args: list[str]) -> None:
    proc = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
