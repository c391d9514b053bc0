"""A client that goes away frees its slot at once: raw sockets closed when the test says so."""

from __future__ import annotations

import asyncio

from stack import MODEL, Stack, emulator_cancelled, open_raw, raw_post, two_bucket_stack


async def _settled(stack: Stack, bucket: str) -> None:
    """Wait (bounded) until the router and the emulators have seen the disconnect."""
    for _ in range(200):
        in_flight = sum(
            stack.metric("lpu_router_in_flight", {"bucket": bucket, "backend": b})
            for b in stack.buckets[bucket])
        if in_flight == 0 and await emulator_cancelled(stack.backends) >= 1:
            return
        await asyncio.sleep(0.02)


async def test_disconnect_mid_stream_cancels_upstream() -> None:
    async with two_bucket_stack(time_scale=0.5) as stack:
        # 1000 tokens at ~0.9 ms each: the stream runs ~1 s, we leave after the first bytes.
        reader, writer = await open_raw(stack, raw_post({
            "model": MODEL, "max_tokens": 1000, "stream": True,
            "messages": [{"role": "user", "content": "long story"}]}))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"data: " in await asyncio.wait_for(reader.read(200), 10)
        writer.close()
        await writer.wait_closed()
        await _settled(stack, "short")
        assert await emulator_cancelled(stack.backends) == 1
        for b in stack.buckets["short"]:
            assert stack.metric("lpu_router_in_flight", {"bucket": "short", "backend": b}) == 0
        assert stack.metric("lpu_router_requests_finished_total",
                            {"bucket": "short", "outcome": "cancelled"}) == 1


async def test_disconnect_while_waiting_for_the_first_token() -> None:
    # time_scale 20: prefill takes 1.6 s, we leave well before the first token.
    async with two_bucket_stack(time_scale=20.0, replicas=1) as stack:
        _reader, writer = await open_raw(stack, raw_post({
            "model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        for _ in range(100):  # until the router has admitted it
            if stack.metric("lpu_router_requests_admitted_total",
                            {"bucket": "short", "priority": "standard"}):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        writer.close()
        await writer.wait_closed()
        await _settled(stack, "short")
        assert await emulator_cancelled(stack.backends) == 1
        assert stack.metric("lpu_router_in_flight",
                            {"bucket": "short", "backend": stack.buckets["short"][0]}) == 0
        assert stack.metric("lpu_router_requests_finished_total",
                            {"bucket": "short", "outcome": "cancelled"}) == 1
