"""The load generator against a real emulator on loopback, and the headline check: the
emulator's queue is the exact FIFO queue of the arrivals it saw (on its recorded schedule)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from recorded_schedule import fifo_problems, recorded

from benchmarks import simulate, theory
from benchmarks.loadgen import LoadConfig, run_load
from benchmarks.metrics import Slo, summarize, timeseries
from benchmarks.prompts import PromptFactory
from benchmarks.records import ClientOutcome
from benchmarks.workload import PlannedRequest
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

MODEL = "llama-3.1-8b-instant"


async def test_records_are_complete() -> None:
    art = builtin_artifact("llama-3.1-8b-2k")
    scale = 0.2
    planned = [PlannedRequest(i, i * 0.02, 50 + 40 * i, 4 + i % 5) for i in range(25)]
    async with start_emulators(EmulatorOptions(art, time_scale=scale)) as urls:
        result = await run_load(
            planned, LoadConfig(urls[0], MODEL, keep_gaps=True), PromptFactory(
                np.random.default_rng(0))
        )
    prefill = art.prefill_s * scale
    assert [r.index for r in result.records] == list(range(25))
    for p, r in zip(planned, result.records, strict=True):
        assert r.outcome == ClientOutcome.COMPLETED, r.error
        assert r.status == 200 and r.tokens == p.max_tokens == r.completion_tokens
        assert r.usage_prompt_tokens == p.prompt_tokens  # prompts count as planned
        assert r.sent_s is not None and r.sent_s >= r.intended_s
        assert r.ttft_s is not None and r.e2e_s is not None
        assert prefill * 0.95 <= r.ttft_s <= r.e2e_s
        assert r.gaps_s is not None and len(r.gaps_s) == p.max_tokens - 1
    s = summarize(result.records, 0.5, Slo(ttft_s=10.0), result.gaps)
    assert s["outcomes"]["completed"] == 25 and s["slo"]["attainment"] == 1.0
    assert s["itl_s"]["count"] == sum(p.max_tokens - 1 for p in planned)
    rows = timeseries(result.records, 0.5)
    assert sum(row["offered"] for row in rows) == 25
    assert rows[-1]["in_flight"] == 0


async def test_emulator_queueing_is_the_exact_fifo_queue() -> None:
    """One slot, Poisson arrivals, a fixed output length: the M/D/1 queue with D ~ 28 ms.

    On the emulator's recorded schedule every wait is exactly what the FIFO schedule gives for
    the arrivals it saw, and the client never sees a first token before it is due (its mean
    wait is at least the scheduled one). Whether the measured waits follow the M/D/1 law is a
    measurement (``benchmarks``); here only the simulated band of the mean wait is checked
    against the stationary theory, which needs no clock.
    """
    art = replace(builtin_artifact("llama-3.1-8b-2k"), slots=1)
    scale, tokens, n, rho = 0.3, 8, 300, 0.7
    d = art.service_time(tokens) * scale
    prefill = art.prefill_s * scale
    lam = rho / d
    rng = np.random.default_rng(42)
    times = simulate.poisson_arrivals(lam, n, rng)
    planned = [PlannedRequest(i, float(t), 100, tokens) for i, t in enumerate(times)]
    async with start_emulators(EmulatorOptions(art, time_scale=scale, tick_s=0.002)) as urls:
        cfg = LoadConfig(urls[0], MODEL, drain_timeout_s=10.0)
        result = await run_load(planned, cfg, PromptFactory(rng))
        (schedule,) = (await recorded(urls)).values()
    recs = result.records
    assert all(r.outcome == ClientOutcome.COMPLETED for r in recs)
    assert len(schedule) == n and not fifo_problems(schedule)
    arrival = np.array([e.arrival for e in schedule], dtype=np.float64)
    start = np.array([e.start for e in schedule], dtype=np.float64)
    exact = simulate.fifo_starts_deterministic(arrival, 1, d)
    np.testing.assert_allclose(start - arrival, exact - arrival, rtol=0, atol=1e-9)
    measured = np.array([r.ttft_s for r in recs], dtype=np.float64) - prefill
    assert measured.mean() >= (start - arrival).mean() - 1e-9

    reps = simulate.poisson_arrivals(lam, 4000 * n, np.random.default_rng(7)).reshape(4000, n)
    reps = reps - reps[:, :1] + reps[:1, :1]  # every replication starts empty
    sim_w = np.stack([simulate.fifo_starts_deterministic(r, 1, d) - r for r in reps])
    lo, hi = np.percentile(sim_w.mean(axis=1), [0.5, 99.5])
    # The stationary theory sits inside the band (the sample starts empty, so its own mean is
    # a little lower than the stationary one).
    assert lo <= theory.md1_mean_wait(lam, d) <= hi * 1.2
    assert float(theory.mdc_wait_cdf(0.0, lam, 1, d)[0]) == pytest.approx(1 - rho)
