"""The listener against ``lpu-router serve`` as a subprocess (uvloop, as production): the
connection cap answers 503 JSON and logs no traceback; many idle connections never turn a real
request into a reset; a client that half-closes gets its answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from live_processes import config_toml, served_router
from stack import (
    Stack,
    StartEmulators,
    StartRouter,
    assert_settled,
    chat,
    emulator_cancelled,
    emulator_options,
    error_code,
    http_exchange,
    raw_post,
    router_config,
)

from lpu_emulator.server import start_emulators

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX limits")

_GET = b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n"


@contextlib.asynccontextmanager
async def _held(port: int, n: int) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """``n`` open connections that send nothing."""
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(n):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            writers.append(w)
        yield writers
    finally:
        for w in writers:
            w.close()


def _status(answer: bytes) -> int:
    """The final status of a raw HTTP answer (interim 1xx responses skipped)."""
    while answer.startswith(b"HTTP/1.1 1"):
        answer = answer.split(b"\r\n\r\n", 1)[1]
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def _json_body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n")[-1]


async def _metric(port: int, name: str) -> float:
    answer = await http_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: r\r\n"
                                       b"Connection: close\r\n\r\n")
    for line in answer.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_connections_over_the_cap_get_the_503_json_and_no_traceback(
        tmp_path: Path) -> None:
    async with start_emulators(emulator_options()) as urls:
        cfg = tmp_path / "router.toml"
        cfg.write_text(config_toml(urls, server={"max_connections": 20}))
        async with served_router(cfg) as router:
            async with _held(router.port, 20):
                await asyncio.sleep(0.2)  # the router has accepted them all
                answers = await asyncio.gather(*(http_exchange(router.port, _GET)
                                                 for _ in range(200)))
                for answer in answers:
                    assert _status(answer) == 503, answer
                    assert error_code(_json_body(answer)) == "too_many_connections"
                    assert b"Retry-After: 1" in answer
            await asyncio.sleep(0.2)  # the held connections are gone: room again
            assert await _metric(router.port, "lpu_router_connections_refused_total") == 200
        assert not router.lines("Traceback"), router.log[:40]
        refusals = router.lines("refused")
        assert 1 <= len(refusals) <= 2, refusals  # rate-limited, not one per connection
        assert "over the cap of 20" in refusals[0]


@pytest.mark.parametrize(("files", "expect"), [
    ((1024, None), {503}),  # soft 1024 under a higher hard limit: the router raises it
    ((1024, 1024), {503}),  # hard 1024: the cap is lowered to what the process can open
], ids=["soft-limit", "hard-limit"])
async def test_a_request_after_2000_idle_connections_is_answered(
        tmp_path: Path, files: tuple[int, int | None], expect: set[int]) -> None:
    async with start_emulators(emulator_options()) as urls:
        cfg = tmp_path / "router.toml"
        cfg.write_text(config_toml(urls))  # max_connections: the default, 1024
        async with served_router(cfg, files=files) as router:
            async with _held(router.port, 2000):
                # Refused connections linger 1 s for their 503 to be read; past that, only
                # the connections the cap serves stay open.
                await asyncio.sleep(1.5)
                answer = await http_exchange(router.port, raw_post(chat(4)))
                assert _status(answer) in expect, answer[:300]
                assert error_code(_json_body(answer)) == "too_many_connections"
            await asyncio.sleep(0.5)
            answer = await http_exchange(router.port, raw_post(
                chat(4), extra="Connection: close\r\n"))
            assert _status(answer) == 200, answer[:300]
        assert not router.lines("Traceback"), router.lines("Error")[:5]
        if files[1] is not None:
            assert router.lines("server.max_connections = 1024 lowered to 320")


# -- half-close (in-process router on uvloop, raw sockets) ---------------------------------

@pytest.fixture
async def stack(emulators: StartEmulators, router_stack: StartRouter) -> Stack:
    urls = await emulators(emulator_options(time_scale=1.0))
    return await router_stack(router_config(urls, time_scale=1.0))


def _raw(body: dict[str, object]) -> bytes:
    return raw_post(body)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_client_that_half_closes_gets_its_answer(stack: Stack, stream: bool) -> None:
    with socket.create_connection(("127.0.0.1", stack.port)) as s:
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(s, _raw(chat(30, stream=stream)))
        s.shutdown(socket.SHUT_WR)  # done sending: nothing more will come
        answer = b""
        async with asyncio.timeout(15):
            while chunk := await loop.sock_recv(s, 65536):
                answer += chunk
    assert _status(answer) == 200, answer[:300]
    if stream:
        assert answer.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), answer[-200:]
    else:
        assert json.loads(_json_body(answer))["usage"]["completion_tokens"] == 30
    text = await assert_settled(stack)
    assert 'outcome="completed"} 1.0' in text and 'outcome="cancelled"' not in text


async def test_a_client_that_closes_entirely_is_still_seen_leaving(stack: Stack) -> None:
    """A FIN that is a full close, not a half-close: the router finds out (its interim
    probe is answered with a reset) and cancels the request at the backend."""
    before = await emulator_cancelled(stack.backends)
    _, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(_raw(chat(1000)))  # ~2 s of generation
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()  # nothing unread: a plain FIN
    for _ in range(200):  # bounded: 10 s
        if await emulator_cancelled(stack.backends) > before:
            break
        await asyncio.sleep(0.05)
    assert await emulator_cancelled(stack.backends) == before + 1
    text = await assert_settled(stack)
    assert 'outcome="cancelled"} 1.0' in text
