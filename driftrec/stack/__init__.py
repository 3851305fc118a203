"""The embedded local stack: Apache Kafka (KRaft, from Maven Central jars) and Redis, no Docker."""

from driftrec.stack.local import LocalStack, ServiceStatus

__all__ = ["LocalStack", "ServiceStatus"]
