"""The small parts: priority resolution and rules, tenant buckets, busy window,
learned output lengths, /load validation."""

from __future__ import annotations

import pytest

from lpu_protocol.load_report import LoadReport
from router.admission import Priority
from router.admission.prediction import OutputLengthModel
from router.admission.priority import resolve_priority, rule_errors
from router.admission.ratelimit import TenantLimiter
from router.admission.settings import (
    DEFAULT_PRIORITY_RULES,
    PredictionPolicy,
    PriorityRule,
    TenantPolicy,
)
from router.admission.utilization import BusyWindow
from router.outcomes import RejectReason

GOLD = TenantPolicy("gold", priority=Priority.INTERACTIVE)

HI, S, B = Priority.INTERACTIVE, Priority.STANDARD, Priority.BATCH


@pytest.mark.parametrize(
    ("tenant", "header", "tier", "expected"),
    [
        (None, None, None, (S, 0.0)),
        (GOLD, None, None, (HI, 0.0)),
        (None, "interactive", None, (S, 0.0)),  # cannot raise above the tenant
        (GOLD, "batch", None, (B, 0.0)),
        (GOLD, None, "flex", (B, 0.0)),
        (GOLD, None, "on_demand", (HI, 2.0)),
        (None, None, "priority", (S, 0.0)),
        (GOLD, None, "priority", (HI, 0.0)),
        (GOLD, "standard", "flex", (B, 0.0)),  # the lower of header and tier
        (GOLD, "standard", "priority", (S, 0.0)),
        (None, None, "auto", (S, 0.0)),
        (None, None, "something-new", (S, 0.0)),
    ],
    ids=["default", "tenant", "no-raise", "header-lowers", "flex", "on-demand", "tier-capped",
         "tier-priority", "header-and-flex", "header-and-priority", "auto", "unknown-tier"],
)
def test_resolve_priority(tenant: TenantPolicy | None, header: str | None, tier: str | None,
                          expected: tuple[Priority, float]) -> None:
    assert resolve_priority(tenant, header, tier, on_demand_max_wait_s=2.0) == expected


def test_resolve_priority_rejects_unknown_header() -> None:
    with pytest.raises(ValueError, match="unknown priority 'urgent'"):
        resolve_priority(None, "urgent")


def test_rules_must_nest() -> None:
    assert rule_errors(DEFAULT_PRIORITY_RULES) == []
    bad = (PriorityRule(HI, share=0.4, utilization_factor=1.0),
           PriorityRule(B, share=0.5, utilization_factor=None),
           PriorityRule(B, share=1.5))
    errors = rule_errors(bad)
    assert "priorities.batch: given more than once" in errors
    assert any("share: must be in (0, 1]" in e for e in errors)
    assert any("interactive.share (0.4) must be >= priorities.standard.share" in e
               for e in errors)


def test_tenant_limits_are_sliding_windows_with_refunds() -> None:
    lim = TenantLimiter(TenantPolicy("t", requests_per_minute=2, tokens_per_minute=600))
    assert lim.check(100, 0.0) is None
    first = lim.consume(100, 0.0)
    lim.consume(100, 20.0)
    reason, retry, message = lim.check(100, 30.0) or (None, 0.0, "")
    assert reason == RejectReason.TENANT_RPM
    assert retry == pytest.approx(30.0)  # the first request leaves the window at 60
    assert "2 requests per minute" in message
    state = lim.state(30.0)
    assert (state.limit_requests, state.remaining_requests) == (2, 0)
    assert state.reset_requests_s == pytest.approx(50.0)  # the newest leaves at 80
    assert (state.limit_tokens, state.remaining_tokens) == (600, 400)  # no refill inside
    lim.refund(first, 60, 30.0)
    assert lim.state(30.0).remaining_tokens == 460
    lim.refund(first, 0, 30.0, request=True)
    assert lim.state(30.0).remaining_requests == 1
    assert lim.check(100, 59.999) is None
    state = lim.state(60.0)  # the first charge (40 tokens left of it) has left
    assert (state.remaining_requests, state.remaining_tokens) == (1, 500)
    state = lim.state(80.0)  # and the second: whole again
    assert (state.remaining_requests, state.remaining_tokens, state.reset_tokens_s) == (
        2, 600, 0.0)


