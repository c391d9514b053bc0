"""Admission from what is served: a replica that reports timings other than its bucket's
config is scheduled with the reported ones (exact waits on a virtual clock)."""

from __future__ import annotations

import dataclasses

import pytest

from lpu_protocol.load_report import LoadReport
from router.admission import AdmissionRequest
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.admission.timeline import ReplicaTimeline


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# Configured: 1 slot, 11 tokens hold it 0.1 + 10 * 0.01 = 0.2 s.
R0 = ReplicaShape("http://r0", slots=1, prefill_s=0.1, per_token_s=0.01)


def _report(prefill_s: float, per_token_s: float) -> LoadReport:
    return LoadReport(1, 0, 0, (0.0,), prefill_s, per_token_s)


@pytest.mark.parametrize(("prefill", "per_token", "waits", "ttfts"), [
    (0.1, 0.01, [0.0, 0.2, 0.4], [0.1, 0.3, 0.5]),  # as configured
    (0.2, 0.02, [0.0, 0.4, 0.8], [0.2, 0.6, 1.0]),  # the replica serves a 2x slower artifact
    (0.1, 0.011, [0.0, 0.21, 0.42], [0.1, 0.31, 0.52]),  # per token 10% slower only
], ids=["same", "slower", "per-token-10pc"])
def test_reported_timings_set_the_schedule(prefill: float, per_token: float,
                                           waits: list[float], ttfts: list[float]) -> None:
    clock = Clock()
    settings = AdmissionSettings(buckets=(BucketPolicy("short", (R0,), ttft_slo_s=5.0),),
                                 margin_s=0.0)
    a = TimelineAdmitter(settings, clock=clock)
    a.observe_load("short", R0.url, _report(prefill, per_token), 0.0)
    ds = [a.decide(AdmissionRequest("short", prompt_tokens=10, max_tokens=11))
          for _ in range(3)]
    assert [round(d.predicted_wait_s, 9) for d in ds] == waits
    assert [round(d.terms.predicted_ttft_s, 9) for d in ds] == ttfts


def test_equal_timings_keep_the_shape_and_admitted_work_keeps_its_duration() -> None:
    tl = ReplicaTimeline(R0)
    tl.merge_report(_report(0.1 * (1 + 1e-12), 0.01), 0.0, 0.0)
    assert tl.shape is R0  # float rounding is not a different artifact
    r = tl.reserve(0, R0.service_time(11), 0.0)
    # Polled at 0.05, after the reservation: the backend's report includes it.
    tl.merge_report(dataclasses.replace(_report(0.2, 0.02), running=1, slot_free_in_s=(0.15,)),
                    0.05, 0.05)
    assert tl.shape.timings.service_s(11) == pytest.approx(0.4)
    assert r.duration_s == pytest.approx(0.2)  # placed with the old timings, kept
    assert tl.earliest_start(0.05) == pytest.approx(0.2)
