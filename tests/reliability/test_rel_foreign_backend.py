"""A foreign backend behind the router with the default health settings (no ``[health]`` table).

The backend is a small OpenAI-compatible server that is not an LPU: no LPU ``/load`` (the vLLM
flavour answers ``/load`` with vLLM's own ``{"server_load": n}``; the bare flavour has only the
OpenAI routes), no ``/readyz``, and it ignores ``x-lpu-deadline-ms`` (it never refuses). The
router (``lpu-router serve`` in its own process, uvloop, admission ``timeline`` and ``off``) must
find a health path (vLLM's ``/health``, else ``/v1/models``), serve the official ``openai``
client streaming and not, say once in its log that it checks the backend that way, mark the
backend down when it stops answering (503 ``no_backend``) and up again when it is back on the
same port. The router's own ``GET /health`` (what guidellm checks before a run) answers 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from live_processes import served_router
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families
from stack import MODEL, dead_port, error_code, invariant_problems

MSG = [{"role": "user", "content": "Say something."}]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


async def _complete(request: web.Request) -> web.StreamResponse:
    """OpenAI chat and legacy completions, ``max_tokens`` words ("w0 w1 ..."), streaming with
    usage in the last event (as vLLM does with ``stream_options.include_usage``)."""
    chat = request.path.endswith("/chat/completions")
    body = await request.json()
    n = int(body.get("max_tokens") or 8)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    kind = "chat.completion" if chat else "text_completion"

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            out["delta" if body.get("stream") else "message"] = {"role": "assistant",
                                                                 "content": text}
        else:
            out["text"] = text
        return out

    words = [f"w{i} " for i in range(n)]
    if not body.get("stream"):
        return web.json_response({"id": rid, "object": kind, "created": created,
                                  "model": body["model"], "choices": [choice("".join(words),
                                                                             "length")],
                                  "usage": _usage(4, n)})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    obj = kind + ".chunk" if chat else kind

    async def event(doc: dict[str, Any]) -> None:
        await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")

    for i, word in enumerate(words):
        await event({"id": rid, "object": obj, "created": created, "model": body["model"],
                     "choices": [choice(word, "length" if i == n - 1 else None)]})
    if (body.get("stream_options") or {}).get("include_usage"):
        await event({"id": rid, "object": obj, "created": created, "model": body["model"],
                     "choices": [], "usage": _usage(4, n)})
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _foreign_app(flavour: str, seen: list[dict[str, str]]) -> web.Application:
    async def recorded(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        return await _complete(request)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 0, "owned_by": "vllm"}]})

    async def health(request: web.Request) -> web.Response:
        return web.Response()  # vLLM: an empty 200

    async def vllm_load(request: web.Request) -> web.Response:
        return web.json_response({"server_load": 0})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", recorded)
    app.router.add_post("/v1/completions", recorded)
    app.router.add_get("/v1/models", models)
    if flavour == "vllm":
        app.router.add_get("/health", health)
        app.router.add_get("/load", vllm_load)
    return app


@contextlib.asynccontextmanager
async def _serve(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


def _config(backend: str, mode: str) -> str:
    # No [health] table: the defaults are what is tested.
    return f"""
[server]
host = "127.0.0.1"
port = 0

[admission]
mode = "{mode}"

[[buckets]]
name = "small"
model = "{MODEL}"
backends = ["{backend}"]
max_seq_len = 2048
max_output_tokens = 256
slots = 4
prefill_ms = 20.0
per_token_ms = 1.0
ttft_slo_s = 5.0
"""


async def _until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 10.0
                 ) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"not reached within {within_s}s: {what}"
        await asyncio.sleep(0.05)


async def _use_with_openai(router: str) -> None:
    async with AsyncOpenAI(base_url=router + "/v1", api_key="unused", max_retries=0) as client:
        chat = await client.chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=6)  # type: ignore[arg-type]
        assert chat.choices[0].message.content == "w0 w1 w2 w3 w4 w5 "
        assert chat.usage is not None and chat.usage.completion_tokens == 6
        stream = await client.chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=5, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text == "w0 w1 w2 w3 w4 " and usage is not None and usage.completion_tokens == 5
        legacy = await client.completions.create(model=MODEL, prompt="Once", max_tokens=3)
        assert legacy.choices[0].text == "w0 w1 w2 "
        pieces = [c.choices[0].text async for c in await client.completions.create(
            model=MODEL, prompt="Once", max_tokens=4, stream=True) if c.choices]
        assert "".join(pieces) == "w0 w1 w2 w3 "


async def _metrics(session: aiohttp.ClientSession, router: str) -> str:
    async with session.get(router + "/metrics") as r:
        return await r.text()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["timeline", "off"])
@pytest.mark.parametrize(("flavour", "probe"), [("vllm", "/health"), ("bare", "/v1/models")])
async def test_a_backend_without_load_serves_and_recovers(
        tmp_path: Path, mode: str, flavour: str, probe: str) -> None:
    port = dead_port()
    backend = f"http://127.0.0.1:{port}"
    config = tmp_path / "router.toml"
    config.write_text(_config(backend, mode), "utf-8")
    seen: list[dict[str, str]] = []
    async with served_router(config) as served, aiohttp.ClientSession() as session:
        router = f"http://127.0.0.1:{served.port}"

        async def ready_is(want: int) -> bool:
            async with session.get(router + "/readyz") as r:
                return r.status == want

        async with session.get(router + "/health") as r:  # what guidellm checks first
            assert r.status == 200 and await r.json() == {"status": "ok"}
        # Not there yet: no answer decides nothing, the backend is down.
        await _until(lambda: ready_is(503), "down before the backend starts")
        for _ in range(2):  # up, down when it stops, and up again on the same port
            async with _serve(_foreign_app(flavour, seen), port):
                await _until(lambda: ready_is(200), "the backend is up")
                await _use_with_openai(router)
            await _until(lambda: ready_is(503), "the backend is marked down")
            async with session.post(router + "/v1/chat/completions",
                                    json={"model": MODEL, "messages": MSG, "max_tokens": 2}
                                    ) as r:
                assert r.status == 503, await r.text()
                assert r.headers["x-lpu-reject-reason"] == "no_backend"
                assert error_code(await r.read()) == "no_backend"
        assert len(seen) == 8

        async def settled() -> bool:
            return not invariant_problems(await _metrics(session, router))

        await _until(settled, "admitted == completed + failed + cancelled, nothing in flight")
        finished = {s.labels["outcome"]: s.value
                    for f in text_string_to_metric_families(await _metrics(session, router))
                    for s in f.samples if s.name == "lpu_router_requests_finished_total"}
        assert finished == {"completed": 8.0}
        said = served.lines("no LPU /load")
        assert len(said) == 1, said
        assert backend in said[0] and f"GET {probe}" in said[0]
