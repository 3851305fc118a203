"""Prometheus' own promtool on deploy/prometheus: config syntax, rule syntax and rule unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's ``prometheus`` package ships promtool; installed when missing and we are root."""
    found = shutil.which("promtool")
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"],
                    ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]):
            subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL)
            found = shutil.which("promtool")
            if found:
                break
    assert found, "promtool missing: apt-get install prometheus"
    return found


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]], ids=["config", "rules", "rule-tests"])
def test_promtool(promtool: str, args: list[str]) -> None:
    proc = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
