"""Admission from observed timings (issue 14): a replica whose artifact runs each token 10 %
slower than it declares, on a virtual clock.

The replica is simulated exactly (FIFO over its slots, every request holding its slot for the
*true* service time); the router's admitter decides each arrival, hears each first token and
each end at their true times, and its drift estimator (:mod:`router.drift`) is fed each
completed stream's true times, as the attempt loop feeds it. The margin is fixed at 0 in both
runs, so the only difference is the timings the replica's timeline schedules with:

* with the declared timings (the estimator not wired to the admitter), queued requests are
  predicted to start too early and some admitted requests miss the TTFT SLO (so the check
  below can fail);
* with observed timings in use (the estimator wired, as ``router/app.py`` does), once
  ``drift_min_samples`` per-token samples exist, 0 admitted requests miss it.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from lpu_protocol.load_report import LoadReport
from router.admission import AdmissionRequest, Admitted
from router.admission.controller import TimelineAdmitter
from router.admission.observed import timing_in_use
from router.admission.settings import (
    AdmissionSettings,
    BucketPolicy,
    MarginPolicy,
    ReplicaShape,
)
from router.admission.timeline import RETIME_STEP, ReplicaTimeline
from router.drift import DriftEstimator
from router.metrics import make_metrics
from router.outcomes import Outcome

SLO_S = 1.0
TOKENS = 32
SLOTS = 2
DECLARED = ReplicaShape("http://r0", slots=SLOTS, prefill_s=0.1, per_token_s=0.01)
TRUE_PER_TOKEN_S = 0.011
"""What the replica really runs: 10 % slower per token than it declares."""
GAP_S = 0.1
"""One arrival every 0.1 s: 10/s against a true capacity of 2 / 0.441 s = 4.5/s, so the queue
stays as deep as the SLO lets admission make it."""
ARRIVALS = 300
MIN_SAMPLES = 16
EPS = 1e-9


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Served:
    decided_at: float
    first_at: float
    end_at: float
    observed_in_use: bool
    """The replica's timeline scheduled with observed timings when this one was admitted."""

    @property
    def late(self) -> bool:
        return self.first_at - self.decided_at > SLO_S + EPS


def _simulate(*, observed: bool) -> tuple[list[Served], int]:
    """Run :data:`ARRIVALS` arrivals; (every admitted request, refusals)."""
    clock = Clock()
    settings = AdmissionSettings(
        buckets=(BucketPolicy("b", (DECLARED,), ttft_slo_s=SLO_S, target_utilization=1.0),),
        margin_s=0.0, margin=MarginPolicy.FIXED, drift_min_samples=MIN_SAMPLES)
    admitter = TimelineAdmitter(settings, clock=clock)
    drift = DriftEstimator(make_metrics(CollectorRegistry()), tolerance=0.05,
                           on_estimate=admitter.observe_timing if observed else None)
    timeline = admitter._buckets["b"].by_url[DECLARED.url]
    true_service = DECLARED.prefill_s + (TOKENS - 1) * TRUE_PER_TOKEN_S
    free = [0.0] * SLOTS  # the true replica's slot free times (a heap)
    events: list[tuple[float, int, str, int]] = []  # (time, order, kind, request)
    order = 0
    for i in range(ARRIVALS):
        events.append((i * GAP_S, order, "arrive", i))
        order += 1
    heapq.heapify(events)
    served: dict[int, Served] = {}
    tickets: dict[int, Admitted] = {}
    refused = 0
    while events:
        t, _, kind, i = heapq.heappop(events)
        clock.t = t
        if kind == "arrive":
            d = admitter.decide(AdmissionRequest("b", prompt_tokens=10, max_tokens=TOKENS))
            if not isinstance(d, Admitted):
                refused += 1
                continue
            start = max(t, free[0])
            heapq.heapreplace(free, start + true_service)
            served[i] = Served(t, start + DECLARED.prefill_s, start + true_service,
                               bool(timeline.observed_timings))
            tickets[i] = d
            heapq.heappush(events, (served[i].first_at, order, "first", i))
            heapq.heappush(events, (served[i].end_at, order + 1, "end", i))
            order += 2
        elif kind == "first":
            tickets[i].ticket.first_token()
        else:
            tickets[i].ticket.finish(Outcome.COMPLETED, TOKENS)
            s = served[i]
            drift.observe("b", DECLARED.url, sent_at=s.decided_at, first_at=s.first_at,
                          end_at=s.end_at, tokens=TOKENS,
                          idle=tickets[i].predicted_wait_s == 0.0)
    return list(served.values()), refused


def test_declared_timings_let_admitted_requests_miss_the_slo() -> None:
    served, refused = _simulate(observed=False)
    assert refused > 0  # the load is beyond capacity: admission is what keeps the SLO
    assert not any(s.observed_in_use for s in served)
    late = [s for s in served if s.late]
    assert len(late) > 0.2 * len(served), (len(late), len(served))


def test_observed_timings_keep_every_admitted_request_within_the_slo() -> None:
    served, refused = _simulate(observed=True)
    assert refused > 0
    after = [s for s in served if s.observed_in_use]
    # In use from the MIN_SAMPLES-th completion on: most of the run.
    assert len(after) > 0.8 * len(served), (len(after), len(served))
    assert [s for s in after if s.late] == []
    # Nothing bought with idle capacity: from the switch to the last arrival every slot of
    # the replica is busy (on the true schedule).
    w0, w1 = min(s.decided_at for s in after), (ARRIVALS - 1) * GAP_S
    busy = sum(max(0.0, min(s.end_at, w1) - max(s.first_at - DECLARED.prefill_s, w0))
               for s in served)
    assert busy == pytest.approx(SLOTS * (w1 - w0), abs=EPS)