@pytest.mark.parametrize(("charges", "want"), [
    ([(0.0, 1)] * 60, 60.0),  # 60 at once: the next one at 60 s
    ([(i / 6, 1) for i in range(60)], 60.0),  # 60 in the first 10 s: none until 60 s
    ([(i, 1) for i in range(60)], 60.0),  # one a second: each comes back after 60 s
], ids=["burst", "200-in-10s", "steady"])
def test_a_window_never_admits_more_than_its_limit_in_a_minute(
        charges: list[tuple[float, int]], want: float) -> None:
    lim = TenantLimiter(TenantPolicy("t", requests_per_minute=60))
    for at, _ in charges:
        assert lim.check(1, at) is None
        lim.consume(1, at)
    last = charges[-1][0]
    _, retry, _ = lim.check(1, last) or (None, 0.0, "")
    assert last + retry == pytest.approx(want)  # the first charge leaves, never earlier
    refused_until_then = [lim.check(1, last + i * 0.25) is not None
                          for i in range(int((want - last) / 0.25))]
    assert all(refused_until_then) and lim.check(1, want) is None


def test_tenant_token_limit_and_oversized_request() -> None:
    lim = TenantLimiter(TenantPolicy("t", tokens_per_minute=600))
    lim.consume(300, 0.0)
    lim.consume(200, 5.0)
    reason, retry, _ = lim.check(200, 10.0) or (None, 0.0, "")
    assert reason == RejectReason.TENANT_TPM
    assert retry == pytest.approx(50.0)  # 100 must leave: the first charge, at 60
    assert lim.check(100, 10.0) is None
    reason, retry, message = lim.check(700, 0.0) or (None, 0.0, "")
    assert reason == RejectReason.TENANT_TPM and "lower max_tokens" in message
    assert retry == 60.0


def test_busy_window_counts_intervals_inside_the_window() -> None:
    w = BusyWindow(10.0, bins=10)
    w.add_interval(0.0, 4.0, 4.0)
    w.add_interval(3.0, 5.0, 5.0)
    assert w.finished_busy(5.0) == pytest.approx(6.0)
    assert w.finished_busy(12.0) == pytest.approx(4.0)  # window 2..12: 2..4 and 3..5
    assert w.finished_busy(20.0) == pytest.approx(0.0)


def test_busy_window_reported_samples_are_held_until_the_next() -> None:
    w = BusyWindow(1.0)
    assert w.reported_busy(0.0) is None
    w.add_sample(1.0, 0.0)
    assert w.reported_busy(0.0) == 0.0  # a report counts from when it came
    w.add_sample(0.5, 0.5)
    assert w.reported_busy(0.5) == pytest.approx(0.5)  # 1.0 held 0.5 s
    assert w.reported_busy(1.2) == pytest.approx(0.3 + 0.35)  # window 0.2..1.2
    w.add_sample(0.0, 1.4)
    assert w.reported_busy(1.6) == pytest.approx(0.8 * 0.5)  # window 0.6..1.6: 0.5 until 1.4
    assert w.reported_busy(2.5) is None  # the newest report is older than the window


def test_busy_window_reports_of_part_of_the_window_are_not_stretched_over_it() -> None:
    # A backend busy for the 2 s since the router started: 20 % of a 10 s window, not 100 %
    # (the mean of the reports said 100 %, and kept the guard shut long after the load).
    w = BusyWindow(10.0)
    for i in range(41):
        w.add_sample(1.0, 0.05 * i)
    assert w.reported_busy(2.0) == pytest.approx(2.0)


def test_learned_lengths_reserve_a_quantile() -> None:
    m = OutputLengthModel(PredictionPolicy.LEARNED, 0.9, min_samples=10, refresh_every=1)
    assert m.reserve_tokens(500) == 500  # worst case until enough samples
    for n in range(1, 11):
        m.observe(n * 10)
    assert m.estimate == 100  # 'higher' quantile: never below a seen length
    for _ in range(10):
        m.observe(20)
    assert m.estimate == 90
    assert m.reserve_tokens(500) == 90
    assert m.reserve_tokens(50) == 50
    worst = OutputLengthModel(PredictionPolicy.WORST_CASE, 0.9, min_samples=1)
    worst.observe(5)
    assert worst.reserve_tokens(500) == 500


def test_load_report_validation() -> None:
    ok = LoadReport.from_mapping({"slots": 2, "running": 2, "waiting": 1,
                                  "slot_free_in_s": [0.5, 0.2], "prefill_s": 0.1,
                                  "per_token_s": 0.01, "ready": True})
    assert ok.slot_free_in_s == (0.2, 0.5)
    with pytest.raises(ValueError) as e:
        LoadReport.from_mapping({"slots": -1, "running": 0, "waiting": 0,
                                 "slot_free_in_s": [float("nan")], "prefill_s": "x",
                                 "per_token_s": 0.01})
    for key in ("slots", "slot_free_in_s[0]", "prefill_s"):
        assert key in str(e.value)
