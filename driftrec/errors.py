"""The project's exception hierarchy: one root, subclasses carry their HTTP status."""

from __future__ import annotations

__all__ = [
    "DriftrecError",
    "InvalidEventError",
    "InvalidRequestError",
    "NotFoundError",
    "ModelError",
    "StackError",
]


class DriftrecError(Exception):
    """Root of every error driftrec raises on purpose."""

    http_status: int = 500

    def http_status_code(self) -> int:
        return self.http_status


class InvalidEventError(DriftrecError):
    """A click event failed validation; ``reason`` names the field and the problem."""

    http_status = 422

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class InvalidRequestError(DriftrecError):
    """A bad HTTP request (query parameter, body, id)."""

    http_status = 400


class NotFoundError(DriftrecError):
    """The thing asked for does not exist."""

    http_status = 404


class ModelError(DriftrecError):
    """A model could not be trained, loaded or published (corrupt blob, empty log, ...)."""

    http_status = 409


class StackError(DriftrecError):
    """The local stack (Kafka, Redis) could not be started, probed or stopped."""


class StoreFormatError(DriftrecError):
    """Redis holds state written in another format than this version writes (see
    ``docs/redis-keys.md``, *Score format*): rebuild it by replaying the click log."""
