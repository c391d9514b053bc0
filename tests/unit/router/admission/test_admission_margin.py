"""The admission margin: the quantile rule, its floor and cap, and the controller using it
on a virtual clock (grows on late first tokens, refuses with it, shrinks back, capped)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from router.admission import AdmissionRequest, Decision
from router.admission.controller import TimelineAdmitter
from router.admission.margin import AdmissionMargin
from router.admission.settings import (
    AdmissionSettings,
    BucketPolicy,
    MarginPolicy,
    ReplicaShape,
)
from router.config import ConfigError, parse_config
from router.metrics import RouterMetrics, make_metrics
from router.outcomes import Outcome, RejectReason


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# 2 slots; 11 tokens hold a slot 0.1 + 10 * 0.01 = 0.2 s. SLO 0.5 s: margin cap 0.25 s.
R0 = ReplicaShape("http://r0", slots=2, prefill_s=0.1, per_token_s=0.01)
BUCKET = BucketPolicy("short", (R0,), ttft_slo_s=0.5)
FLOOR = 0.005
WINDOW = 16  # refreshed every first token (window // 16)


@pytest.mark.parametrize(
    ("errors", "quantile", "expected"),
    [
        ([0.01 * k for k in range(1, 101)], 0.99, 0.99),
        ([0.01 * k for k in range(1, 101)], 0.5, 0.50),
        ([0.01 * k for k in range(1, 101)], 1.0, 1.00),
        ([-0.3] * 100, 0.99, FLOOR),
        ([0.02] * 97 + [0.2] * 3, 0.99, 0.2),
        ([0.02] * 99 + [0.2], 0.99, 0.02),
    ],
    ids=["q99-of-100", "median", "max", "early-keeps-floor", "3-late-of-100", "1-late-of-100"],
)
def test_margin_is_the_nearest_rank_quantile_above_the_floor(
    errors: list[float], quantile: float, expected: float
) -> None:
    m = AdmissionMargin(MarginPolicy.ADAPTIVE, FLOOR, quantile=quantile, window=100,
                        refresh_every=100)
    for e in errors:
        m.observe(e)
    assert m.value == pytest.approx(expected)
    assert m.samples == 100


def test_margin_is_recomputed_every_k_samples_and_ignores_non_finite() -> None:
    m = AdmissionMargin(MarginPolicy.ADAPTIVE, FLOOR, quantile=1.0, window=64)
    assert m.value == FLOOR and m.measured is None
    changed = [m.observe(0.05) for _ in range(4)]  # window // 16 = 4
    assert changed == [False, False, False, True] and m.value == 0.05
    for bad in (math.nan, math.inf, -math.inf):
        assert not m.observe(bad)
    assert m.samples == 4


def test_fixed_margin_never_moves() -> None:
    m = AdmissionMargin(MarginPolicy.FIXED, FLOOR, window=16, refresh_every=1)
    assert not any(m.observe(1.0) for _ in range(32))
    assert m.value == FLOOR and m.samples == 0


def test_cap_bounds_the_measured_part_but_not_the_floor() -> None:
    m = AdmissionMargin(MarginPolicy.ADAPTIVE, FLOOR, window=16, refresh_every=1, cap_s=0.25)
    m.observe(0.25)
    assert (m.value, m.measured) == (0.25, 0.25)
    m.observe(30.0)  # beyond the cap: an outlier, not evidence for the margin
    assert (m.value, m.samples, m.outliers) == (0.25, 1, 1)
    big_floor = AdmissionMargin(MarginPolicy.ADAPTIVE, 0.4, window=16, refresh_every=1,
                                cap_s=0.25)
    big_floor.observe(0.2)
    assert big_floor.value == 0.4


def test_outliers_beyond_the_cap_leave_the_margin_alone() -> None:
    m = AdmissionMargin(MarginPolicy.ADAPTIVE, FLOOR, window=16, refresh_every=1, cap_s=0.25)
    for i in range(64):
        m.observe(0.5 if i % 10 == 0 else 0.001)  # a stalling backend: 10 % of first tokens
    assert m.value == FLOOR
    assert m.outliers == 7 and m.samples == 16


@pytest.mark.parametrize(("kw", "match"), [({"quantile": 0.0}, "quantile"),
                                           ({"window": 0}, "window")], ids=["q", "window"])
def test_margin_rejects_bad_parameters(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdmissionMargin(MarginPolicy.ADAPTIVE, FLOOR, **kw)


# The controller ---------------------------------------------------------------------------

def _admitter(margin: MarginPolicy = MarginPolicy.ADAPTIVE
              ) -> tuple[TimelineAdmitter, Clock, RouterMetrics]:
    clock = Clock()
    metrics = make_metrics(CollectorRegistry())
    s = AdmissionSettings(buckets=(BUCKET,), margin_s=FLOOR, margin=margin,
                          margin_quantile=0.99, margin_window=WINDOW, min_retry_after_s=0.0)
    return TimelineAdmitter(s, clock=clock, metrics=metrics), clock, metrics


def _req() -> AdmissionRequest:
    return AdmissionRequest("short", prompt_tokens=10, max_tokens=11)


def _run_one(a: TimelineAdmitter, clock: Clock, late_s: float) -> None:
    """One request on an idle replica whose first token comes ``late_s`` after predicted."""
    d = a.decide(_req())
    assert d.admitted and d.ticket is not None
    clock.t += d.terms.predicted_ttft_s + late_s
    d.ticket.first_token()
    clock.t += 0.1
    d.ticket.finish(Outcome.COMPLETED, 11)
    clock.t += 1.0  # idle again


def _margin(a: TimelineAdmitter, metrics: RouterMetrics) -> float:
    snap: float = a.snapshot()["buckets"]["short"]["margin"]["seconds"]
    gauge = metrics.registry.get_sample_value(
        "lpu_router_admission_limit", {"bucket": "short", "limit": "margin_seconds"})
    assert gauge == pytest.approx(snap)
    return snap


def _fill(a: TimelineAdmitter, n: int) -> list[Decision]:
    """``n`` requests at once: waits 0, 0, 0.2, 0.2, 0.4, ... (TTFT 0.1, 0.1, 0.3, ...)."""
    return [a.decide(_req()) for _ in range(n)]


def test_margin_grows_on_late_first_tokens_refuses_with_it_and_shrinks_back() -> None:
    a, clock, metrics = _admitter()
    assert _margin(a, metrics) == FLOOR
    for _ in range(WINDOW):
        _run_one(a, clock, late_s=0.04)
    assert _margin(a, metrics) == pytest.approx(0.04)

    # 20 ms after four requests, a fifth waits 0.38 s: TTFT 0.48 s fits the SLO with the
    # 5 ms floor but not with the 40 ms learned margin.
    ds = _fill(a, 4)
    clock.t += 0.02
    no = a.decide(_req())
    assert (no.admitted, no.reason) == (False, RejectReason.SLO_TTFT)
    assert "(+0.040 s margin)" in no.message
    # The wait must shrink by 0.02 s, plus the margin: the first tokens come 40 ms late, so
    # the schedule frees that much later than it predicts.
    assert no.retry_after_s == pytest.approx(0.02 + 0.04)
    for d in ds:
        assert d.ticket is not None
        d.ticket.finish(Outcome.CANCELLED)

    for _ in range(WINDOW):
        _run_one(a, clock, late_s=0.0)
    assert _margin(a, metrics) == FLOOR
    _fill(a, 4)
    clock.t += 0.02
    assert a.decide(_req()).admitted


def test_a_few_late_samples_in_the_window_set_the_margin_until_they_leave() -> None:
    a, clock, metrics = _admitter()
    for late in [0.0] * 15 + [0.03]:
        _run_one(a, clock, late)
    assert _margin(a, metrics) == pytest.approx(0.03)  # q99 of 16 is the largest
    for _ in range(WINDOW - 1):
        _run_one(a, clock, 0.0)
    assert _margin(a, metrics) == pytest.approx(0.03)  # still in the window
    _run_one(a, clock, 0.0)
    assert _margin(a, metrics) == FLOOR


def test_cap_holds_a_broken_measurement_at_half_the_slo() -> None:
    a, clock, metrics = _admitter()
    for _ in range(WINDOW):
        _run_one(a, clock, late_s=0.3)  # every first token 0.3 s late: above the 0.25 s cap
    assert _margin(a, metrics) == FLOOR
    snap = a.snapshot()["buckets"]["short"]["margin"]
    assert (snap["cap_s"], snap["policy"], snap["outliers"]) == (0.25, "adaptive", WINDOW)
    for _ in range(WINDOW):
        _run_one(a, clock, late_s=0.24)  # late, but within what a margin can cover
    assert _margin(a, metrics) == pytest.approx(0.24, abs=0.01)
    ds = _fill(a, 4)
    # TTFT 0.1 + 0.24 fits 0.5; TTFT 0.3 + 0.24 does not.
    assert [d.admitted for d in ds] == [True, True, False, False]


def test_fixed_policy_ignores_the_errors() -> None:
    a, clock, metrics = _admitter(MarginPolicy.FIXED)
    for _ in range(WINDOW):
        _run_one(a, clock, late_s=0.04)
    assert _margin(a, metrics) == FLOOR
    _fill(a, 4)
    clock.t += 0.02
    assert a.decide(_req()).admitted


# Config -----------------------------------------------------------------------------------

def _raw(**admission: Any) -> dict[str, Any]:
    return {"admission": admission,
            "buckets": [{"name": "short", "model": "m", "artifact": "llama-3.1-8b-2k",
                         "backends": ["http://127.0.0.1:9001"]}]}


def test_config_defaults_to_an_adaptive_margin() -> None:
    s = parse_config(_raw()).admission
    assert (s.margin, s.margin_quantile, s.margin_window, s.margin_s) == (
        MarginPolicy.ADAPTIVE, 0.99, 256, 0.005)
    s = parse_config(_raw(margin="fixed", margin_quantile=0.9, margin_window=64)).admission
    assert (s.margin, s.margin_quantile, s.margin_window) == (MarginPolicy.FIXED, 0.9, 64)


def test_config_reports_every_bad_margin_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_raw(margin="sometimes", margin_quantile=1.5, margin_window=4))
    text = str(err.value)
    for key in ("admission.margin:", "admission.margin_quantile", "admission.margin_window"):
        assert key in text
