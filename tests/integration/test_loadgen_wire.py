"""The load generator against tiny aiohttp servers: 429s and lateness."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from aiohttp import web

from benchmarks.loadgen import LoadConfig, parse_retry_after, run_load
from benchmarks.metrics import Slo, summarize
from benchmarks.prompts import PromptFactory
from benchmarks.records import ClientOutcome
from benchmarks.workload import PlannedRequest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _stream_two_tokens(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body["messages"][0]["content"].startswith("aaaaab"):  # index 1: refused
        err = {"error": {"message": "TTFT SLO would be missed", "type": "rate_limit_error",
                         "param": None, "code": "slo_ttft"}}
        return web.json_response(err, status=429, headers={"Retry-After": "1.5"})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for text in ("Hi", " there"):
        chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.01)
    usage = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
    await resp.write(f"data: {json.dumps(usage)}\r\n\r\ndata: [DONE]\n\n".encode())
    return resp


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async for u in _serve(_stream_two_tokens):
        yield u


async def test_429_is_rejected_with_retry_after(url: str) -> None:
    planned = [PlannedRequest(i, 0.01 * i, 20, 2) for i in range(3)]
    res = await run_load(planned, LoadConfig(url, "m"), PromptFactory(np.random.default_rng(0)))
    ok, refused, ok2 = res.records
    assert refused.outcome == ClientOutcome.REJECTED and refused.status == 429
    assert refused.retry_after_s == 1.5 and refused.error is not None
    assert "slo_ttft" in refused.error
    assert ok.outcome == ok2.outcome == ClientOutcome.COMPLETED
    assert ok.tokens == 2 and ok.completion_tokens == 2 and ok.usage_prompt_tokens == 10
    s = summarize(res.records, 1.0, Slo(ttft_s=5.0))
    assert s["outcomes"]["rejected"] == 1
    assert s["slo"]["attainment"] == pytest.approx(2 / 3)  # the 429 is in the denominator


async def test_latency_counts_from_the_intended_time(url: str) -> None:
    """A sender held up (here: the loop blocked for 0.3 s) does not hide the delay."""
    planned = [PlannedRequest(0, 0.0, 20, 2), PlannedRequest(2, 0.05, 20, 2)]
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, time.sleep, 0.3)  # a stalled client, not a slow server
    res = await run_load(planned, LoadConfig(url, "m"), PromptFactory(np.random.default_rng(0)))
    late = res.records[1]
    assert late.outcome == ClientOutcome.COMPLETED
    assert late.sent_s is not None and late.sent_s - late.intended_s >= 0.2
    assert late.ttft_s is not None and late.ttft_s >= late.sent_s - late.intended_s


async def test_unfinished_requests_time_out_at_the_drain_deadline() -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    async for u in _serve(hang):
        planned = [PlannedRequest(0, 0.0, 20, 2)]
        cfg = LoadConfig(u, "m", drain_timeout_s=0.2)
        res = await run_load(planned, cfg, PromptFactory(np.random.default_rng(0)))
        assert res.records[0].outcome == ClientOutcome.TIMED_OUT


async def test_connection_refused_is_failed() -> None:
    planned = [PlannedRequest(0, 0.0, 20, 2)]
    cfg = LoadConfig("http://127.0.0.1:9", "m")  # discard port: nothing listens
    res = await run_load(planned, cfg, PromptFactory(np.random.default_rng(0)))
    assert res.records[0].outcome == ClientOutcome.FAILED and res.records[0].status == 0


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.25 ") == 0.25
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-1") is None
