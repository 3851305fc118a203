"""Settings bind to the environment, reject unknown keys and round-trip through to_env()."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from driftrec.settings import Settings


def test_env_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTREC_HALF_LIFE_S", "3600")
    monkeypatch.setenv("DRIFTREC_EVENT_WEIGHTS", '{"view": 1, "purchase": 9}')
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("REDIS_URL", "redis://r:2/0")
    s = Settings()
    assert s.half_life_s == 3600
    assert s.event_weights == {"view": 1, "purchase": 9}
    assert (s.bootstrap, s.redis, s.local_stack) == ("k:1", "redis://r:2/0", False)


def test_defaults_mean_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    s = Settings()
    assert s.local_stack and s.bootstrap == f"127.0.0.1:{s.kafka_port}"


def test_unknown_keys_and_bad_weights_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(no_such_setting=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(event_weights={"view": -1.0})


def test_to_env_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(redis_url="redis://x:1/0", api_keys=("a", "b"), cooc_window=3)
    for k, v in s.to_env().items():
        monkeypatch.setenv(k, v)
    assert Settings() == s
