"""A client that goes away at any stage: the request ends ``cancelled``, the backend is told
(its cancelled counter), and the in-flight gauges and the admitter's counts return to zero."""

from __future__ import annotations

import asyncio
import json

import pytest
from stack import (
    Stack,
    assert_settled,
    chat,
    close_hard,
    emulator_cancelled,
    emulator_stack,
    open_raw,
    raw_post,
)


async def _admitted(stack: Stack, n: int = 1) -> None:
    for _ in range(200):
        total = sum(stack.metric("lpu_router_requests_admitted_total",
                                 {"bucket": "short", "priority": p})
                    for p in ("interactive", "standard", "batch"))
        if total >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the request was never admitted")


async def _cancelled_settles(stack: Stack, want: int = 1) -> None:
    for _ in range(200):
        if await emulator_cancelled(stack.backends) >= want:
            break
        await asyncio.sleep(0.02)
    assert await emulator_cancelled(stack.backends) == want
    await assert_settled(stack)
    assert stack.finished("cancelled") == want


async def test_disconnect_while_waiting_for_a_slot() -> None:
    # One slot, a long request holds it; the second waits in the backend's queue and leaves.
    async with emulator_stack(time_scale=1.0, slots=1) as stack:
        hold_r, hold_w = await open_raw(
            stack, raw_post(json.dumps(chat(1000, stream=True)).encode()))
        await asyncio.wait_for(hold_r.readuntil(b"\r\n\r\n"), 10)  # it runs (~1.9 s)
        _r, w = await open_raw(stack, raw_post(json.dumps(chat(4)).encode()))
        await asyncio.sleep(0.3)  # the backend queues it
        await close_hard(w)
        await close_hard(hold_w)
        await _cancelled_settles(stack, 2)


async def test_disconnect_during_prefill() -> None:
    # time_scale 20: prefill takes 1.6 s; we leave after 0.1 s.
    async with emulator_stack(time_scale=20.0) as stack:
        _r, w = await open_raw(stack, raw_post(json.dumps(chat(4, stream=True)).encode()))
        await _admitted(stack)
        await asyncio.sleep(0.1)
        await close_hard(w)
        await _cancelled_settles(stack)


@pytest.mark.parametrize("after_bytes", [1, 400], ids=["first-byte", "mid-stream"])
async def test_disconnect_mid_stream(after_bytes: int) -> None:
    async with emulator_stack(time_scale=0.5) as stack:
        r, w = await open_raw(stack, raw_post(json.dumps(chat(1000, stream=True)).encode()))
        await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        await asyncio.wait_for(r.readexactly(after_bytes), 10)
        await close_hard(w)
        await _cancelled_settles(stack)


async def test_disconnect_just_before_the_end() -> None:
    # 60 tokens, slow enough to read all but the last frames, then leave.
    async with emulator_stack(time_scale=5.0) as stack:
        r, w = await open_raw(stack, raw_post(json.dumps(chat(60, stream=True)).encode()))
        await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        seen = 0
        while seen < 55:
            chunk = await asyncio.wait_for(r.readuntil(b"\n\n"), 10)
            seen += chunk.count(b'"delta"')
        await close_hard(w)
        await asyncio.sleep(0.3)
        await assert_settled(stack)
        # It either finished just before we left or was cancelled: exactly one of them.
        assert stack.finished("cancelled") + stack.finished("completed") == 1
