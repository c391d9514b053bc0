"""Spill and the shared limits store: a spilled request is charged in the bucket it went to, so
two processes that each spill locally into a larger bucket share that bucket's pod-wide cap
(real redis-server, virtual clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conftest import ManualClock
from redis_server import RedisServer

from router.admission import AdmissionRequest, Admitted
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.errors import Rejection
from router.limits.redis_store import RedisStore
from router.limits.settings import LimitsConfig, OnStoreError, StoreKind
from router.limits.shared import SharedLimits
from router.metrics import make_metrics
from router.outcomes import RejectReason

SHORT = BucketPolicy("short", (ReplicaShape("http://s0", 1, 0.08, 0.01),), ttft_slo_s=0.32,
                     model="m", max_seq_len=2048, max_output_tokens=512)
MEDIUM = BucketPolicy("medium", (ReplicaShape("http://m0", 2, 0.19, 0.012),), ttft_slo_s=0.76,
                      model="m", max_seq_len=8192, max_output_tokens=1024, max_concurrency=1,
                      spill_share=1.0)
SETTINGS = AdmissionSettings(buckets=(SHORT, MEDIUM), margin_s=0.0)
REQ = AdmissionRequest("short", 100, 11)


class Process:
    def __init__(self, url: str, clock: ManualClock) -> None:
        self.store = RedisStore(url, timeout_s=1.0)
        self.admitter = TimelineAdmitter(SETTINGS, clock=clock)
        self.limits = SharedLimits(self.store, LimitsConfig(StoreKind.REDIS, url,
                                                            OnStoreError.CLOSED),
                                   SETTINGS, metrics=make_metrics(), clock=clock)

    def spill(self) -> Admitted:
        """Fill the local short slot (two requests, uncharged), then one that spills."""
        for _ in range(2):
            assert self.admitter.decide(AdmissionRequest("short", 100, 11)).admitted
        d = self.admitter.decide(AdmissionRequest("short", 100, 11))
        assert isinstance(d, Admitted) and (d.bucket, d.spilled_from) == ("medium", "short")
        return d


@pytest.fixture
async def pair(redis_server: RedisServer, manual_clock: ManualClock
               ) -> AsyncIterator[tuple[Process, Process]]:
    procs = (Process(redis_server.url, manual_clock), Process(redis_server.url, manual_clock))
    for p in procs:
        await p.store.start()
    yield procs
    for p in procs:
        await p.store.aclose()


async def test_spilled_requests_share_the_target_buckets_pod_wide_cap(
        pair: tuple[Process, Process]) -> None:
    a, b = pair
    # Short has no cap of its own: the store counts its requests because they may spill into
    # medium, which has one.
    assert a.limits.counts(None, "short") and a.limits.counts(None, "medium")
    hold = await a.limits.admit(REQ, a.spill())
    assert hold is not None
    second = b.spill()  # b's local view of medium is empty: its own decision admits
    with pytest.raises(Rejection) as e:
        await b.limits.admit(REQ, second)
    assert e.value.reason is RejectReason.CONCURRENCY
    assert "bucket 'medium'" in e.value.error.message
    assert b.admitter.snapshot()["buckets"]["medium"]["spilled_in_flight"] == 0  # withdrawn
