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


def test_oncall_services_scrape_what_compose_runs() -> None:
    """exporter, prometheus and grafana: mounts exist, scrape targets are compose services and ports."""
    root = COMPOSE.parent
    services = _compose()["services"]
    assert {"exporter", "prometheus", "grafana"} <= set(services)
    exporter = services["exporter"]
    assert exporter["command"][:3] == ["driftrec", "lag", "--serve"]
    assert "9308:9308" in exporter["ports"]
    assert exporter["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert exporter["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert exporter["healthcheck"]["test"]
    # The exporter reaches the reader and the worker by their compose names.
    cmd = exporter["command"]
    assert cmd[cmd.index("--reader-url") + 1] == "http://reader:8000"
    assert cmd[cmd.index("--worker-metrics-url") + 1] == "http://worker:9108/metrics"
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (root / src).exists(), volume
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")

    prom = yaml.safe_load((root / "deploy/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prom["scrape_configs"]}
    assert set(targets) == {"driftrec-worker", "driftrec-reader", "driftrec-exporter"}
    for job, target in targets.items():
        host, port = target.split(":")
        svc = services[host]
        assert any(str(p).split(":")[-1] == port for p in svc.get("ports", [])), (job, target)
    assert all((root / "deploy/prometheus" / f).exists() for f in prom["rule_files"])

    ds = yaml.safe_load((root / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"


def test_trainer_retrains_hourly_from_the_same_kafka_and_redis() -> None:
    services = _compose()["services"]
    trainer = services["trainer"]
    assert trainer["command"] == ["driftrec", "train", "--every", "1h"]
    assert trainer["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert trainer["environment"]["REDIS_URL"] == services["worker"]["environment"]["REDIS_URL"]
    for dep in ("kafka", "redis"):
        assert trainer["depends_on"][dep]["condition"] == "service_healthy"
    assert trainer["restart"] == "unless-stopped"
    # the clicks topic is the trainer's log: the broker must keep it
    assert services["kafka"]["environment"]["KAFKA_LOG_RETENTION_HOURS"] == "-1"
    from typer.testing import CliRunner

    from driftrec.cli import app

    help_text = CliRunner().invoke(app, ["train", "--help"]).output
    assert "--every" in help_text and "--publish" in help_text
