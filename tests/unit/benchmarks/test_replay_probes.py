"""Experiment 8's probe requests and the delays read off them, on hand-made traces, records
and schedules: each case one reason a probe gives a delay sample or none."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments import exp8_trace_replay as exp8
from benchmarks.experiments.replay_figures import Served
from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.traces import Trace

_P = "p-"


def _rec(index: int, outcome: ClientOutcome, ttft: float | None) -> RequestRecord:
    return RequestRecord(index, 0.0, 100, 1, "short", sent_s=0.0, outcome=outcome.value,
                         ttft_s=ttft)


_OK = ClientOutcome.COMPLETED
DELAY_CASES = [
    ("client TTFT less the schedule's", _rec(0, _OK, 0.095), [Served("short", 1.0, 1.08, "done")],
     1.0, [0.015]),
    ("a scaled run gives model seconds", _rec(0, _OK, 0.19), [Served("short", 1.0, 1.16, "done")],
     2.0, [0.015]),
    ("refused: no sample", _rec(0, ClientOutcome.REJECTED, None), [], 1.0, []),
    ("completed but on no schedule: no sample", _rec(0, _OK, 0.1), [], 1.0, []),
]


@pytest.mark.parametrize(("rec", "served", "scale", "want"), [c[1:] for c in DELAY_CASES],
                         ids=[c[0] for c in DELAY_CASES])
def test_probe_delays(rec: RequestRecord, served: list[Served], scale: float,
                      want: list[float]) -> None:
    got = exp8.probe_delays([rec], {f"{_P}0": served} if served else {}, _P, scale)
    assert got == pytest.approx(want)


@pytest.mark.parametrize(("scale", "gap"), [(1.0, 0.5), (4.0, 2.0)],
                         ids=["scale 1: 0.5 s apart", "scale 4: 0.5 model s, 2 s of wall time"])
def test_probes_alternate_the_home_buckets_with_their_own_prompt_lengths(scale: float,
                                                                         gap: float) -> None:
    """A 10 s window at load 2 is 5 s of model time: 10 probes 0.5 model seconds apart, one
    token each, alternating short and medium, each prompt one of its home bucket's."""
    trace = Trace("hand", np.arange(6, dtype=np.float64), np.array([100, 3000, 200, 4000, 300,
                                                                    5000]),
                  np.full(6, 10))
    homes = ["short", "medium"] * 3
    rep = exp8.Replay("2x", 2.0, scale, 0.0, 10.0)
    got = exp8.probes(trace, homes, rep)
    assert [p.at_s for p in got] == pytest.approx([gap * i for i in range(10)])
    assert [p.bucket for p in got] == ["short", "medium"] * 5
    assert {p.max_tokens for p in got} == {1}
    assert all(p.prompt_tokens in ((100, 200, 300) if p.bucket == "short" else
                                   (3000, 4000, 5000)) for p in got)
    assert exp8.probes(trace, homes, rep) == got  # the same seed, the same probes


def test_no_probe_for_a_bucket_nobody_is_at_home_in() -> None:
    trace = Trace("hand", np.arange(4, dtype=np.float64), np.full(4, 100), np.full(4, 10))
    rep = exp8.Replay("10x", 1.0, 1.0, 0.0, 2.0, exp8.DEMO_LAYOUT)
    assert {p.bucket for p in exp8.probes(trace, ["short"] * 4, rep)} == {"short"}
