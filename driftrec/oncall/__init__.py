"""On-call tooling: consumer lag from the broker, the exporter, the freshness canary, the dashboard."""

__all__: list[str] = []
