"""Gateway settings, read from ``SCOREGATE_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from writeback.config import WritebackConfig


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the gateway process needs to start.

    Attributes:
        registry_path: the registry TOML file (``SCOREGATE_REGISTRY``).
        redis_url: the online store (``SCOREGATE_REDIS_URL``).
        redis_prefix: prefix of every online-store key (``SCOREGATE_REDIS_PREFIX``).
        writeback: PostgreSQL, Kafka and relay settings.
        run_relay: run the outbox relay inside the gateway (``SCOREGATE_RELAY``).
        health_timeout_s: per-check timeout of ``/health/ready``.
    """

    registry_path: Path
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sg"
    writeback: WritebackConfig
    run_relay: bool = True
    health_timeout_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        """Read settings from the environment, with local defaults."""
        env = os.environ if env is None else env
        registry = env.get("SCOREGATE_REGISTRY")
        if not registry:
            raise SystemExit("SCOREGATE_REGISTRY must name the registry file")
        writeback = WritebackConfig(
            database_url=env.get(
                "SCOREGATE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/scoregate"
            ),
            kafka_bootstrap=env.get("SCOREGATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            topic=env.get("SCOREGATE_TOPIC", "decision-outcomes"),
            event_source=env.get("SCOREGATE_EVENT_SOURCE", "/scoregate"),
            idempotent_producer=_flag(env.get("SCOREGATE_KAFKA_IDEMPOTENT", "false")),
        )
        return cls(
            registry_path=Path(registry),
            redis_url=env.get("SCOREGATE_REDIS_URL", "redis://127.0.0.1:6379/0"),
            redis_prefix=env.get("SCOREGATE_REDIS_PREFIX", "sg"),
            writeback=writeback,
            run_relay=_flag(env.get("SCOREGATE_RELAY", "true")),
        )


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SystemExit(f"expected a boolean, got {value!r}")
