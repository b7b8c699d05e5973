"""Gateway settings, read from ``SCOREGATE_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from gateway.auth import ApiKey, KeyConfigError, parse_keys
from writeback import WritebackConfig


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the gateway process needs to start.

    Attributes:
        registry_path: the registry TOML file (``SCOREGATE_REGISTRY``).
        redis_url: the online store (``SCOREGATE_REDIS_URL``).
        redis_prefix: prefix of every online-store key (``SCOREGATE_REDIS_PREFIX``).
        writeback: PostgreSQL, Kafka and relay settings.
        run_relay: run the outbox relay inside the gateway (``SCOREGATE_RELAY``).
        health_timeout_s: per-check timeout of ``/health/ready``.
        api_keys: the keys that may call (``SCOREGATE_API_KEYS`` and/or the file named
            by ``SCOREGATE_API_KEYS_FILE``), hashed.
        pii_key: the key of the PII masks' hash (``SCOREGATE_PII_KEY``); without it
            masks are random per process and not comparable across restarts.
        metrics_public: serve ``/metrics`` without a key (``SCOREGATE_METRICS_PUBLIC``).
        max_in_flight: ``/score`` requests one process works on at once; more are
            refused at once with 503 and ``Retry-After`` (``SCOREGATE_MAX_IN_FLIGHT``).
        redis_max_connections: connections the online store opens at most
            (``SCOREGATE_REDIS_MAX_CONNECTIONS``). A command that finds them all in use
            waits for one within its request's deadline, and the wait is not held
            against Redis. A read holds a connection for one round trip, a small part
            of a request, so far fewer than ``max_in_flight`` keep every admitted
            request served; a burst then opens at most this many connections at once.
        reconcile_interval_s: seconds between the background reconciliation rounds,
            each over every feature with a source and ``reconcile`` (from the end of one
            round to the start of the next; 0 turns the job off)
            (``SCOREGATE_RECONCILE_INTERVAL_S``, default 300).
        reconcile_sample: entities each round samples per feature
            (``SCOREGATE_RECONCILE_SAMPLE``, default 100).
        reconcile_repair: whether the rounds write the source's value where the store
            disagrees (``SCOREGATE_RECONCILE_REPAIR``, default off: report only).
        reconcile_retention_days: days reconciliation runs and findings are kept
            (``SCOREGATE_RECONCILE_RETENTION_DAYS``, default 30). The rate of calls to
            each source is its registry's ``reconcile_calls_per_s``.
        alert_interval_s: seconds between two evaluations of the freshness burn-rate
            alerts; every process evaluates, one at a time, so the alerts are evaluated
            about this often however many run (0 turns the evaluator off)
            (``SCOREGATE_ALERT_INTERVAL_S``, default 15).
    """

    registry_path: Path
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sg"
    writeback: WritebackConfig
    run_relay: bool = True
    health_timeout_s: float = 1.0
    api_keys: tuple[ApiKey, ...] = ()
    pii_key: bytes | None = None
    metrics_public: bool = True
    max_in_flight: int = 512
    redis_max_connections: int = 64
    reconcile_interval_s: int = 300
    reconcile_sample: int = 100
    reconcile_repair: bool = False
    reconcile_retention_days: int = 30
    alert_interval_s: int = 15

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        """Read settings from the environment, with local defaults."""
        env = os.environ if env is None else env
        registry = env.get("SCOREGATE_REGISTRY")
        if not registry:
            raise SystemExit("SCOREGATE_REGISTRY must name the registry file")
        writeback = WritebackConfig.from_env(env)
        keys_text = env.get("SCOREGATE_API_KEYS", "")
        keys_file = env.get("SCOREGATE_API_KEYS_FILE")
        try:
            if keys_file:
                keys_text += "\n" + Path(keys_file).read_text()
            api_keys = tuple(parse_keys(keys_text))
        except (OSError, KeyConfigError) as exc:
            raise SystemExit(f"bad API key configuration: {exc}") from exc
        pii_key = env.get("SCOREGATE_PII_KEY")
        return cls(
            api_keys=api_keys,
            pii_key=pii_key.encode() if pii_key else None,
            metrics_public=_flag(env.get("SCOREGATE_METRICS_PUBLIC", "true")),
            max_in_flight=env_int(env, "SCOREGATE_MAX_IN_FLIGHT", 512),
            redis_max_connections=env_int(env, "SCOREGATE_REDIS_MAX_CONNECTIONS", 64),
            reconcile_interval_s=env_int(
                env, "SCOREGATE_RECONCILE_INTERVAL_S", 300, allow_zero=True
            ),
            reconcile_sample=env_int(env, "SCOREGATE_RECONCILE_SAMPLE", 100),
            reconcile_repair=_flag(env.get("SCOREGATE_RECONCILE_REPAIR", "false")),
            reconcile_retention_days=env_int(env, "SCOREGATE_RECONCILE_RETENTION_DAYS", 30),
            alert_interval_s=env_int(env, "SCOREGATE_ALERT_INTERVAL_S", 15, allow_zero=True),
            registry_path=Path(registry),
            redis_url=env.get("SCOREGATE_REDIS_URL", "redis://127.0.0.1:6379/0"),
            redis_prefix=env.get("SCOREGATE_REDIS_PREFIX", "sg"),
            writeback=writeback,
            run_relay=_flag(env.get("SCOREGATE_RELAY", "true")),
        )


def env_int(env: Mapping[str, str], name: str, default: int, *, allow_zero: bool = False) -> int:
    """A positive integer setting (non-negative with ``allow_zero``); unset is ``default``.

    Raises:
        SystemExit: The variable is not such an integer; the message names it.
    """
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise SystemExit(f"{name} must be a {kind} integer, got {raw!r}")
    return value


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SystemExit(f"expected a boolean, got {value!r}")
