"""TimelineAdmitter on a virtual clock: exact waits, completions, replicas, priorities,
tenants, degraded mode, learned lengths, reports, refusals by backends, metrics."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from router.admission import AdmissionRequest, Decision, Priority, Refused
from router.admission.controller import TimelineAdmitter
from router.admission.settings import (
    AdmissionSettings,
    BucketPolicy,
    PredictionPolicy,
    ReplicaShape,
    TenantPolicy,
)
from router.metrics import make_metrics
from router.outcomes import Outcome, RejectReason
from router.pool import Replica


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# 2 slots per replica; 11 tokens hold a slot 0.1 + 10 * 0.01 = 0.2 s.
R0 = ReplicaShape("http://r0", slots=2, prefill_s=0.1, per_token_s=0.01)
R1 = dataclasses.replace(R0, url="http://r1")
BUCKET = BucketPolicy("short", (R0,), ttft_slo_s=0.5)


def _admitter(*buckets: BucketPolicy, **kw: object) -> tuple[TimelineAdmitter, Clock]:
    clock = Clock()
    s = AdmissionSettings(buckets=buckets or (BUCKET,), margin_s=0.0, **kw)  # type: ignore[arg-type]
    return TimelineAdmitter(s, clock=clock), clock


def _req(max_tokens: int = 11, **kw: object) -> AdmissionRequest:
    return AdmissionRequest("short", prompt_tokens=10, max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


def _end(d: Decision, outcome: Outcome = Outcome.COMPLETED, tokens: int | None = None) -> None:
    assert d.ticket is not None
    d.ticket.finish(outcome, tokens)


def test_exact_waits_for_a_burst_and_refusal_with_retry_after() -> None:
    a, _ = _admitter()
    ds = [a.decide(_req()) for _ in range(6)]
    assert all(d.admitted for d in ds)
    assert [round(d.predicted_wait_s, 9) for d in ds] == [0.0, 0.0, 0.2, 0.2, 0.4, 0.4]
    assert [round(d.terms.predicted_ttft_s, 9) for d in ds] == [0.1, 0.1, 0.3, 0.3, 0.5, 0.5]
    # The last two wait 0.4 s + 0.1 s prefill = 0.5 s: exactly the SLO, admitted.
    no = a.decide(_req())
    assert (no.admitted, no.reason) == (False, RejectReason.SLO_TTFT)
    assert no.predicted_wait_s == pytest.approx(0.6)
    assert no.retry_after_s == pytest.approx(0.2)  # the wait must shrink from 0.6 to 0.4
    assert isinstance(no, Refused)
    assert ds[0].terms.deadline_s == 0.5 and ds[0].terms.max_tokens == 11


def test_early_completion_frees_the_slot_for_the_next_request() -> None:
    a, clock = _admitter()
    ds = [a.decide(_req()) for _ in range(3)]  # third starts at 0.2
    clock.t = 0.05
    _end(ds[0], tokens=2)  # stopped after 2 tokens
    d = a.decide(_req())
    # Slots now free at 0.25 (third, started at 0.05) and 0.2 (second).
    assert d.predicted_wait_s == pytest.approx(0.15)


def test_cancellation_of_a_queued_request_moves_later_ones() -> None:
    a, clock = _admitter()
    ds = [a.decide(_req()) for _ in range(5)]
    clock.t = 0.01
    _end(ds[2], Outcome.CANCELLED)
    d = a.decide(_req())
    assert d.predicted_wait_s == pytest.approx(0.4 - 0.01)  # 4 left: slots free at 0.4, 0.4
    assert ds[2].ticket is not None
    ds[2].ticket.finish(Outcome.COMPLETED)  # idempotent: a second finish changes nothing
    assert a.decide(_req()).predicted_wait_s == pytest.approx(0.39)


def test_several_replicas_pick_least_ttft_spread_ties_and_honour_exclude() -> None:
    health = {url: Replica("short", url) for url in ("http://r0", "http://r1")}
    bucket = dataclasses.replace(BUCKET, replicas=(R0, R1))
    a = TimelineAdmitter(AdmissionSettings(buckets=(bucket,), margin_s=0.0), clock=Clock(),
                         health=lambda bucket, url: health[url])
    backends = [a.decide(_req()).backend or "" for _ in range(4)]
    assert sorted(backends) == ["http://r0", "http://r0", "http://r1", "http://r1"]
    assert backends[:2] == ["http://r0", "http://r1"]  # ties go to the emptier replica
    d = a.decide(_req(), exclude=frozenset({"http://r0"}))
    assert d.backend == "http://r1" and d.predicted_wait_s == pytest.approx(0.2)
    health["http://r1"].up = False  # the pool's record: the admitter keeps no copy
    assert a.decide(_req(), exclude=frozenset({"http://r0"})).reason == RejectReason.NO_BACKEND


def test_first_token_pins_the_observed_start_and_feeds_prediction_error() -> None:
    clock = Clock()
    m = make_metrics(CollectorRegistry())
    a = TimelineAdmitter(AdmissionSettings(buckets=(BUCKET,), margin_s=0.0), clock=clock,
                         metrics=m)
    d1, d2 = a.decide(_req()), a.decide(_req())
    clock.t = 0.15  # first token 0.05 s late: the backend started it at 0.05
    assert d1.ticket is not None
    d1.ticket.first_token()
    assert a.decide(_req()).predicted_wait_s == pytest.approx(0.2 - 0.15)  # d2's slot
    assert d2.admitted
    # Actual 0.15 s minus predicted 0.1 s: in the (0.025, 0.05] bucket. (No _sum: the
    # histogram has negative buckets.)
    name = "lpu_router_prediction_error_seconds_bucket"
    get = m.registry.get_sample_value
    assert get(name, {"bucket": "short", "le": "0.025"}) == 0
    assert get(name, {"bucket": "short", "le": "0.05"}) == 1


def test_degraded_mode_clamps_instead_of_refusing() -> None:
    policy = dataclasses.replace(BUCKET, e2e_slo_s=0.5, degraded_min_tokens=5)
    a, _ = _admitter(policy)
    a.decide(_req())
    a.decide(_req())  # both slots busy until 0.2
    d = a.decide(_req(max_tokens=31))  # would end at 0.2 + 0.4 = 0.6 > 0.5
    assert d.admitted and d.terms.degraded
    assert d.terms.max_tokens == 21  # 0.2 + 0.1 + 20 * 0.01 = 0.5
    tight = dataclasses.replace(policy, degraded_min_tokens=25)
    b, _ = _admitter(tight)
    b.decide(_req())
    b.decide(_req())
    assert b.decide(_req(max_tokens=31)).reason == RejectReason.SLO_E2E


def test_learned_prediction_reserves_the_learned_length() -> None:
    a, clock = _admitter(prediction=PredictionPolicy.LEARNED, learned_min_samples=4)
    for _ in range(4):
        d = a.decide(_req(max_tokens=101))
        _end(d, tokens=11)
    d1, d2 = a.decide(_req(max_tokens=101)), a.decide(_req(max_tokens=101))
    assert d1.terms.max_tokens == 101  # the allowance is not cut, only the reservation
    assert a.decide(_req()).predicted_wait_s == pytest.approx(0.2)  # not 1.1 s
    assert d2.admitted and clock.t == 0.0


def test_tenant_limits_refuse_report_and_refund() -> None:
    tenant = TenantPolicy("acme", requests_per_minute=3, tokens_per_minute=100)
    a, clock = _admitter(tenants=(tenant,))
    d = a.decide(_req(max_tokens=30, tenant="acme"))  # charges 10 + 30 at t = 0
    assert d.admitted and d.ratelimit is not None
    assert (d.ratelimit.remaining_requests, d.ratelimit.remaining_tokens) == (2, 60)
    _end(d, tokens=10)  # 20 unused tokens come back: the charge is 20
    clock.t = 10.0
    d = a.decide(_req(max_tokens=50, tenant="acme"))  # 60 more at t = 10
    assert d.ratelimit is not None and d.ratelimit.remaining_tokens == 20
    assert d.ratelimit.reset_tokens_s == pytest.approx(60.0)  # the newest charge leaves at 70
    no = a.decide(_req(max_tokens=30, tenant="acme"))
    assert no.reason == RejectReason.TENANT_TPM and a.ratelimit("acme") is not None
    # 40 needed, 20 left: the first charge (20) must leave the window, at 0 + 60.
    assert no.retry_after_s == pytest.approx(50.0)
    assert a.decide(_req(max_tokens=5, tenant="acme")).admitted  # 15 fits
    assert a.decide(_req(max_tokens=1, tenant="acme")).reason == RejectReason.TENANT_RPM
    assert a.decide(_req(max_tokens=1, tenant="other")).admitted  # unknown tenant: no limit
    clock.t = 60.0  # the first request left the window at 60 exactly
    d = a.decide(_req(max_tokens=1, tenant="acme"))
    assert d.admitted and d.ratelimit is not None
    assert (d.ratelimit.remaining_requests, d.ratelimit.remaining_tokens) == (0, 14)


def test_a_request_the_backend_refused_gives_its_whole_charge_back() -> None:
    tenant = TenantPolicy("acme", requests_per_minute=1, tokens_per_minute=100)
    a, _ = _admitter(tenants=(tenant,))
    d = a.decide(_req(max_tokens=30, tenant="acme"))
    assert d.admitted
    assert a.decide(_req(tenant="acme")).reason == RejectReason.TENANT_RPM
    d.ticket.refused(0.3)
    state = a.ratelimit("acme")
    assert state is not None
    assert (state.remaining_requests, state.remaining_tokens) == (1, 100)
    assert state.reset_requests_s == 0.0
    d = a.decide(_req(tenant="acme"))
    assert d.admitted
    d.ticket.withdraw(RejectReason.CONCURRENCY)  # refused after the decision: back whole too
    assert a.decide(_req(tenant="acme")).admitted


def test_utilization_guard_sheds_batch_first() -> None:
    policy = dataclasses.replace(BUCKET, ttft_slo_s=100.0, target_utilization=0.5)
    a, clock = _admitter(policy, utilization_window_s=1.0, min_retry_after_s=0.01)
    long_req = _req(max_tokens=1001)  # holds a slot 10.1 s
    a.decide(long_req)
    a.decide(long_req)
    clock.t = 0.52  # both slots busy for 0.52 of the 1 s window
    batch = a.decide(_req(priority=Priority.BATCH))
    assert batch.reason == RejectReason.UTILIZATION  # batch sheds at the target, 0.5
    # Both slots stay busy, so utilization only grows until one frees at 10.1 s: retrying
    # any earlier is refused again (the old estimate, (0.52 - 0.5) * 1 s, was).
    assert batch.retry_after_s == pytest.approx(10.1 - 0.52)
    assert a.decide(_req(priority=Priority.STANDARD)).admitted  # sheds at 0.5 * 1.1
    assert a.decide(_req(priority=Priority.INTERACTIVE)).admitted


def test_backend_refusal_corrects_the_timeline() -> None:
    two = dataclasses.replace(BUCKET, replicas=(R0, R1))
    a = TimelineAdmitter(AdmissionSettings(buckets=(two,), margin_s=0.0), clock=Clock(),
                         metrics=make_metrics(CollectorRegistry()))
    d = a.decide(_req())
    assert d.ticket is not None and d.backend == "http://r0"
    d.ticket.refused(0.45)  # another router filled it: start at 0.35
    d.ticket.finish(Outcome.FAILED)  # no-op after the refusal
    retry = a.decide(_req(), exclude=frozenset({"http://r0"}))
    assert retry.backend == "http://r1"
    snap = a.snapshot()["buckets"]["short"]
    r0 = snap["replicas"][0]
    assert r0["reserved"] == 0 and r0["predicted_wait_s"] == pytest.approx(0.35)
    # The counts are the metrics': one admission, then its backend's refusal.
    assert snap["counts"]["rejected"] == {"backend_deadline": 1}
    assert snap["counts"]["admitted"] == 2  # the refused attempt and its retry


def test_load_reports_merge_other_routers_work() -> None:
    a, clock = _admitter()
    clock.t = 1.0
    a.observe_load("short", "http://r0", {
        "slots": 2, "running": 1, "waiting": 2, "slot_free_in_s": [0.3, 0.45],
        "prefill_s": 0.1, "per_token_s": 0.01, "ready": True}, now=1.0, sent_at=0.999)
    d = a.decide(_req())
    assert d.predicted_wait_s == pytest.approx(0.3)
    assert a.decide(_req()).predicted_wait_s == pytest.approx(0.45)
    snap = a.snapshot()["buckets"]["short"]
    assert snap["utilization"] == 0.0  # a report counts from when it came (see below)
    assert snap["replicas"][0]["report"]["waiting"] == 2
    with pytest.raises(ValueError, match="invalid /load report"):
        a.observe_load("short", "http://r0", {"slots": 2}, now=1.0)
    a.observe_load("short", "http://r0", {
        "slots": 2, "running": 0, "waiting": 0, "slot_free_in_s": [0, 0],
        "prefill_s": 0.1, "per_token_s": 0.01, "ready": False}, now=1.0)
    assert a.decide(_req()).reason == RejectReason.NO_BACKEND


def test_reports_count_busy_time_in_the_window() -> None:
    # Reports from another router's work: 1 of 2 slots busy, held from each report to the
    # next. 2 s into a 10 s window that is 2 slot-seconds of 20, not the reports' mean (50 %).
    a, clock = _admitter()
    report = {"slots": 2, "running": 1, "waiting": 0, "slot_free_in_s": [0.0, 0.05],
              "prefill_s": 0.1, "per_token_s": 0.01, "ready": True}
    for i in range(41):
        clock.t = 0.05 * i
        a.observe_load("short", "http://r0", report, now=clock.t)
    assert a.snapshot()["buckets"]["short"]["utilization"] == pytest.approx(0.1)
    clock.t = 12.0  # polls kept coming: the window is all busy at 1 of 2 slots
    for i in range(201):
        a.observe_load("short", "http://r0", report, now=2.0 + 0.05 * i)
    assert a.snapshot()["buckets"]["short"]["utilization"] == pytest.approx(0.5)


def test_metrics_and_snapshot() -> None:
    clock = Clock()
    m = make_metrics(CollectorRegistry())
    policy = dataclasses.replace(BUCKET, max_queue=5, e2e_slo_s=2.0)
    a = TimelineAdmitter(AdmissionSettings(buckets=(policy,), margin_s=0.0), clock=clock,
                         metrics=m)
    for _ in range(7):
        a.decide(_req())
    get = m.registry.get_sample_value
    assert get("lpu_router_admission_decisions_total", {
        "bucket": "short", "priority": "standard", "decision": "admitted", "reason": "none"}) == 6
    assert get("lpu_router_admission_decisions_total", {
        "bucket": "short", "priority": "standard", "decision": "rejected",
        "reason": "slo_ttft"}) == 1
    assert get("lpu_router_queue_depth", {"bucket": "short"}) == 4
    assert get("lpu_router_admission_limit", {"bucket": "short", "limit": "max_queue"}) == 5
    assert get("lpu_router_predicted_wait_seconds_count", {"bucket": "short"}) == 6
    snap = a.snapshot()["buckets"]["short"]
    assert snap["queue_depth"] == 4 and snap["in_flight"] == 6
    assert snap["replicas"][0]["slot_free_in_s"] == [pytest.approx(0.6), pytest.approx(0.6)]
    assert snap["limits"]["max_queue"] == 5


# -- "an interactive request is never refused while sheddable work could be refused in
# its place": in any state, whatever refuses an interactive request refuses a batch (and a
# standard) request of the same shape.

# (class, max_tokens, clock step, end the oldest request first): dense enough that every
# class meets every kind of refusal.
_OPS = st.lists(
    st.tuples(st.sampled_from(list(Priority)), st.integers(1, 60), st.floats(0.0, 0.05),
              st.integers(0, 3).map(lambda k: k == 0)),
    min_size=1, max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS, probe_tokens=st.integers(1, 60))
def test_priority_nesting(
    ops: list[tuple[Priority, int, float, bool]], probe_tokens: int
) -> None:
    policy = dataclasses.replace(BUCKET, replicas=(R0, R1), max_queue=6, max_concurrency=9,
                                 e2e_slo_s=1.2, target_utilization=0.6)
    a, clock = _admitter(policy, utilization_window_s=1.0)
    live: list[Decision] = []
    for priority, tokens, dt, end_one in ops:
        clock.t += dt
        if end_one and live:
            _end(live.pop(0), tokens=1)
        d = a.decide(_req(max_tokens=tokens, priority=priority))
        if d.admitted:
            live.append(d)
        # Probe every class in the same state; a probe is refused, never admitted.
        verdicts = {p: _probe(a, probe_tokens, p) for p in Priority}
        if not verdicts[Priority.INTERACTIVE]:
            assert not verdicts[Priority.STANDARD]
        if not verdicts[Priority.STANDARD]:
            assert not verdicts[Priority.BATCH]


def _probe(a: TimelineAdmitter, tokens: int, priority: Priority) -> bool:
    d = a.decide(_req(max_tokens=tokens, priority=priority))
    if d.admitted:
        # Ending it at once, at the same instant, restores the state exactly (it held no
        # slot for any time).
        d.ticket.finish(Outcome.CANCELLED)
    return d.admitted
