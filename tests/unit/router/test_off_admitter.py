"""Admission off: concurrency cap, least-loaded healthy replica, tickets end once."""

from __future__ import annotations

from router.admission import AdmissionRequest
from router.admission.off import OffAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.outcomes import Outcome, RejectReason
from router.pool import Replica

URLS = ("http://a", "http://b", "http://c")


HEALTH = {url: Replica("s", url) for url in URLS}
"""The pool's health records the admitter reads (set ``up`` to change a replica's health)."""


def _admitter(cap: int | None = None) -> OffAdmitter:
    for r in HEALTH.values():
        r.up = True
    policy = BucketPolicy(name="s", replicas=tuple(ReplicaShape(u, 4, 0.1, 0.001) for u in URLS),
                          ttft_slo_s=1.0, max_concurrency=cap)
    return OffAdmitter(AdmissionSettings(buckets=(policy,)), lambda bucket, url: HEALTH[url])


REQ = AdmissionRequest(bucket="s", prompt_tokens=10, max_tokens=20)


def test_spreads_over_the_least_loaded_replicas() -> None:
    adm = _admitter()
    decisions = [adm.decide(REQ) for _ in range(6)]
    assert all(d.admitted and d.terms.max_tokens == 20 for d in decisions)
    assert sorted(d.backend or "" for d in decisions) == sorted(URLS * 2)
    ticket = decisions[0].ticket
    assert ticket is not None
    ticket.finish(Outcome.COMPLETED)
    ticket.finish(Outcome.COMPLETED)  # idempotent
    assert adm.in_flight("s") == 5
    assert adm.decide(REQ).backend == decisions[0].backend


def test_concurrency_cap_refuses_with_a_hint() -> None:
    adm = _admitter(cap=2)
    first = adm.decide(REQ)
    adm.decide(REQ)
    refused = adm.decide(REQ)
    assert not refused.admitted and refused.reason is RejectReason.CONCURRENCY
    assert refused.retry_after_s == 0.1
    assert first.ticket is not None
    first.ticket.finish(Outcome.CANCELLED)
    assert adm.decide(REQ).admitted


def test_skips_unhealthy_and_excluded_replicas() -> None:
    adm = _admitter()
    HEALTH["http://a"].up = False
    d = adm.decide(REQ, frozenset({"http://b"}))
    assert d.backend == "http://c"
    HEALTH["http://c"].up = False
    none = adm.decide(REQ, frozenset({"http://b"}))
    assert not none.admitted and none.reason is RejectReason.NO_BACKEND


