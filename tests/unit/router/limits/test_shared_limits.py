"""SharedLimits between the local decision and the Redis store: two "processes" (admitter +
shared limits each) against one real redis-server share the bucket's concurrency and the
tenant's window; a store that does not answer follows ``on_store_error`` and is asked again
only after the back-off (virtual clock)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from conftest import ManualClock
from redis_server import RedisServer

from router.admission import AdmissionRequest, Admitted
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape, TenantPolicy
from router.errors import Rejection
from router.limits.redis_store import RedisStore
from router.limits.settings import LimitsConfig, OnStoreError, StoreKind
from router.limits.shared import SharedLimits
from router.metrics import make_metrics
from router.outcomes import Outcome, RejectReason

R0 = ReplicaShape("http://r0", slots=4, prefill_s=0.1, per_token_s=0.01)
SETTINGS = AdmissionSettings(
    buckets=(BucketPolicy("short", (R0,), ttft_slo_s=0.5, max_concurrency=1),),
    tenants=(TenantPolicy("acme", requests_per_minute=2),), margin_s=0.0)


class Process:
    """One router process's admission: its own admitter, its own SharedLimits."""

    def __init__(self, url: str, clock: ManualClock, policy: OnStoreError) -> None:
        self.metrics = make_metrics()
        self.store = RedisStore(url, timeout_s=1.0)
        local = AdmissionSettings(buckets=SETTINGS.buckets, margin_s=0.0)  # no local tenants
        self.admitter = TimelineAdmitter(local, clock=clock)
        self.limits = SharedLimits(self.store, LimitsConfig(StoreKind.REDIS, url, policy),
                                   SETTINGS, metrics=self.metrics, clock=clock)

    def decide(self) -> Admitted:
        d = self.admitter.decide(AdmissionRequest("short", 10, 11, tenant="acme"))
        assert isinstance(d, Admitted)
        return d

    def calls(self, result: str) -> float:
        return self.metrics.registry.get_sample_value(
            "lpu_router_limit_store_calls_total", {"result": result}) or 0.0


@pytest.fixture
async def pair(redis_server: RedisServer, manual_clock: ManualClock
               ) -> AsyncIterator[tuple[Process, Process]]:
    procs = (Process(redis_server.url, manual_clock, OnStoreError.OPEN),
             Process(redis_server.url, manual_clock, OnStoreError.OPEN))
    for p in procs:
        await p.store.start()
    yield procs
    for p in procs:
        await p.store.aclose()


async def test_two_processes_share_the_bucket_cap_and_the_tenant_window(
        pair: tuple[Process, Process]) -> None:
    a, b = pair
    first = a.decide()
    hold = await a.limits.admit(AdmissionRequest("short", 10, 11, tenant="acme"), first)
    assert hold is not None and hold.ratelimit is not None
    assert hold.ratelimit.remaining_requests == 1
    # b's own count is 0, so its local decision admits; the pod has 1 in flight of 1.
    second = b.decide()
    with pytest.raises(Rejection) as e:
        await b.limits.admit(AdmissionRequest("short", 10, 11, tenant="acme"), second)
    assert (e.value.reason, e.value.error.status) == (RejectReason.CONCURRENCY, 429)
    assert "1 requests in flight across the router's processes" in e.value.error.message
    assert e.value.headers["x-ratelimit-remaining-requests"] == "1"
    assert b.admitter.in_flight("short", "http://r0") == 0  # withdrawn: never admitted
    assert (b.calls("ok"), b.calls("over")) == (0, 1)
    # a's request ends: its lease comes back, its request stays in the window.
    first.ticket.finish(Outcome.COMPLETED, 11)
    a.limits.end(hold, admitted=True, completion_tokens=11)
    await a.store.drain()
    third = b.decide()
    hold = await b.limits.admit(AdmissionRequest("short", 10, 11, tenant="acme"), third)
    assert hold is not None and hold.ratelimit is not None
    assert hold.ratelimit.remaining_requests == 0
    third.ticket.finish(Outcome.COMPLETED, 11)
    b.limits.end(hold, admitted=False, completion_tokens=None)  # e.g. every replica refused it
    await b.store.drain()
    fourth = a.decide()
    assert await a.limits.admit(AdmissionRequest("short", 10, 11, tenant="acme"),
                                fourth) is not None  # the refunded request left room


def _gauge(p: Process) -> float | None:
    return p.metrics.registry.get_sample_value("lpu_router_limit_store_up", {})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port  # closed again: connections are refused


@pytest.mark.parametrize("policy", [OnStoreError.OPEN, OnStoreError.CLOSED])
async def test_a_store_that_does_not_answer_is_asked_again_only_after_the_back_off(
        manual_clock: ManualClock, policy: OnStoreError) -> None:
    p = Process(f"redis://127.0.0.1:{_closed_port()}/0", manual_clock, policy)
    await p.store.start()
    adm = AdmissionRequest("short", 10, 11, tenant="acme")

    async def ask() -> RejectReason | None:
        d = p.decide()
        try:
            await p.limits.admit(adm, d)
        except Rejection as e:
            assert p.admitter.in_flight("short", "http://r0") == 0  # withdrawn
            assert (e.error.status, e.error.code) == (503, "limits_unavailable")
            assert int(e.headers["Retry-After"]) >= 1
            return e.reason
        d.ticket.finish(Outcome.COMPLETED, 1)
        return None

    want = None if policy is OnStoreError.OPEN else RejectReason.LIMITS_UNAVAILABLE
    try:
        assert await ask() is want
        assert p.calls("error") == 1 and _gauge(p) == 0
        manual_clock.advance(0.5)
        assert await ask() is want
        assert p.calls("error") == 1  # in the back-off: not asked
        manual_clock.advance(0.5)
        assert await ask() is want  # the probe
        assert p.calls("error") == 2
        assert p.metrics.registry.get_sample_value(
            "lpu_router_limit_store_errors_total", {"kind": "connection"}) == 2
    finally:
        await p.store.aclose()
