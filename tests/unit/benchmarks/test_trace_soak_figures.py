"""The trace soak's pure figures: histogram quantiles, the lateness read from emulators'
``/metrics`` texts, and the router's books against the client's records."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.trace_soak_figures import LATENESS_SERIES, books, lateness, quantile

_INF = math.inf


@pytest.mark.parametrize(("cumulative", "q", "want"), [
    ({0.001: 0, 0.002: 10, _INF: 10}, 0.5, 0.0015),  # linear within the (1, 2] ms bucket
    ({0.001: 5, 0.002: 10, _INF: 10}, 0.5, 0.001),  # the rank lands on an edge
    ({0.001: 10, _INF: 10}, 0.99, 0.00099),  # first bucket: from 0
    ({0.001: 0, 0.005: 0, _INF: 4}, 0.99, 0.005),  # in +Inf: the highest finite edge
    ({0.001: 0, _INF: 0}, 0.5, math.nan),  # empty
], ids=["linear", "edge", "first-bucket", "inf-bucket", "empty"])
def test_quantile_reads_a_cumulative_histogram(cumulative: dict[float, float], q: float,
                                               want: float) -> None:
    got = quantile(cumulative, q)
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)


def _emulator_text(observations: dict[str, list[float]],
                   name: str = "lpu:token_delivery_lateness_seconds") -> str:
    reg = CollectorRegistry()
    h = Histogram(name, "lateness", ["model_name", "token"],
                  buckets=(0.001, 0.005, 0.01, 1.0), registry=reg)
    for token, values in observations.items():
        for v in values:
            h.labels("m", token).observe(v)
    return generate_latest(reg).decode()


def test_lateness_sums_the_emulators_and_checks_the_bound_on_its_edge() -> None:
    # 99 of 100 observations within 5 ms over two emulators: the bound holds exactly at 99%.
    texts = [_emulator_text({"first": [0.0005] * 10, "later": [0.004] * 40}),
             _emulator_text({"first": [0.0005] * 10, "later": [0.004] * 39 + [0.02]})]
    late = lateness(texts, 0.005)
    assert late["series"] == "lpu:token_delivery_lateness_seconds"
    assert late["all"]["count"] == 100 and late["all"]["share_within_bound"] == 0.99
    assert late["by_token"]["first"]["count"] == 20
    assert late["by_token"]["later"]["share_within_bound"] == pytest.approx(79 / 80)
    assert late["all"]["over_1s"] == 0
    # A bound that is no bucket edge cannot be checked exactly.
    assert lateness(texts, 0.004)["all"]["share_within_bound"] is None


def test_lateness_without_observations_names_no_series() -> None:
    assert lateness([_emulator_text({})], 0.005)["series"] is None


def _record(i: int, outcome: ClientOutcome, status: int) -> RequestRecord:
    r = RequestRecord(i, 0.0, 10, 5, "short")
    r.outcome, r.status = outcome.value, status
    return r


def _server(admitted: int, completed: int, rejected: int, received: int,
            in_flight: float = 0.0) -> dict[str, object]:
    return {"admitted": admitted, "in_flight": in_flight, "received": received,
            "finished": Counter({"completed": completed}),
            "rejected": Counter({"slo": rejected}) if rejected else Counter()}


def test_books_agree_when_every_request_is_accounted_for() -> None:
    records = [_record(0, ClientOutcome.COMPLETED, 200), _record(1, ClientOutcome.REJECTED, 429)]
    b = books(_server(admitted=1, completed=1, rejected=1, received=2), records)
    assert b["checks"] == dict.fromkeys(b["checks"], True)
    assert b["client"]["rejected"] == 1 and b["client_statuses"] == {"200": 1, "429": 1}


@pytest.mark.parametrize(("server", "broken"), [
    (_server(admitted=2, completed=1, rejected=1, received=2), "admitted_eq_finished"),
    (_server(admitted=1, completed=1, rejected=0, received=2), "sent_eq_outcomes"),
    (_server(admitted=1, completed=1, rejected=1, received=3), "received_eq_sent"),
    (_server(admitted=1, completed=1, rejected=1, received=2, in_flight=1), "none_in_flight"),
], ids=["admitted-unfinished", "request-lost", "extra-received", "in-flight"])
def test_books_name_what_disagrees(server: dict[str, object], broken: str) -> None:
    records = [_record(0, ClientOutcome.COMPLETED, 200), _record(1, ClientOutcome.REJECTED, 429)]
    checks = books(server, records)["checks"]
    assert [k for k, ok in checks.items() if not ok] == [broken]


def test_books_see_a_completion_the_client_did_not() -> None:
    records = [_record(0, ClientOutcome.TIMED_OUT, 200), _record(1, ClientOutcome.REJECTED, 429)]
    checks = books(_server(admitted=1, completed=1, rejected=1, received=2), records)["checks"]
    assert [k for k, ok in checks.items() if not ok] == ["completed_agrees"]


def test_lateness_prefers_the_per_token_series() -> None:
    per_write = _emulator_text({"later": [0.004] * 3})
    per_token = _emulator_text({"later": [0.004] * 7}, LATENESS_SERIES[0])
    late = lateness([per_write + per_token], 0.005)
    assert late["series"] == LATENESS_SERIES[0] and late["all"]["count"] == 7
