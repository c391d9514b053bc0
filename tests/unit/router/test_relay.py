"""The relay through the real router app to a fake backend on loopback: bytes, headers, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from router.app import build_app
from router.config import parse_config
from router.relay import Usage, usage
from router.server import running

EVENTS = [
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"b\\n\\nc"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)


@dataclass
class Fake:
    """What the fake backend saw, and how it should answer."""

    mode: str = "stream"
    seen_headers: list[CIMultiDict[str]] = field(default_factory=list)
    seen_bodies: list[dict[str, Any]] = field(default_factory=list)


def fake_backend(fake: Fake) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        fake.seen_headers.append(CIMultiDict(request.headers))
        fake.seen_bodies.append(await request.json())
        if fake.mode == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if fake.mode == "json":
            return web.json_response(
                {"choices": [], "usage": {"completion_tokens": 7}},
                headers={"Keep-Alive": "timeout=5", "Connection": "X-Secret",
                         "X-Secret": "1", "X-Custom": "yes"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        # Awkward chunking: split inside events, several events in one write.
        cuts = [0, 7, 40, 41, len(EVENTS[0]) + len(EVENTS[1]) + 5, len(STREAM)]
        for a, b in pairwise(cuts):
            if fake.mode == "die" and a > 41:
                assert request.transport is not None
                request.transport.abort()  # the backend dies mid-stream
                return resp
            await resp.write(STREAM[a:b])
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/readyz", readyz)
    return app


@pytest.fixture
async def setup() -> AsyncIterator[tuple[str, Fake, CollectorRegistry]]:
    fake = Fake()
    async with running(fake_backend(fake)) as backend:
        cfg = parse_config({
            "server": {"max_body_bytes": 2048, "max_retries": 1},
            "admission": {"mode": "off"},
            "buckets": [{"name": "s", "model": "m", "backends": [backend], "max_seq_len": 512,
                         "max_output_tokens": 100, "slots": 2, "prefill_ms": 1.0,
                         "per_token_ms": 1.0}],
        })
        reg = CollectorRegistry()
        async with running(build_app(cfg, registry=reg)) as url:
            yield url, fake, reg


BODY = {"model": "m", "max_tokens": 10, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}


async def test_stream_is_relayed_byte_for_byte(setup: tuple[str, Fake, CollectorRegistry]
                                               ) -> None:
    url, fake, reg = setup
    headers = {"Authorization": "Bearer secret", "Connection": "keep-alive, X-Hop",
               "X-Hop": "1", "Proxy-Authorization": "x", "X-Client": "c",
               "x-request-id": "my-id-1"}
    async with aiohttp.ClientSession() as s, \
            s.post(url + "/v1/chat/completions", json=BODY, headers=headers) as r:
        got = await r.read()
        assert r.status == 200
        assert r.headers["x-request-id"] == "my-id-1"
        assert r.headers["X-Accel-Buffering"] == "no"
        assert r.headers["x-lpu-bucket"] == "s"
    assert got == STREAM
    sent = fake.seen_headers[0]
    assert "Authorization" not in sent and "Proxy-Authorization" not in sent
    assert "X-Hop" not in sent
    assert sent["X-Client"] == "c" and sent["x-request-id"] == "my-id-1"
    assert fake.seen_bodies[0] == BODY  # unchanged allowance: forwarded as sent
    assert reg.get_sample_value("lpu_router_completion_tokens_total", {"bucket": "s"}) == 2
    assert reg.get_sample_value("lpu_router_requests_finished_total",
                                {"bucket": "s", "outcome": "completed"}) == 1


async def test_backend_dying_mid_stream_ends_with_an_error_event(
        setup: tuple[str, Fake, CollectorRegistry]) -> None:
    url, fake, reg = setup
    fake.mode = "die"
    async with aiohttp.ClientSession() as s, \
            s.post(url + "/v1/chat/completions", json=BODY) as r:
        got = await r.read()  # a clean end of the chunked body: no exception
    assert got.startswith(EVENTS[0] + EVENTS[1])
    tail = got.split(b"\n\n")
    error = json.loads(tail[-3].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_error"
    assert got.endswith(b"data: [DONE]\n\n")
    assert reg.get_sample_value("lpu_router_requests_finished_total",
                                {"bucket": "s", "outcome": "failed"}) == 1


async def test_hop_by_hop_response_headers_are_stripped(
        setup: tuple[str, Fake, CollectorRegistry]) -> None:
    url, fake, _ = setup
    fake.mode = "json"
    body = dict(BODY, stream=False, max_tokens=500)
    async with aiohttp.ClientSession() as s, \
            s.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        assert r.headers["X-Custom"] == "yes"
        assert "X-Secret" not in r.headers and "Keep-Alive" not in r.headers
        assert r.headers["x-lpu-max-tokens-clamped-from"] == "500"
        assert r.headers["x-lpu-max-tokens"] == "100"
    assert fake.seen_bodies[0]["max_tokens"] == 100


async def test_backend_5xx_is_retried_then_mapped(
        setup: tuple[str, Fake, CollectorRegistry]) -> None:
    url, fake, reg = setup
    fake.mode = "500"
    async with aiohttp.ClientSession() as s, \
            s.post(url + "/v1/chat/completions", json=BODY) as r:
        assert r.status == 502
        assert (await r.json())["error"]["code"] == "upstream_error"
        assert "x-request-id" in r.headers
    # One backend only: the retry finds no other replica.
    assert len(fake.seen_bodies) == 1
    assert reg.get_sample_value("lpu_router_upstream_errors_total",
                                {"bucket": "s", "backend": fake_url(reg), "kind": "status_5xx"}
                                ) == 1


def fake_url(reg: CollectorRegistry) -> str:
    for metric in reg.collect():
        for sample in metric.samples:
            if sample.name == "lpu_router_backend_up":
                return sample.labels["backend"]
    raise AssertionError("no backend gauge")


@pytest.mark.parametrize(
    ("path", "method", "kwargs", "status", "code"),
    [
        ("/v1/chat/completions", "POST", {"data": b"x" * 4096}, 413, "request_too_large"),
        ("/v1/chat/completions", "POST", {"data": b"{not json"}, 400, "invalid_json"),
        ("/v1/chat/completions", "POST", {"json": dict(BODY, model="nope")}, 404,
         "model_not_found"),
        ("/v1/nowhere", "GET", {}, 404, "unknown_url"),
        ("/v1/chat/completions", "GET", {}, 405, "method_not_allowed"),
    ],
    ids=["too-large", "malformed", "unknown-model", "unknown-url", "wrong-method"],
)
async def test_errors_have_openai_shape_and_request_id(
        setup: tuple[str, Fake, CollectorRegistry], path: str, method: str,
        kwargs: dict[str, Any], status: int, code: str) -> None:
    url, fake, _ = setup
    async with aiohttp.ClientSession() as s, s.request(method, url + path, **kwargs) as r:
        assert r.status == status
        assert r.headers["x-request-id"].startswith("req_")
        body = await r.json()
        assert body["error"]["code"] == code
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert fake.seen_bodies == []


def test_usage_reads_json_and_sse() -> None:
    assert usage(b'{"usage": {"completion_tokens": 4}}') == Usage(None, 4)
    assert usage(b'{"usage": {"prompt_tokens": 9, "completion_tokens": 4}}') == Usage(9, 4)
    assert usage(STREAM).completion_tokens == 2
    assert usage(b"data: [DONE]\n\n") is None
    assert usage(b"") is None
