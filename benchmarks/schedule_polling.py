"""Reading the emulators' recorded schedules while a run goes on.

An emulator keeps a bounded window of its recorded schedule (``/admin/schedule``), so a run
longer than that window must read it repeatedly and merge the reads; :func:`polling` does the
repeating, the caller says what one read does (merge, keep, and whether a failed read is fatal).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp

__all__ = ["polling", "read_schedule"]


async def read_schedule(session: aiohttp.ClientSession, url: str) -> list[Mapping[str, Any]]:
    """The entries of the emulator at ``url``'s recorded schedule, as it answers now; raises
    :class:`aiohttp.ClientError` on an error status."""
    async with session.get(url + "/admin/schedule") as r:
        r.raise_for_status()
        return list((await r.json())["requests"])


@contextlib.asynccontextmanager
async def polling(read: Callable[[aiohttp.ClientSession], Awaitable[None]], every_s: float
                  ) -> AsyncIterator[None]:
    """Call ``read`` every ``every_s`` while the block runs, and once more at its end (so the
    last requests are in); a ``read`` that raises inside the block ends the polling and the
    exception comes out at the block's end."""
    async with aiohttp.ClientSession() as session:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every_s)
                await read(session)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
        if isinstance(results[0], Exception):
            raise results[0]
        await read(session)
