"""The registry's batching settings of a model: defaults, ranges and their checks."""

from __future__ import annotations

import pytest

from gateway.registry import RegistryError, parse_registry

GOOD = """
[[entities]]
name = "customer"
key = "customer_id"

[[features]]
name = "kyc_level"
entity = "customer"
dtype = "int64"
max_staleness_ms = 1000

[[models]]
name = "m"
version = "1"
subject = "customer"
endpoint = "http://model.invalid"
features = ["kyc_level"]
timeout_ms = 300
"""


def model_with(settings: str) -> str:
    return GOOD.replace("timeout_ms = 300\n", f"timeout_ms = 300\n{settings}\n")


def test_by_default_a_model_does_not_batch() -> None:
    model = parse_registry(GOOD.encode()).models["m"]
    assert (model.max_batch_size, model.max_batch_wait_ms, model.max_batches_in_flight) == (
        1,
        0,
        1,
    )


def test_batching_settings_within_their_bounds_load() -> None:
    text = model_with("max_batch_size = 32\nmax_batch_wait_ms = 299\nmax_batches_in_flight = 4")
    model = parse_registry(text.encode()).models["m"]
    assert (model.max_batch_size, model.max_batch_wait_ms, model.max_batches_in_flight) == (
        32,
        299,
        4,
    )


@pytest.mark.parametrize(
    ("settings", "path", "message"),
    [
        ("max_batch_size = 0", "$.models[0].max_batch_size", ">= 1"),
        ("max_batch_size = 1025", "$.models[0].max_batch_size", "<= 1024"),
        ("max_batch_size = 8\nmax_batch_wait_ms = -1", "$.models[0].max_batch_wait_ms", ">= 0"),
        ("max_batch_size = 8\nmax_batches_in_flight = 0", "$.models[0].max_batches_in_flight", ""),
        (
            "max_batch_size = 8\nmax_batch_wait_ms = 300",
            "$.models[0].max_batch_wait_ms",
            "shorter than timeout_ms (300)",
        ),
        (
            "max_batch_wait_ms = 5",
            "$.models[0].max_batch_wait_ms",
            "needs max_batch_size above 1",
        ),
        (
            "max_batches_in_flight = 2",
            "$.models[0].max_batches_in_flight",
            "needs max_batch_size above 1",
        ),
        ("max_batch = 8", "$.models[0]", "unknown field"),
    ],
)
def test_a_bad_batching_setting_names_its_path(settings: str, path: str, message: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_registry(model_with(settings).encode(), origin="reg.toml")
    assert caught.value.path == path
    assert message in str(caught.value)
    assert str(caught.value).endswith(f" - at `{path}`")
