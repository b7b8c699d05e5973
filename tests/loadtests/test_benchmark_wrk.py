"""The benchmark's wrk helpers: the request file wrk_score.lua reads, what it writes back."""

import json
import random
from collections import Counter

import pytest
from benchmark import (
    REQUEST_ID_SLOT,
    ScoreTraffic,
    WrkAnswers,
    closed_medians,
    cpu_list,
    wrk_requests,
)

# As wrk_score.lua's done() writes it: two threads' statuses and ids, then the totals.
ANSWERS = """status 200 3
status 503 1
decision 0b7c1e9a-0000-4000-8000-000000000001
decision 0b7c1e9a-0000-4000-8000-000000000002
status 200 2
decision 0b7c1e9a-0000-4000-8000-000000000003
decision 0b7c1e9a-0000-4000-8000-000000000004
decision 0b7c1e9a-0000-4000-8000-000000000005
from_sources 2
degraded 1
requests 6
duration_us 4003120
error connect 0
error read 0
error write 0
error timeout 4
p50_us 5120
p95_us 11003
p99_us 15877
max_us 40210.0
"""


def test_answers_are_read_as_the_script_writes_them() -> None:
    answers = WrkAnswers.parse(ANSWERS)

    assert answers.statuses == Counter({200: 5, 503: 1})
    assert len(answers.decisions) == 5
    assert (answers.from_sources, answers.degraded, answers.requests) == (2, 1, 6)
    assert answers.duration_s == pytest.approx(4.00312)
    assert answers.errors == Counter({"timeout": 4})
    assert answers.percentiles_ms == {
        "p50_ms": 5.12,
        "p95_ms": 11.0,
        "p99_ms": 15.88,
        "max_ms": 40.21,
    }


def test_templates_cover_every_customer_and_take_a_request_id() -> None:
    traffic = ScoreTraffic("bench-x-", customers=30)

    templates = traffic.templates(random.Random(1))

    bodies = [
        json.loads(f"{head}bench-x-wrk0-1-{n}{tail}") for n, (head, tail) in enumerate(templates)
    ]
    assert sorted(b["entities"]["customer_id"] for b in bodies) == sorted(
        f"c-{i}" for i in range(1, 31)
    )
    assert {b["request_id"] for b in bodies} == {f"bench-x-wrk0-1-{n}" for n in range(30)}
    assert all(REQUEST_ID_SLOT not in head + tail for head, tail in templates)


def test_only_customers_are_the_templates_customers() -> None:
    traffic = ScoreTraffic("p-", customers=100, only=[4, 8])

    customers = {
        json.loads(f"{head}id{tail}")["entities"]["customer_id"]
        for head, tail in traffic.templates(random.Random(2))
    }

    assert customers == {"c-4", "c-8"}


def test_each_wrk_phase_gets_a_prefix_of_its_own_under_the_traffics() -> None:
    traffic = ScoreTraffic("bench-x-", customers=10)

    first, second = traffic.wrk_prefix(), traffic.wrk_prefix()

    assert first != second
    assert first.startswith("bench-x-") and second.startswith("bench-x-")


def test_wrk_answers_count_as_the_traffics_own() -> None:
    traffic = ScoreTraffic("bench-x-", customers=10)

    traffic.take(WrkAnswers.parse(ANSWERS))

    assert traffic.ok == 5
    assert len(traffic.answered) == 5
    assert traffic.from_sources == 2


def test_the_echos_wrk_answers_are_not_collected() -> None:
    traffic = ScoreTraffic("echo-x-", customers=10, collect=False)

    traffic.take(WrkAnswers.parse(ANSWERS))

    assert (traffic.ok, traffic.answered) == (0, set())


def test_request_file_has_a_line_per_header_and_body() -> None:
    text = wrk_requests([('{"a":"', '"}')], {"content-type": "application/json"})

    assert text == 'header\tcontent-type\tapplication/json\nbody\t{"a":"\t"}\n'


def test_request_file_refuses_a_tab_it_cannot_split() -> None:
    with pytest.raises(ValueError, match="tab or a newline"):
        wrk_requests([('{"a":"\t', '"}')], {})


def test_cpu_list_is_what_taskset_takes() -> None:
    assert cpu_list({1, 0}) == "0,1"
    assert cpu_list([1]) == "1"


def _phase(per_s: float, cpu_ms: float, core_share: float | None = None) -> dict[str, object]:
    phase: dict[str, object] = {"achieved_per_s": per_s, "server_cpu_ms_per_request": cpu_ms}
    if core_share is not None:
        phase["generator"] = {"core_share": core_share}
    return phase


def test_closed_medians_per_load_generator() -> None:
    rounds = [
        {
            "score": _phase(900, 1.1),
            "echo": _phase(4000, 0.25),
            "capacity_ratio": 0.227,
            "wrk_score": _phase(1000, 1.0, 0.1),
            "wrk_echo": _phase(5000, 0.2, 0.3),
            "wrk_capacity_ratio": 0.2,
        },
        {
            "score": _phase(1000, 1.0),
            "echo": _phase(4200, 0.24),
            "capacity_ratio": 0.24,
            "wrk_score": _phase(1100, 0.9, 0.12),
            "wrk_echo": _phase(5200, 0.19, 0.32),
            "wrk_capacity_ratio": 0.211,
        },
    ]

    medians = closed_medians(rounds)

    assert medians["score_per_s"] == 950
    assert medians["wrk_score_per_s"] == 1050
    assert medians["wrk_echo_cpu_ms_per_request"] == 0.195
    assert medians["wrk_capacity_ratio"] == pytest.approx(0.2055, abs=0.001)
    assert medians["wrk_generator_core_share"] == pytest.approx(0.21)


def test_closed_medians_without_wrk_or_echo() -> None:
    medians = closed_medians([{"score": _phase(900, 1.1)}])

    assert medians == {
        "score_per_s": 900,
        "score_cpu_ms_per_request": 1.1,
        "echo_per_s": None,
        "echo_cpu_ms_per_request": None,
        "capacity_ratio": None,
    }
