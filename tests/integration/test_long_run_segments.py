"""A long run sent in segments (:func:`benchmarks.experiments.long_run.run_until`), through
the router in front of a real emulator on loopback: every planned arrival of the segments it
started is sent once and completes, on the run's own time axis and in order; it stops after
the segment in flight once ``enough`` holds, and runs to the end of the arrivals when it never
does. Nothing is timed."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments import SweepConfig
from benchmarks.experiments.long_run import run_until
from benchmarks.experiments.rig import Pool, serve


@pytest.mark.timeout(60)
async def test_segments_are_one_run_that_stops_when_enough() -> None:
    cfg = SweepConfig(isolate=False)
    times = np.sort(np.random.default_rng(1).uniform(0.0, 3.0, 60))
    pool = Pool("main", cfg.artifact(4), 1, {"ttft_slo_s": 10.0})
    async with serve(cfg, [pool], {"mode": "off"}) as stack:
        full = await run_until(stack.url, cfg, times, segment_s=1.0, enough=lambda m: False,
                               seed=1)
        early = await run_until(stack.url, cfg, times, segment_s=1.0,
                                enough=lambda m: m.intended.size >= 10, seed=1)
    assert full.stopped_by == "cap" and full.measured.intended.size == times.size
    assert full.measured.completed.all()
    assert np.all(np.diff(full.measured.intended) >= 0)  # one time axis, in order
    # Segment 0 (t < 1 s) is judged while segment 1 is in flight; both are kept, no more.
    assert early.stopped_by == "enough" and early.sent_s == 2.0
    assert early.measured.intended.size == int((times < 2.0).sum())
    assert early.measured.completed.all()
