"""The official ``openai`` client against a full bucket: a refusal it understands and obeys.

One slot, a long request holding it (1000 tokens, 932 ms: far longer than the client takes to
send its request on a busy machine), a 120 ms TTFT SLO: a short request
sent meanwhile would wait too long and is refused at once with ``Retry-After`` and
``retry-after-ms``. Without retries the client raises ``RateLimitError`` carrying both; with
retries it waits what the router said and then succeeds, because the slot is free by then.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai import AsyncOpenAI
from recorded_schedule import fifo_problems, late_problems, recorded
from stack import MODEL, client_session, rig_emulators, router, router_raw, service_s

from router.admission.controller import TimelineAdmitter
from router.app import ADMITTER

SLO = 0.12
LONG = 1000
MSG = [{"role": "user", "content": "Hello there."}]


async def _hold_the_slot(url: str, backend: str) -> asyncio.Task[None]:
    """Start a long request and return once it holds the backend's slot."""

    async def long_request() -> None:
        async with client_session() as s, s.post(url + "/v1/chat/completions", json={
            "model": MODEL, "max_tokens": LONG, "stream": True, "messages": MSG,
        }) as r:
            assert r.status == 200
            await r.read()

    task = asyncio.create_task(long_request())
    async with client_session() as s:
        while True:
            async with s.get(backend + "/load") as r:
                if (await r.json())["running"] == 1:
                    return task
            await asyncio.sleep(0.002)


async def test_rate_limit_error_carries_retry_after_and_the_client_honours_it() -> None:
    async with (
        rig_emulators(slots=1) as urls,
        router(router_raw(urls, slots=1, ttft_slo_s=SLO)) as r,
    ):
        admitter = r.app[ADMITTER]
        assert isinstance(admitter, TimelineAdmitter)
        holder = await _hold_the_slot(r.url, urls[0])
        async with AsyncOpenAI(base_url=r.url + "/v1", api_key="unused", max_retries=0) as c:
            with pytest.raises(openai.RateLimitError) as info:
                await c.chat.completions.create(model=MODEL, messages=MSG,  # type: ignore[arg-type]
                                                max_tokens=5)
        err = info.value
        assert err.code == "rate_limit_exceeded"
        assert err.response.headers["x-lpu-reject-reason"] == "slo_ttft"
        retry_ms = int(err.response.headers["retry-after-ms"])
        assert int(err.response.headers["retry-after"]) == max(1, -(-retry_ms // 1000))
        # The wait until the slot's holder has run long enough that a new request fits
        # (about 0.8 s here), not a guess.
        assert 0.1 < retry_ms / 1e3 <= service_s(LONG)
        await holder

        holder = await _hold_the_slot(r.url, urls[0])
        before = r.metric("lpu_router_requests_rejected_total",
                          {"bucket": "small", "priority": "standard", "reason": "slo_ttft"})
        async with AsyncOpenAI(base_url=r.url + "/v1", api_key="unused", max_retries=3) as c:
            raw = await c.chat.completions.with_raw_response.create(
                model=MODEL, messages=MSG, max_tokens=5)  # type: ignore[arg-type]
            reply = raw.parse()
        await holder
        after = r.metric("lpu_router_requests_rejected_total",
                         {"bucket": "small", "priority": "standard", "reason": "slo_ttft"})
        (schedule,) = (await recorded(urls)).values()
        assert reply.choices[0].message.content
        assert after - before >= 1, "the first try was refused"

    # On the backend's schedule: only the try that was admitted reached it, after the second
    # holder's slot time (one slot, FIFO), its first token within the SLO of its arrival: the
    # client came back when the router said a request would fit, not before.
    holders = [e for e in schedule if e.output_tokens == LONG]
    (tried,) = [e for e in schedule if e.request_id == raw.headers["x-request-id"]]
    assert len(holders) == 2 and len(schedule) == 3  # no refused try ever got there
    assert tried.start >= holders[1].end
    assert not late_problems([tried], SLO)
    assert not fifo_problems(schedule)
