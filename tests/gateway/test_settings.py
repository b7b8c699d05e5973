"""Settings from ``SCOREGATE_*`` variables: defaults, parsing, and refusals that stop start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import key_from_secret
from gateway.settings import GatewaySettings
from writeback import WritebackConfig

BASE = {"SCOREGATE_REGISTRY": "/etc/scoregate/registry.toml"}


def test_unset_variables_keep_the_local_defaults() -> None:
    settings = GatewaySettings.from_env(BASE)
    assert settings.registry_path == Path("/etc/scoregate/registry.toml")
    assert (settings.redis_url, settings.redis_prefix) == ("redis://127.0.0.1:6379/0", "sg")
    assert (settings.max_in_flight, settings.redis_max_connections) == (512, 64)
    assert settings.metrics_public and settings.run_relay
    assert (settings.api_keys, settings.pii_key) == ((), None)
    assert settings.writeback.topic == "decision-outcomes"
    assert settings.writeback.relay_max_attempts == 10


def test_set_variables_are_parsed_to_their_types(tmp_path: Path) -> None:
    inline = key_from_secret("one", ["scorer"])
    filed = key_from_secret("two", ["auditor"], ["pii"])
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# auditors\n{filed.line()}\n")
    settings = GatewaySettings.from_env(
        {
            **BASE,
            "SCOREGATE_API_KEYS": inline.line(),
            "SCOREGATE_API_KEYS_FILE": str(keys_file),
            "SCOREGATE_PII_KEY": "secret",
            "SCOREGATE_METRICS_PUBLIC": " Off ",
            "SCOREGATE_RELAY": "0",
            "SCOREGATE_MAX_IN_FLIGHT": "16",
            "SCOREGATE_REDIS_PREFIX": "t1",
            "SCOREGATE_OUTBOX_RETENTION_HOURS": "1.5",
            "SCOREGATE_RELAY_BATCH_SIZE": "7",
            "SCOREGATE_DLQ_TOPIC": "dead",
            "SCOREGATE_KAFKA_IDEMPOTENT": "yes",
        }
    )
    assert settings.api_keys == (inline, filed)
    assert settings.pii_key == b"secret"
    assert not settings.metrics_public
    assert not settings.run_relay
    assert settings.max_in_flight == 16
    assert settings.redis_prefix == "t1"
    wb = settings.writeback
    assert (wb.outbox_retention_hours, wb.relay_batch_size, wb.dlq_topic) == (1.5, 7, "dead")
    assert wb.idempotent_producer is True


def test_an_empty_tuning_variable_keeps_the_default() -> None:
    assert WritebackConfig.from_env({"SCOREGATE_RELAY_BATCH_SIZE": ""}).relay_batch_size == 200


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("SCOREGATE_MAX_IN_FLIGHT", "0", "SCOREGATE_MAX_IN_FLIGHT must be a positive integer"),
        ("SCOREGATE_MAX_IN_FLIGHT", "many", "must be a positive integer, got 'many'"),
        ("SCOREGATE_REDIS_MAX_CONNECTIONS", "-3", "must be a positive integer"),
        ("SCOREGATE_METRICS_PUBLIC", "maybe", "expected a boolean, got 'maybe'"),
        ("SCOREGATE_RELAY_BATCH_SIZE", "2.5", "SCOREGATE_RELAY_BATCH_SIZE: expected int"),
        ("SCOREGATE_MAINTENANCE_INTERVAL_S", "hourly", "expected float, got 'hourly'"),
        ("SCOREGATE_API_KEYS", "k1:abc:scorer", "bad API key configuration"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(
    variable: str, raw: str, message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        GatewaySettings.from_env({**BASE, variable: raw})
    assert message in str(caught.value)


def test_an_unreadable_keys_file_stops_start_up(tmp_path: Path) -> None:
    env = {**BASE, "SCOREGATE_API_KEYS_FILE": str(tmp_path / "absent")}
    with pytest.raises(SystemExit, match="bad API key configuration"):
        GatewaySettings.from_env(env)
