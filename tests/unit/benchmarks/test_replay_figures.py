"""Experiment 8's figures from hand-made records and schedules: each case one reason a request
counts where it does (home bucket, spill, SLO on the schedule and at the client)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.experiments.replay_figures import (
    Served,
    arm_figures,
    ended_once_problems,
    merge_schedules,
    utilization,
)
from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.workload import PlannedRequest

_SLO = {"short": 0.32, "medium": 0.76}
_P = "r-"


def _record(outcome: ClientOutcome, status: int, ttft: float | None) -> RequestRecord:
    return RequestRecord(0, 0.0, 100, 10, "short", sent_s=0.0, outcome=outcome.value,
                         status=status, ttft_s=ttft)


def _figures(home: str, rec: RequestRecord, served: list[Served], scale: float = 1.0
             ) -> dict[str, Any]:
    planned = [PlannedRequest(0, 0.0, 100, 10, home)]
    return arm_figures(planned, [rec], {f"{_P}0": served} if served else {}, prefix=_P,
                       buckets=["short", "medium"], slo_s=_SLO, scale=scale, window_s=1.0)


_OK = ClientOutcome.COMPLETED
CASES = [
    # (id, home, record, schedule entries, scale, expected in the home bucket's figures)
    ("met on its own bucket", "short", _record(_OK, 200, 0.1),
     [Served("short", 0.0, 0.1, "done")], 1.0,
     {"met": 1, "own_met": 1, "met_schedule": 1, "violations": 0, "spilled_to": {"medium": 0}}),
    ("spilled and met: goodput of its home, not of its own bucket", "short",
     _record(_OK, 200, 0.3), [Served("medium", 0.0, 0.3, "done")], 1.0,
     {"met": 1, "own_met": 0, "spilled_to": {"medium": 1}, "violations": 0}),
    ("spilled, judged by its home's SLO (0.32 s), not the larger bucket's", "short",
     _record(_OK, 200, 0.5), [Served("medium", 0.0, 0.5, "done")], 1.0,
     {"met": 0, "late_client": 1, "violations": 1, "met_schedule": 0}),
    ("late at the client only: on time on the schedule", "short", _record(_OK, 200, 0.4),
     [Served("short", 0.0, 0.3, "done")], 1.0,
     {"met": 0, "late_client": 1, "violations": 0, "met_schedule": 1}),
    ("scaled run: wall seconds / scale are model seconds", "medium", _record(_OK, 200, 0.2),
     [Served("medium", 0.0, 0.2, "done")], 0.25,
     {"met": 0, "late_client": 1, "violations": 1}),
    ("refused: counted, never admitted", "short", _record(ClientOutcome.REJECTED, 429, None),
     [], 1.0, {"refused": 1, "admitted": 0, "met": 0}),
    ("cut at the drain: timed out, not failed", "medium",
     _record(ClientOutcome.TIMED_OUT, 0, None), [], 1.0,
     {"timed_out": 1, "failed": 0, "admitted": 0}),
    ("an error answer: failed, by status", "medium", _record(ClientOutcome.FAILED, 503, None),
     [], 1.0, {"failed": 1, "failed_by_status": {"503": 1}}),
]


@pytest.mark.parametrize(("home", "rec", "served", "scale", "want"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_arm_figures(home: str, rec: RequestRecord, served: list[Served], scale: float,
                     want: dict[str, Any]) -> None:
    got = _figures(home, rec, served, scale)["buckets"][home]
    assert {k: got[k] for k in want} == want


def test_merge_keeps_the_last_read_of_each_request() -> None:
    waiting = {"request_id": "r-0", "arrival": 1.0, "first_token": 1.5, "state": "waiting"}
    done = {**waiting, "first_token": 1.2, "state": "done"}
    merged = merge_schedules([("short", [waiting]), ("short", [done]),
                              ("medium", [{**done, "request_id": "r-1"}])])
    assert merged == {"r-0": [Served("short", 1.0, 1.2, "done")],
                      "r-1": [Served("medium", 1.0, 1.2, "done")]}


def test_ended_once_names_a_request_on_two_schedules_and_a_refused_one_on_any() -> None:
    planned = [PlannedRequest(i, 0.0, 100, 10, "short") for i in range(3)]
    records = [_record(_OK, 200, 0.1), _record(ClientOutcome.REJECTED, 429, None),
               _record(_OK, 200, 0.1)]
    entry = Served("short", 0.0, 0.1, "done")
    served = {"r-0": [entry], "r-1": [entry], "r-2": [entry, entry]}
    assert ended_once_problems(planned, records, served, _P) == [
        "request 1 refused, yet on a schedule", "request 2 admitted, on 2 schedules"]
    assert ended_once_problems(planned, records, {"r-0": [entry], "r-2": [entry]}, _P) == []


def _busy(bucket: str, start: float | None, end: float | None) -> Served:
    return Served(bucket, 0.0, 0.1, "done", start, end)


UTILIZATION_CASES = [
    # (id, served, scale, expected per bucket; slots short 2, medium 1, window 4 s)
    ("busy slot-seconds over slots x window", {"r-0": [_busy("short", 0.0, 2.0)]}, 1.0,
     {"short": 0.25, "medium": 0.0}),
    ("counted on the bucket that served it, whoever's traffic",
     {"r-0": [_busy("medium", 1.0, 3.0)], "r-1": [_busy("medium", 3.0, 4.0)]}, 1.0,
     {"short": 0.0, "medium": 0.75}),
    ("scaled run: wall seconds / scale", {"r-0": [_busy("short", 0.0, 1.0)]}, 0.5,
     {"short": 0.25, "medium": 0.0}),
    ("another run's requests count nothing", {"x-0": [_busy("short", 0.0, 4.0)]}, 1.0,
     {"short": 0.0, "medium": 0.0}),
    ("an entry without its times counts nothing", {"r-0": [_busy("short", None, 2.0)]}, 1.0,
     {"short": 0.0, "medium": 0.0}),
]


@pytest.mark.parametrize(("served", "scale", "want"), [c[1:] for c in UTILIZATION_CASES],
                         ids=[c[0] for c in UTILIZATION_CASES])
def test_utilization(served: dict[str, list[Served]], scale: float,
                     want: dict[str, float]) -> None:
    assert utilization(served, prefix=_P, slots={"short": 2, "medium": 1}, scale=scale,
                       window_s=4.0) == pytest.approx(want)


def test_arm_figures_hold_utilization_only_when_given_slots() -> None:
    planned = [PlannedRequest(0, 0.0, 100, 10, "short")]
    served = {f"{_P}0": [Served("medium", 0.0, 0.3, "done", 0.0, 0.5)]}
    args: dict[str, Any] = {"prefix": _P, "buckets": ["short", "medium"], "slo_s": _SLO,
                            "scale": 1.0, "window_s": 1.0}
    rec = [_record(_OK, 200, 0.3)]
    assert "utilization" not in arm_figures(planned, rec, served, **args)
    got = arm_figures(planned, rec, served, slots={"short": 8, "medium": 1}, **args)
    assert got["utilization"] == {"short": 0.0, "medium": 0.5}


def test_merge_reads_each_entrys_slot_times() -> None:
    entry = {"request_id": "r-0", "arrival": 1.0, "start": 1.1, "first_token": 1.2,
             "end": 2.0, "state": "done"}
    assert merge_schedules([("short", [entry])]) == {
        "r-0": [Served("short", 1.0, 1.2, "done", 1.1, 2.0)]}
