"""Backend faults: each ends as one clear outcome, and a backend that comes back is used again."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from stack import (
    assert_settled,
    chat,
    dead_port,
    emulator_stack,
    error_code,
    fake_backend,
    post,
    router_config,
    serve_router,
)


async def _sse(request: web.Request, frames: list[bytes], *, pause_s: float = 0.0,
               then: str = "end") -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for f in frames:
        await resp.write(f)
        await asyncio.sleep(pause_s)
    if then == "crash":
        assert request.transport is not None
        request.transport.abort()
    elif then == "stall":
        await asyncio.sleep(30)
    else:
        await resp.write_eof()
    return resp


CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


async def test_refused_connections_are_503_and_eject() -> None:
    url = f"http://127.0.0.1:{dead_port()}"
    config = router_config([url], extra={"health": {"interval_s": 60.0,
                                                    "eject_after_failures": 1}})
    async with serve_router(config) as stack:
        status, _, raw = await post(stack, chat())
        assert status == 503 and error_code(raw) in ("upstream_error", "no_backend")
        assert stack.metric("lpu_router_backend_up", {"bucket": "short", "backend": url}) == 0
        status, _, raw = await post(stack, chat())  # ejected: refused without trying
        assert status == 503 and error_code(raw) == "no_backend"
        await assert_settled(stack)


@pytest.mark.parametrize(("status", "body", "want"), [
    (500, b'{"error": {"message": "boom"}}', 502),
    (503, b"", 503),
    (200, b"this is not json at all {{{", 200),
], ids=["500", "503", "garbage-200"])
async def test_backend_error_statuses(status: int, body: bytes, want: int) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, content_type="application/json")

    async with fake_backend(answer) as fake:
        config = router_config([fake.url])
        async with serve_router(config) as stack:
            got, _, raw = await post(stack, chat())
            assert got == want
            if want >= 500:
                assert error_code(raw) == "upstream_error"
            else:
                assert raw == body  # relayed as it came; the client's parser judges it
            await assert_settled(stack)
            outcome = "completed" if want == 200 else "failed"
            assert stack.finished(outcome) == 1


@pytest.mark.parametrize("then", ["crash", "stall", "broken-sse"])
async def test_backend_breaks_mid_stream(then: str) -> None:
    frames = [CHUNK, CHUNK]
    if then == "broken-sse":
        frames.append(b"data: {not json\n\ndata: \xff\xfe\n\n")

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return await _sse(request, frames, then="end" if then == "broken-sse" else then)

    async with fake_backend(answer) as fake:
        config = router_config([fake.url], extra={"timeouts": {"read_s": 0.5}})
        async with serve_router(config) as stack, aiohttp.ClientSession() as s, \
                s.post(stack.url + "/v1/chat/completions", json=chat(stream=True)) as r:
            assert r.status == 200
            text = await asyncio.wait_for(r.read(), 10)
            assert text.startswith(CHUNK + CHUNK)
            if then == "broken-sse":
                # Relayed byte for byte on event boundaries: the client's parser judges it.
                assert text.endswith(b"data: \xff\xfe\n\n")
                outcome = "completed"
            else:
                tail = text[len(CHUNK) * 2:]
                assert tail.endswith(b"data: [DONE]\n\n")
                err = json.loads(tail.split(b"\n\n")[0][len(b"data: "):])
                assert err["error"]["code"] in ("upstream_error", "upstream_timeout")
                outcome = "failed"
            await assert_settled(stack)
            assert stack.finished(outcome) == 1


async def test_slow_to_accept_is_a_connect_timeout() -> None:
    # A listening socket whose backlog is full never completes the handshake in time.
    import socket

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(lsock.getsockname())
        fillers.append(c)
    url = f"http://127.0.0.1:{lsock.getsockname()[1]}"
    config = router_config([url], extra={"timeouts": {"connect_s": 0.2, "read_s": 0.5},
                                         "health": {"interval_s": 60.0}})
    try:
        async with serve_router(config) as stack:
            got, _, raw = await post(stack, chat())
            assert got in (503, 504)
            assert error_code(raw) in ("upstream_timeout", "upstream_error", "no_backend")
            await assert_settled(stack)
    finally:
        for c in fillers:
            c.close()
        lsock.close()


@pytest.mark.parametrize("fault", [
    {"crash_rate": 1.0, "crash_after_tokens": 3},
    {"garbage_rate": 1.0, "crash_after_tokens": 3},
    {"stream_error_rate": 1.0, "crash_after_tokens": 3},
    {"error_rate": 1.0},
], ids=["crash", "garbage", "stream-error", "error-500"])
async def test_emulator_faults_end_as_one_outcome(fault: dict[str, Any]) -> None:
    async with emulator_stack(**fault) as stack, aiohttp.ClientSession() as s:
        for stream in (True, False):
            async with s.post(stack.url + "/v1/chat/completions",
                              json=chat(20, stream=stream)) as r:
                await asyncio.wait_for(r.read(), 10)
                assert r.status in (200, 502, 503)
        text = await assert_settled(stack)
        assert "lpu_router_requests_finished_total" in text
        total = sum(stack.finished(o) for o in ("completed", "failed", "cancelled"))
        assert total == 2


async def test_backend_that_comes_back_is_used_again() -> None:
    healthy = {"ok": False}

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not healthy["ok"]:  # 503: the backend's own state (a 500 may be the request's fault)
            return web.Response(status=503, body=b"{}")
        return web.json_response({"choices": [], "usage": {"completion_tokens": 1}})

    async with fake_backend(answer) as fake:
        config = router_config([fake.url], extra={"server": {"max_retries": 0}, "health": {
            "interval_s": 60.0, "eject_after_failures": 2, "eject_for_s": 0.3}})
        async with serve_router(config) as stack:
            for _ in range(2):
                assert (await post(stack, chat()))[0] == 503
            got, _, raw = await post(stack, chat())  # ejected
            assert got == 503 and error_code(raw) == "no_backend"
            healthy["ok"] = True
            await asyncio.sleep(0.4)  # eject_for_s passes
            assert (await post(stack, chat()))[0] == 200
            assert stack.metric("lpu_router_backend_up",
                                {"bucket": "short", "backend": fake.url}) == 1
            await assert_settled(stack)
