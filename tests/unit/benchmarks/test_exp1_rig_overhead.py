"""Experiment 1's account of the rig's time (:mod:`benchmarks.experiments.exp1_overhead`), the
exact schedule it is compared with (of the intended arrivals), and the load generator's wait
for a send time: exact figures on hand-made records and a virtual clock."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks import loadgen
from benchmarks.experiments.drive import Measured
from benchmarks.experiments.exp1_overhead import (
    FIRST_TOKEN_METRIC,
    decompose,
    first_token_lateness,
)
from benchmarks.experiments.exp1_point import exact_intended_ttft

ORIGIN = 1000.0  # the run's time 0 on the emulator's clock


def _entry(rid: str, arrival: float, start: float, prefill: float = 0.12) -> dict[str, Any]:
    return {"request_id": rid, "arrival": ORIGIN + arrival, "start": ORIGIN + start,
            "first_token": ORIGIN + start + prefill}


def test_parts_add_up_to_the_overhead_on_the_exact_schedule() -> None:
    # Request a: sent 1 ms late, 2 ms to the emulator, no wait, first token read 3 ms after
    # its due time. Request b: arrives while a slot is taken (one slot, D = 0.12 s).
    intended = np.array([0.0, 0.05, 0.5])
    sent = np.array([0.001, 0.0505, 0.5])
    # a: due 0.003 + 0.12, read 0.126; b: arrival 0.0525, start 0.123 (a's end), due 0.243.
    ttft = np.array([0.126, 0.243 + 0.002 - 0.05, math.nan])
    exact = np.array([0.12, 0.12 + 0.07, 0.12])  # b waits 0.07 s for a's slot in the model
    entries = [_entry("s0-0", 0.003, 0.003), _entry("s0-1", 0.0525, 0.123),
               _entry("s0-2", 0.5, 0.5)]
    out = decompose(intended=intended, sent=sent, ttft=ttft, exact_ttft=exact,
                    request_ids=["s0-0", "s0-1", "s0-2"], keep=np.array([True, True, True]),
                    origin_mono=ORIGIN, entries=entries)
    assert out["requests"] == 2  # the third has no TTFT
    assert out["send"]["mean"] == pytest.approx((0.001 + 0.0005) / 2)
    assert out["to_emulator"]["mean"] == pytest.approx((0.002 + 0.002) / 2)
    assert out["emulator_wait"]["mean"] == pytest.approx((0.0 + 0.0705) / 2)
    assert out["from_emulator"]["mean"] == pytest.approx((0.003 + 0.002) / 2)
    # b's wait is 0.5 ms beyond the model's: it reached the emulator 2.5 ms after intended,
    # a's slot ended 3 ms late.
    assert out["emulator_wait_beyond_exact"]["mean"] == pytest.approx(0.0005 / 2)
    total = sum(out[k]["mean"] for k in ("send", "to_emulator", "from_emulator"))
    total += out["emulator_wait_beyond_exact"]["mean"]
    assert out["overhead"]["mean"] == pytest.approx(total)


def test_only_kept_requests_on_the_schedule_count() -> None:
    intended, sent = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    ttft = np.array([0.121, 0.121])
    common = {"intended": intended, "sent": sent, "ttft": ttft,
              "exact_ttft": np.array([0.12, 0.12]), "origin_mono": ORIGIN}
    gone = decompose(**common, request_ids=["s0-0", "s0-1"], keep=np.array([False, True]),
                     entries=[_entry("s0-0", 0.0, 0.0)])  # s0-1 left the schedule's window
    assert gone == {"requests": 0}
    one = decompose(**common, request_ids=["s0-0", "s0-1"], keep=np.array([False, True]),
                    entries=[_entry("s0-0", 0.0, 0.0), _entry("s0-1", 1.0, 1.0)])
    assert one["requests"] == 1 and one["overhead"]["p99"] == pytest.approx(0.001)


def test_first_token_lateness_from_the_metrics_text() -> None:
    reg = CollectorRegistry()
    h = Histogram(FIRST_TOKEN_METRIC, "lateness", ["model_name", "token"], registry=reg,
                  buckets=(0.0005, 0.001, 0.002, 0.005, 0.01))
    for v in [0.0003] * 60 + [0.0015] * 39 + [0.004]:
        h.labels("m", "first").observe(v)
    h.labels("m", "later").observe(0.5)  # another label: not counted
    out = first_token_lateness(generate_latest(reg).decode())
    assert out["count"] == 100
    assert out["mean"] == pytest.approx((60 * 0.0003 + 39 * 0.0015 + 0.004) / 100)
    assert out["p50_at_most"] == 0.0005 and out["p99_at_most"] == 0.002
    assert first_token_lateness("") == {"count": 0.0}


def test_the_exact_schedule_is_that_of_the_intended_arrivals() -> None:
    """Issue 15: the exact schedule of the *sent* times put the load generator's lateness
    inside the prediction (p99 125.5 ms against D = 120 ms at rho 0.5)."""
    m = Measured(intended=np.array([0.0, 0.01, 0.5]), sent=np.array([0.004, 0.02, 0.505]),
                 ttft=np.array([0.13, 0.25, 0.13]), completed=np.ones(3, dtype=bool),
                 rejected=np.zeros(3, dtype=bool), prompt_tokens=np.full(3, 100))
    # One slot, D = 0.12: the second waits for the first from its intended time.
    assert exact_intended_ttft(m, 1, 0.12, 0.12).tolist() == pytest.approx([0.12, 0.23, 0.12])


async def test_a_send_waits_only_what_an_early_timer_left(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A timer that fires 0.9 ms early is followed by a sleep of the 0.9 ms left, not of
    that plus a millisecond: the send is on time (virtual clock), and never before it."""
    now = [0.0]
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        now[0] += delay - 0.0009 if len(slept) == 1 else delay

    monkeypatch.setattr(loadgen, "asyncio", SimpleNamespace(sleep=sleep))
    await loadgen._sleep_until(0.1, lambda: now[0])
    assert slept == pytest.approx([0.1, 0.0009]) and now[0] == pytest.approx(0.1)
    slept.clear()
    await loadgen._sleep_until(0.05, lambda: now[0])  # already past: no sleep at all
    assert slept == []
