"""Write-back settings from ``SCOREGATE_*`` variables: defaults, parsing, refusals."""

from __future__ import annotations

import pytest

from writeback import WritebackConfig


def test_unset_variables_keep_the_local_defaults() -> None:
    config = WritebackConfig.from_env({})
    assert config.database_url == "postgresql://postgres@127.0.0.1:5432/scoregate"
    assert (config.kafka_bootstrap, config.topic) == ("127.0.0.1:9092", "decision-outcomes")
    assert (config.event_source, config.idempotent_producer) == ("/scoregate", False)
    assert config == WritebackConfig(
        database_url=config.database_url, kafka_bootstrap=config.kafka_bootstrap
    )


def test_set_variables_are_parsed_to_their_types() -> None:
    config = WritebackConfig.from_env(
        {
            "SCOREGATE_DATABASE_URL": "postgresql://u@db:5433/sg",
            "SCOREGATE_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "SCOREGATE_TOPIC": "outcomes",
            "SCOREGATE_EVENT_SOURCE": "/eu-1",
            "SCOREGATE_KAFKA_IDEMPOTENT": " Yes ",
            "SCOREGATE_RELAY_BATCH_SIZE": "7",
            "SCOREGATE_OUTBOX_RETENTION_HOURS": "1.5",
            "SCOREGATE_VERIFY_PACE": "0",
            "SCOREGATE_DLQ_TOPIC": "dead",
        }
    )
    assert (config.database_url, config.kafka_bootstrap) == (
        "postgresql://u@db:5433/sg",
        "k1:9092,k2:9092",
    )
    assert (config.topic, config.event_source, config.idempotent_producer) == (
        "outcomes",
        "/eu-1",
        True,
    )
    assert (config.relay_batch_size, config.outbox_retention_hours) == (7, 1.5)
    assert (config.verify_pace, config.dead_letter_topic) == (0.0, "dead")


def test_an_empty_tuning_variable_keeps_the_default() -> None:
    assert WritebackConfig.from_env({"SCOREGATE_RELAY_BATCH_SIZE": ""}).relay_batch_size == 200


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("SCOREGATE_RELAY_BATCH_SIZE", "2.5", "SCOREGATE_RELAY_BATCH_SIZE: expected int"),
        ("SCOREGATE_MAINTENANCE_INTERVAL_S", "hourly", "expected float, got 'hourly'"),
        ("SCOREGATE_KAFKA_IDEMPOTENT", "maybe", "expected a boolean, got 'maybe'"),
    ],
)
def test_a_bad_value_stops_naming_what_was_wrong(variable: str, raw: str, message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        WritebackConfig.from_env({variable: raw})
    assert message in str(caught.value)


def test_a_value_the_relay_cannot_work_with_is_refused() -> None:
    with pytest.raises(ValueError, match="relay_batch_size must be at least 1"):
        WritebackConfig.from_env({"SCOREGATE_RELAY_BATCH_SIZE": "0"})
