"""What the cheap admission path relies on: the rule never reads utilization unless a queue
forms, the gauges the request path no longer sets are right at a scrape, and the timeline's
shortcut merges give what sorting everything gives."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from lpu_protocol.artifact import Timings
from router.admission import AdmissionRequest, Admitted, Priority, Refused
from router.admission.controller import TimelineAdmitter
from router.admission.decision import Inputs, judge
from router.admission.settings import AdmissionSettings, BucketPolicy, PriorityRule, ReplicaShape
from router.admission.timeline import _later_per_slot, _later_than_floor, _with_latest
from router.metrics import make_metrics
from router.outcomes import Outcome

SHAPE = ReplicaShape("http://r0", slots=2, prefill_s=0.1, per_token_s=0.01)
POLICY = BucketPolicy("short", (SHAPE,), ttft_slo_s=0.5, e2e_slo_s=1.0, max_queue=2,
                      max_concurrency=3)
BATCH = PriorityRule(Priority.BATCH, share=0.5, utilization_factor=1.0)


def _inputs(**kw: object) -> Inputs:
    base = Inputs(
        policy=POLICY, rule=BATCH, wait_s=0.0, timings=SHAPE.timings, max_tokens=11,
        reserve_tokens=11, wait_budget_s=0.0, queued=0, in_flight=0, utilization=0.0,
        next_queue_exit_s=lambda k: 0.2 * k, next_slot_exit_s=lambda k: 0.3 * k,
        margin_s=0.01, window_s=10.0, min_retry_after_s=0.01,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"wait_s": 0.01},  # a wait within the margin starts at once
        {"in_flight": 3},  # concurrency
        {"wait_s": 0.005, "queued": 5},  # queue full
        {"timings": Timings(0.3, 0.01)},  # the batch share of the TTFT SLO
        {"max_tokens": 200, "reserve_tokens": 200},  # end to end
        {"max_tokens": 200, "reserve_tokens": 200, "elapsed_s": 0.2},
    ],
    ids=["admitted", "wait-within-margin", "concurrency", "queue-full", "slo-ttft", "slo-e2e",
         "slo-e2e-elapsed"],
)
@pytest.mark.parametrize("utilization", [0.0, 0.99, 1.0])
def test_the_rule_ignores_utilization_unless_a_queue_forms(
    kw: dict[str, object], utilization: float,
) -> None:
    measured = judge(_inputs(utilization=utilization, utilization_age_s=0.05, **kw))
    unmeasured = judge(_inputs(utilization=math.nan, **kw))
    assert unmeasured == measured


def test_a_queue_forming_decision_still_reads_utilization() -> None:
    x = _inputs(wait_s=0.05)
    assert not isinstance(judge(x), Refused)
    refused = judge(dataclasses.replace(x, utilization=0.9))
    assert isinstance(refused, Refused) and refused.reason == "utilization"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_gauges_read_at_a_scrape_follow_the_schedule() -> None:
    clock = Clock()
    m = make_metrics(CollectorRegistry())
    policy = BucketPolicy("short", (SHAPE,), ttft_slo_s=0.5)
    a = TimelineAdmitter(AdmissionSettings(buckets=(policy,), margin_s=0.0,
                                           utilization_window_s=1.0), clock=clock, metrics=m)
    get = m.registry.get_sample_value
    req = AdmissionRequest("short", prompt_tokens=10, max_tokens=11)  # holds a slot 0.2 s
    ds = [a.decide(req) for _ in range(3)]
    assert get("lpu_router_queue_depth", {"bucket": "short"}) == 1
    clock.t = 0.1
    first = ds[0]
    assert isinstance(first, Admitted)
    first.ticket.finish(Outcome.COMPLETED, 5)  # the queued request takes its slot now
    assert get("lpu_router_queue_depth", {"bucket": "short"}) == 0
    # No decision read utilization (none waited beyond the margin): the scrape measures it,
    # over the 1 s window of 2 slot-seconds.
    clock.t = 0.2
    busy = 0.1 + 0.2 + 0.1  # finished 0-0.1, running 0-0.2, running 0.1-0.2
    assert get("lpu_router_utilization", {"bucket": "short"}) == pytest.approx(busy / 2.0)
    assert get("lpu_router_headroom", {"bucket": "short"}) == pytest.approx(0.85 - busy / 2.0)


_TIMES = st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.25, 0.5, 1.0, 2.0]), max_size=70)


@settings(max_examples=300, deadline=None)
@given(ends=_TIMES, floor=_TIMES, more=_TIMES, c=st.sampled_from([1, 4, 8, 64]))
def test_the_tails_merges_give_what_sorting_everything_gives(
    ends: list[float], floor: list[float], more: list[float], c: int,
) -> None:
    ends, more = sorted(ends)[-c:], sorted(more)
    floor = sorted(floor + [-math.inf] * c)[-c:]
    padded = [-math.inf] * (c - len(ends)) + ends
    assert _later_than_floor(ends, floor) == _later_per_slot(padded, floor)
    expected = sorted(sorted(ends + more[-c:])[-c:] + [-math.inf] * c)[-c:]
    kept = _with_latest(list(ends), more, c)
    assert sorted(kept) == expected
    assert all(kept[(i - 1) // 2] <= kept[i] for i in range(1, c))  # a heap
