"""The canary split in the timeline admitter, on a virtual clock: the version is picked first
(every 1/share-th admitted request), then the replica among those reporting it."""

from __future__ import annotations

import dataclasses

from lpu_protocol.load_report import LoadReport
from router.admission import AdmissionRequest, Admitted
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.canary import Canary, CanaryConfig, Role
from router.outcomes import Outcome

R0 = ReplicaShape("http://r0", slots=2, prefill_s=0.1, per_token_s=0.01)
R1 = dataclasses.replace(R0, url="http://r1")
BUCKET = BucketPolicy("short", (R0, R1), ttft_slo_s=0.5)


def _admitter(canary: Canary) -> TimelineAdmitter:
    s = AdmissionSettings(buckets=(BUCKET,), margin_s=0.0)
    return TimelineAdmitter(s, clock=lambda: 0.0, canaries={"short": canary})


def _report(a: TimelineAdmitter, url: str, version: str) -> None:
    a.observe_load("short", url, LoadReport(slots=2, running=0, waiting=0,
                                            slot_free_in_s=(0.0, 0.0), prefill_s=0.1,
                                            per_token_s=0.01, version=version), 0.0)


def _backends(a: TimelineAdmitter, n: int) -> list[str | None]:
    """Where ``n`` requests go, each ended at once (so capacity never decides)."""
    out: list[str | None] = []
    for _ in range(n):
        d = a.decide(AdmissionRequest("short", prompt_tokens=10, max_tokens=11))
        if isinstance(d, Admitted):
            out.append(d.backend)
            d.ticket.finish(Outcome.COMPLETED, 11)
        else:
            out.append(None)
    return out


def test_every_fourth_admitted_request_goes_to_the_canary_version() -> None:
    canary = Canary("short", "v1", CanaryConfig("v2", share=0.25), ttft_slo_s=0.5)
    a = _admitter(canary)
    _report(a, "http://r0", "v1")
    _report(a, "http://r1", "v2")
    got = _backends(a, 8)
    assert got == ["http://r0"] * 3 + ["http://r1"] + ["http://r0"] * 3 + ["http://r1"]


def test_without_a_canary_replica_the_due_request_goes_to_a_stable_one() -> None:
    canary = Canary("short", "v1", CanaryConfig("v2", share=0.5), ttft_slo_s=0.5)
    a = _admitter(canary)
    _report(a, "http://r0", "v1")
    _report(a, "http://r1", "v1")
    assert set(_backends(a, 4)) <= {"http://r0", "http://r1"}
    assert canary.as_json()["by_role"]["canary"]["ended"] == 0


def test_rolled_back_canary_gets_nothing_even_when_only_it_is_left() -> None:
    canary = Canary("short", "v1", CanaryConfig("v2", share=0.5, min_requests=1,
                                                max_error_rate=0.0), ttft_slo_s=0.5)
    a = _admitter(canary)
    _report(a, "http://r0", "v2")
    _report(a, "http://r1", "v2")
    # Active: no stable replica left (a rollout to v2), so stable-due requests go to v2's.
    assert _backends(a, 2) == ["http://r0", "http://r0"]
    canary.ended(Role.CANARY, failed=True)
    assert _backends(a, 3) == [None, None, None]  # rolled back: refused, never to v2
