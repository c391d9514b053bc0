"""``lpu-bench trace-soak --quick``: 15 s of the shipped trace at 1x through four real emulator
processes and ``lpu-router serve --workers 2``; the soak's invariants, never its speed.

Asserted: every admitted request ended once (on exactly one recorded schedule, a refused one on
none), the router's pod-wide books agree with the client (admitted = finished, sent =
outcomes, received = sent, the same completions, nothing in flight), no admitted request's first
token is scheduled later than its home bucket's SLO on the recorded schedules, and the emulators'
per-token lateness histogram counted every token of every stream (a first token per completed
stream, as many observations as output tokens). The lateness target itself is the full run's
figure (a busy CI machine may miss it; its verdict is in the results, not asserted here)."""

from __future__ import annotations

import pytest

from benchmarks.trace_soak import QUICK_WINDOW_S, soak
from benchmarks.trace_soak_figures import LATENESS_SERIES
from benchmarks.trace_soak_report import markdown


@pytest.mark.timeout(120)
async def test_quick_trace_soak_keeps_the_invariant_and_the_slo() -> None:
    doc = await soak(window_s=QUICK_WINDOW_S)
    requests = doc["settings"]["requests"]
    assert requests > 10, doc["settings"]  # a window with traffic, or the test shows nothing
    total, books = doc["replay"]["total"], doc["books"]
    assert doc["replay"]["ended_once_problems"] == []
    assert books["checks"] == dict.fromkeys(books["checks"], True), books
    assert books["sent"] == total["offered"] == requests
    # At 1x the layout is far from full: every request is admitted and completes.
    assert total["admitted"] == total["completed"] == requests, total
    assert total["violations"] == 0, total
    verdicts = {c["claim"]: c["held"] for c in doc["claims"]}
    assert all(held for claim, held in verdicts.items() if "lateness" not in claim), verdicts
    # Per token: one observation per streamed token, a first one per completed stream.
    late = doc["lateness"]
    assert late["series"] == LATENESS_SERIES[0], late
    assert late["by_token"]["first"]["count"] == total["completed"], late
    assert late["all"]["count"] == doc["settings"]["output_tokens"], late
    # The report states each claim's verdict as computed.
    text = markdown(doc)
    assert f"{sum(verdicts.values())} of {len(verdicts)} claims held" in text
