"""Large prompts do not block the event loop (issue 10, defect 2).

A 4 MB prompt is refused 400 ``context_length_exceeded`` ("at least N" tokens: counting stops
past the largest shape) without reaching a backend, and while two clients send such prompts in
a loop, a concurrent stream keeps its schedule. The emulator and the router share the test's
event loop (real sockets, uvloop), so any stretch in which the router holds the loop delays the
emulator's writes; the emulator writes every token due at a wake-up in one write, so a stall
longer than a token's time shows as fewer writes than tokens. The assertion is on that count
(the emulator's recorded schedule), never on a latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
from collections.abc import AsyncIterator

import aiohttp
from stack import (
    ARTIFACT,
    Stack,
    assert_settled,
    chat,
    emulator_stack,
    error_code,
    router_config,
    serve_router,
)

from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

PER_TOKEN_S = 0.1
"""A token's time: a stall shorter than this cannot merge two tokens into one write. It is far
above what a 4 MB body may cost the loop (a few ms), and below what counting all of it cost."""
STREAM_TOKENS = 16
PROMPT_4MB = json.dumps(chat(8, messages=[{"role": "user",
                                           "content": "Tell me something. " * 200_000}])).encode()
WRITES = "lpu:token_delivery_lateness_seconds_count"
JSON = {"Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def slow_token_stack() -> AsyncIterator[Stack]:
    """One emulator whose tokens come :data:`PER_TOKEN_S` apart (prefill 50 ms), the router."""
    artifact = dataclasses.replace(builtin_artifact(ARTIFACT), prefill_s=0.05,
                                   per_token_s=PER_TOKEN_S)
    async with start_emulators(EmulatorOptions(artifact=artifact, time_scale=1.0), 1) as urls, \
            serve_router(router_config(urls, time_scale=1.0)) as stack:
        yield stack


async def post_4mb(session: aiohttp.ClientSession, stack: Stack) -> tuple[int, bytes]:
    # A file-like body: aiohttp sends it in chunks rather than in one write.
    async with session.post(stack.url + "/v1/chat/completions", data=io.BytesIO(PROMPT_4MB),
                            headers=JSON) as r:
        return r.status, await r.read()


async def emulator_writes(stack: Stack) -> float:
    """Stream writes the emulators made so far (one lateness observation per write)."""
    total = 0.0
    async with aiohttp.ClientSession() as s:
        for url in stack.backends:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith(WRITES + "{"))
    return total


async def stream_with_attackers(stack: Stack, attackers: int) -> tuple[float, list[int], bytes]:
    """One stream of :data:`STREAM_TOKENS` tokens; ``attackers`` loops of 4 MB prompts run
    from its first token to its end. Returns (emulator writes, attack statuses, stream body)."""
    before = await emulator_writes(stack)
    statuses: list[int] = []
    done = asyncio.Event()

    async def attack() -> None:
        async with aiohttp.ClientSession() as s:
            while not done.is_set():
                statuses.append((await post_4mb(s, stack))[0])

    async with aiohttp.ClientSession() as s, s.post(
            stack.url + "/v1/chat/completions",
            json=chat(STREAM_TOKENS, stream=True)) as r:
        assert r.status == 200
        body = await r.content.readany()  # the first token: the stream is running
        tasks = [asyncio.create_task(attack()) for _ in range(attackers)]
        try:
            body += await r.read()
        finally:
            done.set()
            await asyncio.gather(*tasks)
    return await emulator_writes(stack) - before, statuses, body


async def test_a_4mb_prompt_is_refused_as_at_least_without_reaching_a_backend() -> None:
    async with emulator_stack(time_scale=0.05) as stack:
        async with aiohttp.ClientSession() as s:
            status, body = await post_4mb(s, stack)
        assert status == 400 and error_code(body) == "context_length_exceeded", body[:300]
        message = json.loads(body)["error"]["message"]
        assert "maximum context length is 2048 tokens" in message
        assert "at least" in message
        assert stack.rejected("context_length") == 1
        await assert_settled(stack)


async def test_a_stream_keeps_its_schedule_while_4mb_prompts_are_refused() -> None:
    async with slow_token_stack() as stack:
        alone, _, quiet = await stream_with_attackers(stack, attackers=0)
        attacked, statuses, loud = await stream_with_attackers(stack, attackers=2)
        assert alone == STREAM_TOKENS  # the schedule: one write per token
        assert len(statuses) >= 4 and set(statuses) == {400}, statuses
        assert attacked == alone, f"{attacked} writes for {STREAM_TOKENS} tokens under attack"
        assert loud.count(b"data: ") == quiet.count(b"data: ")
        await assert_settled(stack)
