"""A dynamic batching window: the front end the batching-window experiment puts in front of
a fixed-schedule backend.

The first request to arrive opens a window of ``window_s``; every request arriving while it
is open joins the batch; the batch is released (each request forwarded upstream at once)
when the window closes or when it holds ``max_batch`` requests. The streamed reply is relayed
unchanged. ``window_s = 0`` forwards every request at once. :func:`release_times` is the same
rule on a list of arrival times, for the simulated prediction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import numpy.typing as npt
from aiohttp import web

from router.server import running

__all__ = ["BatchingWindow", "release_times", "serve_batching_proxy"]


def release_times(arrivals: npt.NDArray[np.float64], window_s: float,
                  max_batch: int) -> npt.NDArray[np.float64]:
    """When each (sorted) arrival is released by the window rule."""
    out = np.empty_like(arrivals)
    n = arrivals.size
    i = 0
    while i < n:
        close = float(arrivals[i]) + window_s
        j = i + 1
        while j < n and j - i < max_batch and arrivals[j] <= close:
            j += 1
        out[i:j] = close if j - i < max_batch else arrivals[j - 1]
        i = j
    return out


class BatchingWindow:
    """Holds requests in batches; :meth:`join` returns when the caller's batch is released."""

    def __init__(self, window_s: float, max_batch: int) -> None:
        self.window_s = window_s
        self.max_batch = max_batch
        self._batch: asyncio.Future[None] | None = None
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._batch is not None and not self._batch.done():
            self._batch.set_result(None)
        self._batch = None

    async def join(self) -> None:
        if self.window_s <= 0:
            return
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch, self._count = loop.create_future(), 0
            self._timer = loop.call_later(self.window_s, self._release)
        batch = self._batch
        self._count += 1
        if self._count >= self.max_batch:
            self._release()
        await asyncio.shield(batch)


@contextlib.asynccontextmanager
async def serve_batching_proxy(upstream: str, window_s: float,
                               max_batch: int) -> AsyncIterator[str]:
    """Serve the batching front end for ``upstream`` on an ephemeral port; yield its URL."""
    window = BatchingWindow(window_s, max_batch)
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        await window.join()
        session = request.app[session_key]
        headers = {"Content-Type": "application/json"}
        async with session.post(upstream + request.path, data=body, headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={
                "Content-Type": up.headers.get("Content-Type", "application/json")})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            app[session_key] = s
            yield

    app = web.Application()
    app.cleanup_ctx.append(client)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_post("/v1/completions", forward)
    async with running(app) as url:
        yield url