@pytest.mark.parametrize(("declared", "observed", "samples", "expected"), [
    (0.01, 0.011, 16, 0.011),  # 10 % beyond 5 %, enough samples: observed
    (0.01, 0.011, 15, None),  # too few samples yet
    (0.01, 0.0104, 64, None),  # within the tolerance: declared
    (0.01, 0.009, 16, 0.009),  # faster than declared counts too (a mislabel either way)
    (0.0, 0.011, 16, None),  # nothing declared: nothing to compare
], ids=["drift", "few-samples", "within", "faster", "no-declared"])
def test_timing_in_use(declared: float, observed: float, samples: int,
                       expected: float | None) -> None:
    assert timing_in_use(declared, observed, samples, tolerance=0.05,
                         min_samples=16) == expected


def test_observed_timings_survive_reports_and_clear() -> None:
    tl = ReplicaTimeline(DECLARED)
    tl.use_observed("per_token_s", 0.011, 0.0)
    assert tl.shape.per_token_s == 0.011 and tl.shape.prefill_s == DECLARED.prefill_s
    assert tl.served is DECLARED
    # A report declaring other timings changes what is declared, not what is observed.
    tl.merge_report(LoadReport(SLOTS, 0, 0, (0.0, 0.0), 0.2, 0.02), 0.0, 0.0)
    assert (tl.served.prefill_s, tl.served.per_token_s) == (0.2, 0.02)
    assert (tl.shape.prefill_s, tl.shape.per_token_s) == (0.2, 0.011)
    tl.use_observed("per_token_s", None, 0.0)
    assert tl.shape is tl.served
    assert tl.snapshot(0.0)["timings"] == {"prefill_s": 0.2, "per_token_s": 0.02,
                                           "observed": []}


def test_the_admitter_switches_back_when_the_estimate_returns_within_tolerance() -> None:
    settings = AdmissionSettings(buckets=(BucketPolicy("b", (DECLARED,)),),
                                 drift_min_samples=MIN_SAMPLES)
    a = TimelineAdmitter(settings, clock=Clock())
    a.observe_timing("b", DECLARED.url, "per_token", 0.011, MIN_SAMPLES)
    rep = a._buckets["b"].by_url[DECLARED.url]
    assert rep.shape.per_token_s == 0.011
    a.observe_timing("b", DECLARED.url, "per_token", 0.0101, MIN_SAMPLES + 1)
    assert rep.shape is rep.served
    a.observe_timing("b", "http://unknown", "per_token", 0.011, MIN_SAMPLES)  # ignored
    a.observe_timing("nope", DECLARED.url, "per_token", 0.011, MIN_SAMPLES)  # ignored


def test_an_estimate_that_moves_within_the_step_keeps_the_timing_in_use() -> None:
    """The drift estimator's median moves at every sample; the live reservations are re-timed
    (and the timeline rebuilt) only once it is RETIME_STEP away from the timing in use."""
    tl = ReplicaTimeline(DECLARED)
    rebuilds = 0
    rebuild = tl.rebuild

    def counted(now: float) -> None:
        nonlocal rebuilds
        rebuilds += 1
        rebuild(now)

    tl.rebuild = counted  # type: ignore[method-assign]
    tl.reserve(0, DECLARED.timings.service_s(TOKENS), 0.0)
    tl.use_observed("per_token_s", 0.011, 0.0)
    assert (tl.shape.per_token_s, rebuilds) == (0.011, 1)
    for k in range(1, 10):  # 0.1 % steps up to 0.9 %: all within the step of 0.011
        tl.use_observed("per_token_s", 0.011 * (1 + RETIME_STEP * k / 10), 0.0)
    assert (tl.shape.per_token_s, rebuilds) == (0.011, 1)
    tl.use_observed("per_token_s", 0.011 * (1 + 1.5 * RETIME_STEP), 0.0)
    assert (tl.shape.per_token_s, rebuilds) == (0.011 * (1 + 1.5 * RETIME_STEP), 2)
    reserved = next(tl.ends())  # the live reservation was re-timed to the new timing
    assert reserved == pytest.approx(tl.shape.timings.service_s(TOKENS))
    tl.use_observed("per_token_s", None, 0.0)  # back to declared: at once
    assert (tl.shape is tl.served, rebuilds) == (True, 3)


def test_an_observed_shape_keeps_every_other_field_of_the_declared_one() -> None:
    """The observed shape is built field by field (router.admission.timeline._with_observed):
    it must equal the declared shape with only the observed timings changed, and the init
    fields must be the four it passes (a new field would be dropped there otherwise)."""
    assert [f.name for f in dataclasses.fields(ReplicaShape) if f.init] == [
        "url", "slots", "prefill_s", "per_token_s"]
    tl = ReplicaTimeline(DECLARED)
    tl.use_observed("prefill_s", DECLARED.prefill_s * 2, 0.0)
    assert tl.shape == dataclasses.replace(DECLARED, prefill_s=DECLARED.prefill_s * 2)
    assert tl.shape.timings.prefill_s == DECLARED.prefill_s * 2
