"""The soak in small (CI smoke), and a bounded memory check: repeated requests do not grow the
router's Python heap."""

from __future__ import annotations

import gc
import tracemalloc

import aiohttp
from stack import assert_settled, chat, emulator_stack

from benchmarks.soak import soak


async def test_soak_smoke_accounts_for_every_request() -> None:
    figures = await soak(duration=12.0, rate=15.0, disconnect=0.15, time_scale=0.5, seed=3)
    assert figures["sent"] > 50
    assert figures["unaccounted"] == 0, figures
    assert figures["admitted_minus_finished"] == 0, figures
    assert figures["in_flight_at_end"] == 0, figures
    assert figures["router_rss_kib"]["start"] > 0


async def _burst(session: aiohttp.ClientSession, url: str, n: int) -> None:
    for i in range(n):
        async with session.post(url + "/v1/chat/completions",
                                json=chat(4, stream=bool(i % 2))) as r:
            await r.read()


async def test_repeated_requests_do_not_grow_memory() -> None:
    async with emulator_stack(time_scale=0.01) as stack, aiohttp.ClientSession() as s:
        await _burst(s, stack.url, 100)  # warm-up: caches, lazily built objects
        gc.collect()
        tracemalloc.start()
        try:
            await _burst(s, stack.url, 100)
            gc.collect()
            first, _ = tracemalloc.get_traced_memory()
            await _burst(s, stack.url, 300)
            gc.collect()
            second, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Generous: a leak of even 1 KiB per request would add 300 KiB.
        assert second - first < 256 * 1024, (first, second)
        await assert_settled(stack)
