"""Bad input: each gets a clear OpenAI-style error with the right status, no backend sees it,
and the router's accounting stays whole."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from stack import (
    MODEL,
    FakeBackend,
    Stack,
    StartFake,
    StartRouter,
    assert_settled,
    chat,
    close_hard,
    error_code,
    open_raw,
    post,
    raw_post,
    router_config,
)


async def _never(request: web.Request) -> web.StreamResponse:
    raise AssertionError("a bad request reached the backend")


@pytest.fixture
async def backend(fake_backend: StartFake) -> AsyncIterator[FakeBackend]:
    fake = await fake_backend(_never)
    yield fake
    assert not fake.headers, "a bad request reached the backend"


@pytest.fixture
async def stack(backend: FakeBackend, router_stack: StartRouter) -> Stack:
    return await router_stack(router_config([backend.url], extra={"server": {
        "max_body_bytes": 16384, "body_timeout_s": 0.3, "idle_timeout_s": 0.3,
        "max_connections": 8, "max_header_bytes": 2048}}))


BAD_BODIES = [
    (b"{", 400, "invalid_json"),
    (b'{"model": "' + MODEL.encode() + b'", "messages": [', 400, "invalid_json"),
    (b"[]", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b"\xff\xfe\x00{}", 400, "invalid_json"),
    (b'{"model": "m\xc3", "messages": []}', 400, "invalid_json"),
    (json.dumps({"model": MODEL}).encode(), 400, "missing_required_parameter"),
    (json.dumps(chat(messages=[])).encode(), 400, "invalid_value"),
    (json.dumps(chat(messages="hi")).encode(), 400, "invalid_type"),
    (json.dumps(chat(messages=[{"role": "wizard", "content": "x"}])).encode(), 400,
     "invalid_value"),
    (json.dumps(chat(messages=[{"content": "x"}])).encode(), 400, "missing_required_parameter"),
    (json.dumps(chat(max_tokens=-1)).encode(), 400, "invalid_value"),
    (json.dumps(chat(max_tokens=0)).encode(), 400, "invalid_value"),
    (json.dumps(chat(max_tokens=10**12)).encode(), 400, "invalid_value"),
    (json.dumps(chat(max_tokens="10")).encode(), 400, "invalid_type"),
    (json.dumps(chat(max_tokens=1.5)).encode(), 400, "invalid_type"),
    (json.dumps(chat(stream="yes")).encode(), 400, "invalid_type"),
    (json.dumps(chat(temperature=9)).encode(), 400, "invalid_value"),
    (json.dumps(chat(n=3)).encode(), 400, "unsupported_parameter"),
    (json.dumps(chat(frobnicate=True)).encode(), 400, "unknown_parameter"),
    (json.dumps({**chat(), "model": "no-such-model"}).encode(), 404, "model_not_found"),
    (json.dumps({**chat(), "model": 7}).encode(), 400, "invalid_type"),
    (json.dumps(chat(max_tokens=1000, messages=[
        {"role": "user", "content": "word " * 1500}])).encode(), 400, "context_length_exceeded"),
    (b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
     + b"x" * 20000 + b'"}]}', 413, "request_too_large"),
    (b"[" * 3000 + b"]" * 3000, 400, "invalid_json"),
]
BAD_IDS = [
    "truncated", "truncated-deep", "array", "empty", "utf16-bom", "invalid-utf8",
    "missing-messages", "empty-messages", "messages-string", "unknown-role", "missing-role",
    "negative-max-tokens", "zero-max-tokens", "absurd-max-tokens", "max-tokens-string",
    "max-tokens-float", "stream-string", "temperature-range", "n-3", "unknown-param",
    "unknown-model", "model-int", "context-too-long", "over-size-limit", "deep-nesting",
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES, ids=BAD_IDS)
async def test_bad_body_is_a_clear_error(stack: Stack, body: bytes, status: int,
                                         code: str) -> None:
    got, headers, raw = await post(stack, body)
    assert got == status, raw
    assert headers["content-type"].startswith("application/json")
    assert headers["x-request-id"]
    assert error_code(raw) == code
    assert b"Traceback" not in raw
    await assert_settled(stack)


async def test_unsupported_content_part_and_legacy_prompt(stack: Stack) -> None:
    image = chat(messages=[{"role": "user", "content": [{"type": "image_url",
                                                         "image_url": {"url": "x"}}]}])
    got, _, raw = await post(stack, image)
    assert (got, error_code(raw)) == (400, "invalid_value")
    got, _, raw = await post(stack, {"model": MODEL, "prompt": ["a", "b"]}, path="/v1/completions")
    assert (got, error_code(raw)) == (400, "invalid_value")
    await assert_settled(stack)


async def test_slow_body_gets_408_and_is_closed(stack: Stack) -> None:
    body = json.dumps(chat()).encode()
    reader, writer = await open_raw(stack, raw_post(b"", length=len(body)))
    for byte in body[:20]:  # byte by byte, slower than body_timeout_s in total
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.03)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer
    assert b"Connection: close" in answer
    await close_hard(writer)
    await assert_settled(stack)


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHo"],
                         ids=["nothing", "partial-headers"])
async def test_silent_connection_is_closed(stack: Stack, sent: bytes) -> None:
    reader, writer = await open_raw(stack, sent)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by idle_timeout_s
    await close_hard(writer)
    await assert_settled(stack)


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\nHost: r\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: r\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    + b"\r\n",
    b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: r\r\n\r\n",
], ids=["long-field", "many-fields", "long-request-line"])
async def test_headers_too_large_are_431(stack: Stack, head: bytes) -> None:
    reader, writer = await open_raw(stack, head)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.split(b"\r\n", 1)[0].endswith(b"431 Request Header Fields Too Large")
    assert b'"code": "request_header_fields_too_large"' in answer
    await close_hard(writer)
    await assert_settled(stack)


@pytest.mark.parametrize("head", [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n"
    b"Content-Length: 7\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: gzip, chunked\r\n"
    b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
], ids=["cl-and-te", "two-content-lengths", "te-conflict", "tls-on-http"])
async def test_smuggling_shapes_are_400_and_not_forwarded(stack: Stack, head: bytes) -> None:
    reader, writer = await open_raw(stack, head)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.split(b"\r\n", 1)[0].split(b" ", 2)[1] == b"400", answer
    assert b'"code": "bad_request"' in answer
    await close_hard(writer)
    await assert_settled(stack)


async def test_connections_beyond_the_limit_get_503(stack: Stack) -> None:
    held = [await open_raw(stack, b"") for _ in range(8)]  # server.max_connections
    await asyncio.sleep(0.05)
    reader, writer = await open_raw(stack, b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503")
    assert b"too_many_connections" in answer
    for _, w in held:
        await close_hard(w)
    await close_hard(writer)
    await asyncio.sleep(0.05)
    got, _, _ = await post(stack, b"{")  # a slot is free again
    assert got == 400
    await assert_settled(stack)
