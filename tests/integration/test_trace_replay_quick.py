"""Experiment 8's replay, end to end on loopback (router and emulators in this event loop): the
invariants of its quick variant, never its speed.

The arrivals: the trace's busiest 2 minutes at the quick replay's speed (compressed to the 2x
overload, artifact durations x4), only the requests whose home is the short bucket, so that the
short bucket is overloaded while the medium one idles: spill must then happen when it is on,
and must not when every bucket says ``spill = false``. On both arms: every request the client saw
admitted is on exactly one recorded schedule (and a refused one on none), and no admitted
request's first token is scheduled later than its home bucket's SLO after its arrival.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.experiments import SweepConfig
from benchmarks.experiments import exp8_trace_replay as exp8
from benchmarks.traces import read_trace
from benchmarks.workload import PlannedRequest


def _short_only() -> tuple[exp8.Replay, list[PlannedRequest]]:
    trace = read_trace(exp8.TRACE, "azure")
    homes = exp8.home_buckets(trace)
    (quick,) = exp8.replays(trace, homes, quick=True)
    busy = replace(quick, start_s=exp8.busiest_window(trace, 120.0), length_s=120.0)
    planned = [p for p in exp8.plan_window(trace, homes, busy) if p.bucket == "short"]
    return busy, [replace(p, index=i) for i, p in enumerate(planned)]


@pytest.mark.timeout(120)
async def test_quick_replay_spills_only_when_on_and_keeps_every_slo() -> None:
    replay, planned = _short_only()
    assert len(planned) > 100
    cfg = SweepConfig(isolate=False)
    runs = {arm: await exp8.replay_arm(cfg, arm, replay, planned)
            for arm in ("spill", "no_spill")}
    for arm, run in runs.items():
        total = run.figures["total"]
        assert run.figures["ended_once_problems"] == [], arm
        assert total["offered"] == len(planned) and total["failed"] == 0, (arm, total)
        assert total["violations"] == 0, (arm, total)
        assert total["refused"] > 0, (arm, total)  # overloaded, or the test shows nothing
    spill, nospill = runs["spill"].figures, runs["no_spill"].figures
    assert spill["buckets"]["short"]["spilled_to"]["medium"] > 0
    assert nospill["buckets"]["short"]["spilled_to"]["medium"] == 0
    assert nospill["total"]["spills"] == 0
    # Every spilled request ran on the medium bucket's emulator, as the schedules recorded.
    on_medium = [rid for rid, entries in runs["spill"].served.items()
                 if entries[0].bucket == "medium"]
    assert len(on_medium) == spill["buckets"]["short"]["spilled_to"]["medium"]
