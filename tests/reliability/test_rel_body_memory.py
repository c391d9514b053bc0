"""The memory request bodies hold is bounded (``server.max_body_memory_bytes``): past it a
request gets 503 at once, without its body being read; the others are served."""

from __future__ import annotations

import asyncio
import json

import pytest
from stack import (
    Stack,
    StartEmulators,
    StartRouter,
    assert_settled,
    chat,
    close_hard,
    error_code,
    open_raw,
    post,
    router_config,
)

_SIZE = 400_000


@pytest.fixture
async def stack(emulators: StartEmulators, router_stack: StartRouter) -> Stack:
    return await router_stack(router_config(await emulators(), extra={"server": {
        "max_body_bytes": _SIZE, "max_body_memory_bytes": 1_000_000}}))


def _body() -> bytes:
    """A valid chat body of exactly ``_SIZE`` bytes (JSON allows trailing whitespace)."""
    raw = json.dumps(chat(4)).encode()
    return raw + b" " * (_SIZE - len(raw))


def _head(length: int | None) -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n")
                  if h.lower().startswith(b"content-length:"))
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


async def test_bodies_past_the_memory_budget_get_503_at_once(stack: Stack) -> None:
    body = _body()
    held = [await open_raw(stack, _head(_SIZE) + body[:1000]) for _ in range(2)]  # 800 kB
    await asyncio.sleep(0.1)  # both reserved
    assert stack.metric("lpu_router_body_memory_bytes", {}) == 2 * _SIZE

    # A third declared body does not fit: answered before a byte of it is sent.
    reader, writer = await open_raw(stack, _head(_SIZE))
    head, err = await _answer(reader)
    assert head.startswith(b"HTTP/1.1 503"), head
    assert b"Retry-After: 1" in head and b"Connection: close" in head
    assert error_code(err) == "body_memory_exhausted"
    await close_hard(writer)

    # A small request fits in what is left and is served meanwhile.
    status, _, _ = await post(stack, chat(4))
    assert status == 200

    # A chunked body is counted as it arrives: refused once it crosses the budget.
    reader, writer = await open_raw(stack, _head(None))
    for _ in range(3):
        writer.write(b"%x\r\n" % 100_000 + b" " * 100_000 + b"\r\n")
        await writer.drain()
    head, err = await _answer(reader)
    assert head.startswith(b"HTTP/1.1 503") and error_code(err) == "body_memory_exhausted"
    await close_hard(writer)

    # The held bodies complete and are served; their reservations are returned.
    for r, w in held:
        w.write(body[1000:])
        await w.drain()
        head, _ = await _answer(r)
        assert head.startswith(b"HTTP/1.1 200"), head
        await close_hard(w)
    await assert_settled(stack)
    assert stack.metric("lpu_router_body_memory_bytes", {}) == 0
    assert stack.rejected("body_memory") == 2
