"""The schedule poller: reads while the block runs, once more at its end, and fails loudly."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from benchmarks.schedule_polling import polling


async def test_reads_during_the_block_and_once_at_its_end() -> None:
    reads: list[int] = []
    block_done, three = asyncio.Event(), asyncio.Event()

    async def read(session: aiohttp.ClientSession) -> None:
        reads.append(1 if block_done.is_set() else 0)
        if len(reads) >= 3:
            three.set()

    async with polling(read, 0.01):
        await three.wait()
        block_done.set()
    # Three or more reads inside, then exactly one after the block ended.
    assert reads[-1] == 1 and reads.count(1) == 1 and len(reads) >= 4


async def test_a_failed_read_inside_the_block_comes_out_at_its_end() -> None:
    async def read(session: aiohttp.ClientSession) -> None:
        raise aiohttp.ClientResponseError(None, (), status=500)  # type: ignore[arg-type]

    with pytest.raises(aiohttp.ClientResponseError):
        async with polling(read, 0.001):
            await asyncio.sleep(0.05)
