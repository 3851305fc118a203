"""docker-compose.yml runs the same system; no Docker engine here, so check its structure."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_images() -> None:
    services = _compose()["services"]
    assert {"kafka", "redis", "worker", "reader"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["redis"]["image"].startswith("redis:7")
    assert "--appendonly" in services["redis"]["command"]


def test_kafka_is_kraft_single_node() -> None:
    env = _compose()["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "CONTROLLER" in env["KAFKA_LISTENERS"]


def test_app_services_point_at_kafka_and_redis_and_wait_for_health() -> None:
    services = _compose()["services"]
    for name in ("worker", "reader"):
        svc = services[name]
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert svc["environment"]["REDIS_URL"].startswith("redis://redis:6379")
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["command"] == ["driftrec", "worker"]
    assert services["reader"]["command"][:2] == ["driftrec", "serve"]


def test_healthchecks_and_ports() -> None:
    services = _compose()["services"]
    for name in ("kafka", "redis", "reader"):
        assert services[name]["healthcheck"]["test"], name
    assert "8000:8000" in services["reader"]["ports"]
    assert "9092:9092" in services["kafka"]["ports"]
