"""The rig of experiment 1 (the router, admission off, in front of one emulator with c = 2
slots) serves an open-loop Poisson run as M/D/c FIFO: every planned request ends completed
with all its tokens, each reached the emulator exactly once and was never cancelled, and the
emulator's own virtual schedule is exactly the FIFO M/D/c schedule of the arrival times it
saw.

Nothing here is timed: the schedule is the emulator's recorded one (``GET /admin/schedule``,
computed by its engine, never measured), compared with the schedule computed for the same
arrivals. How close the *measured* latencies come to
M/D/c is a benchmark, not a test (a busy 2-core machine can miss any wall-clock bound):
``lpu-bench sweep --only 1 --check``.
"""

from __future__ import annotations

import numpy as np
import pytest
from recorded_schedule import fifo_problems, recorded

from benchmarks import simulate
from benchmarks.experiments import SweepConfig
from benchmarks.experiments.drive import drive
from benchmarks.experiments.rig import Pool, serve
from benchmarks.records import ClientOutcome
from benchmarks.workload import PlannedRequest

SLOTS, RHO, N = 2, 0.6, 120


@pytest.mark.timeout(60)
async def test_router_in_front_of_the_emulator_serves_exact_mdc_fifo() -> None:
    cfg = SweepConfig(isolate=False)
    times = simulate.poisson_arrivals(RHO * cfg.capacity_rps(SLOTS), N,
                                      np.random.default_rng(11))
    planned = [PlannedRequest(i, float(t), cfg.prompt_tokens, cfg.output_tokens)
               for i, t in enumerate(times)]
    pool = Pool("main", cfg.artifact(SLOTS), 1, {"ttft_slo_s": 10.0})
    async with serve(cfg, [pool], {"mode": "off"}) as stack:
        assert stack.url not in stack.backends["main"]  # the load goes through the router
        records = await drive(stack.url, planned, cfg, seed=3, drain_timeout_s=30.0)
        [schedule] = (await recorded(stack.backends["main"])).values()

    assert [r.index for r in records] == list(range(N))
    assert all(r.outcome == ClientOutcome.COMPLETED for r in records), [
        (r.index, r.outcome, r.error) for r in records if r.outcome != ClientOutcome.COMPLETED]
    assert all(r.tokens == cfg.output_tokens for r in records)
    # Each request reached the backend once (no retry, no duplicate) and ran to its end.
    assert len(schedule) == N and len({e.request_id for e in schedule}) == N
    assert all(e.state == "done" and e.output_tokens == cfg.output_tokens for e in schedule)
    assert all(e.end - e.start == pytest.approx(cfg.service_s) for e in schedule)
    assert fifo_problems(schedule) == []
    arrival = np.array([e.arrival for e in schedule])
    start = np.array([e.start for e in schedule])
    order = np.argsort(arrival, kind="stable")
    expected = simulate.fifo_starts_deterministic(arrival[order], SLOTS, cfg.service_s)
    np.testing.assert_allclose(start[order], expected, rtol=0, atol=1e-9)
    assert np.all(start >= arrival)
    assert int((start > arrival).sum()) > 0, "no request queued: the run tested no queueing"
