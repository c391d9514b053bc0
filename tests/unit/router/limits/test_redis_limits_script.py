"""The Redis store's check-and-charge script against a real redis-server, on explicit times:
window edges, refunds, lease expiry, queue counting, atomicity under concurrent callers, and
the same verdicts as the in-process windows on one schedule."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator

import pytest
from redis_server import RedisServer

from router.admission.ratelimit import TenantLimiter
from router.admission.settings import TenantPolicy
from router.limits import Ask, Verdict
from router.limits.redis_store import RedisStore
from router.outcomes import RejectReason

GRACE = 1.0


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_server.url, timeout_s=2.0, grace_s=GRACE)
    await s.start()
    yield s
    await s.aclose()


def _ask(store: RedisStore, *, rpm: int | None = None, tpm: int | None = None, cost: int = 1,
         concurrency: int | None = None, queue: int | None = None, wait: float = 0.0,
         lease: float = 10.0, tenant: str = "acme") -> Ask:
    return Ask(store.new_member(), tenant, rpm, tpm, cost, "short", concurrency, queue, wait,
               lease)


async def _admit(store: RedisStore, ask: Ask, now: float) -> Verdict:
    return await store.admit(ask, now=1000.0 + now)


async def test_the_request_window_holds_each_charge_for_exactly_60_s(store: RedisStore) -> None:
    for t in (0.0, 10.0, 20.0):
        v = await _admit(store, _ask(store, rpm=3), t)
        assert v.over is None
    assert (v.requests_used, v.requests_reset_s) == (3, pytest.approx(60.0))
    over = await _admit(store, _ask(store, rpm=3), 30.0)
    assert over.over is RejectReason.TENANT_RPM
    assert over.retry_after_s == pytest.approx(30.0)  # the first leaves at 60
    assert over.requests_reset_s == pytest.approx(50.0)  # the newest at 80
    assert (await _admit(store, _ask(store, rpm=3), 59.999)).over is RejectReason.TENANT_RPM
    v = await _admit(store, _ask(store, rpm=3), 60.0)  # the edge: t + 60 is out
    assert v.over is None and v.requests_used == 3
    refused = await _admit(store, _ask(store, rpm=3), 60.0)
    assert refused.retry_after_s == pytest.approx(10.0)


async def test_tokens_are_a_sum_of_charges_each_refundable(store: RedisStore) -> None:
    first = _ask(store, tpm=100, cost=40)
    assert (await _admit(store, first, 0.0)).tokens_used == 40
    store.finish(first, 20)  # used 20 of its 40
    await store.drain()
    second = _ask(store, tpm=100, cost=60)
    v = await _admit(store, second, 10.0)
    assert (v.over, v.tokens_used) == (None, 80)
    over = await _admit(store, _ask(store, tpm=100, cost=40), 20.0)
    assert over.over is RejectReason.TENANT_TPM
    assert over.retry_after_s == pytest.approx(40.0)  # the first (20 now) leaves at 60
    store.refund(second)  # never ran: all of it back
    await store.drain()
    v = await _admit(store, _ask(store, tpm=100, cost=80), 20.0)
    assert (v.over, v.tokens_used) == (None, 100)
    v = await _admit(store, _ask(store, tpm=100, cost=20), 60.0)  # the first has left
    assert (v.over, v.tokens_used) == (None, 100)


async def test_a_lease_holds_until_finished_or_expired(store: RedisStore) -> None:
    a = _ask(store, concurrency=2, lease=5.0)
    b = _ask(store, concurrency=2, lease=8.0)
    assert (await _admit(store, a, 0.0)).over is None
    assert (await _admit(store, b, 0.0)).over is None
    over = await _admit(store, _ask(store, concurrency=2), 1.0)
    assert (over.over, over.in_flight) == (RejectReason.CONCURRENCY, 2)
    assert over.retry_after_s == pytest.approx(5.0 - GRACE - 1.0)  # a's predicted end
    # A worker that crashed never finishes a: its lease expires on its own.
    assert (await _admit(store, _ask(store, concurrency=2), 5.0)).over is None
    store.finish(b, 0)
    await store.drain()
    assert (await _admit(store, _ask(store, concurrency=2), 5.0)).over is None
    assert (await _admit(store, _ask(store, concurrency=2), 5.0)).over is RejectReason.CONCURRENCY


async def test_the_queue_counts_requests_until_their_predicted_start(store: RedisStore) -> None:
    queued = _ask(store, queue=1, wait=2.0)
    assert (await _admit(store, queued, 0.0)).over is None
    over = await _admit(store, _ask(store, queue=1, wait=3.0), 1.0)
    assert (over.over, over.queued) == (RejectReason.QUEUE_FULL, 1)
    assert over.retry_after_s == pytest.approx(1.0)  # the queued one starts at 2
    # One that starts at once takes no place in the queue.
    assert (await _admit(store, _ask(store, queue=1, wait=0.0), 1.0)).over is None
    assert (await _admit(store, _ask(store, queue=1, wait=1.0), 2.0)).over is None  # started
    store.finish(queued, 0)
    await store.drain()


async def test_no_cap_of_zero_share_admits_and_unlimited_keys_are_untouched(
        store: RedisStore, redis_server: RedisServer) -> None:
    assert (await _admit(store, _ask(store, concurrency=0), 0.0)).over is RejectReason.CONCURRENCY
    v = await _admit(store, _ask(store), 0.0)  # nothing limited: nothing charged
    assert (v.over, v.requests_used, v.tokens_used) == (None, 0, 0)
    assert redis_server.command("DBSIZE") == b":0"


async def test_concurrent_callers_never_share_a_slot(redis_server: RedisServer) -> None:
    """Five processes' worth of clients (own pools), 200 asks at once against 60 per minute
    and 7 leases: exactly 60 charged of one, 7 of the other."""
    stores = [RedisStore(redis_server.url, timeout_s=5.0, grace_s=GRACE) for _ in range(5)]
    for s in stores:
        await s.start()
    try:
        asks = [_ask(stores[i % 5], rpm=60) for i in range(200)]
        verdicts = await asyncio.gather(*(stores[i % 5].admit(a, now=50.0)
                                          for i, a in enumerate(asks)))
        assert sum(v.over is None for v in verdicts) == 60
        leases = [dataclasses.replace(_ask(stores[i % 5], concurrency=7), tenant=None)
                  for i in range(50)]
        verdicts = await asyncio.gather(*(stores[i % 5].admit(a, now=50.0)
                                          for i, a in enumerate(leases)))
        assert sum(v.over is None for v in verdicts) == 7
    finally:
        for s in stores:
            await s.aclose()


async def test_redis_and_memory_give_the_same_verdicts(store: RedisStore) -> None:
    """One random schedule of asks and refunds through both stores."""
    policy = TenantPolicy("acme", requests_per_minute=20, tokens_per_minute=2000)
    local = TenantLimiter(policy)
    rng = random.Random(12)
    t = 0.0
    held = []
    refused = 0
    for _ in range(300):
        t += rng.expovariate(1.0)
        cost = rng.randint(10, 300)
        mine = local.check(cost, t)
        ask = _ask(store, rpm=20, tpm=2000, cost=cost)
        theirs = await _admit(store, ask, t)
        if mine is None:
            assert theirs.over is None, t
            held.append((local.consume(cost, t), ask))
        else:
            refused += 1
            reason, retry, _ = mine
            assert theirs.over is reason, t
            assert theirs.retry_after_s == pytest.approx(retry, abs=1e-6)
        state = local.state(t)
        assert 20 - theirs.requests_used == state.remaining_requests
        assert 2000 - theirs.tokens_used == state.remaining_tokens
        if held and rng.random() < 0.5:  # a request ends: some of its allowance unused
            charge, done = held.pop(rng.randrange(len(held)))
            if rng.random() < 0.2:  # it never ran
                local.refund(charge, done.cost_tokens, t, request=True)
                store.refund(done)
            else:
                unused = rng.randint(0, done.cost_tokens)
                local.refund(charge, unused, t)
                store.finish(done, unused)
            await store.drain()
    assert 30 < refused < 270  # the schedule admitted some and refused some


async def test_a_server_that_forgot_the_scripts_gets_them_again(
        store: RedisStore, redis_server: RedisServer) -> None:
    assert (await _admit(store, _ask(store, rpm=5), 0.0)).over is None
    assert redis_server.command("SCRIPT", "FLUSH") == b"+OK"  # as after a restart
    v = await _admit(store, _ask(store, rpm=5), 1.0)
    assert (v.over, v.requests_used) == (None, 2)
