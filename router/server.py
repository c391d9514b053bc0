"""Serving the router: an aiohttp runner with ``handler_cancellation=True``, set explicitly so a
client that goes away cancels its handler (and with it the upstream request).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from router.app import build_app
from router.config import RouterConfig

__all__ = ["running", "serve_forever"]


@contextlib.asynccontextmanager
async def running(app: web.Application, host: str = "127.0.0.1", port: int = 0,
                  *, shutdown_timeout: float = 5.0) -> AsyncIterator[str]:
    """Serve ``app`` in the running loop; yield its base URL (``http://host:port``)."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


async def serve_forever(config: RouterConfig, *,
                        on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``config`` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running(build_app(config), config.server.host, config.server.port) as url:
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
