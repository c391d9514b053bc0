"""Serving the router: start, drain on SIGTERM, reload on SIGHUP.

Every app is served by a :class:`Generation` (an aiohttp runner with
``handler_cancellation=True``, set explicitly so a client that goes away cancels its handler and
with it the upstream request, behind a :class:`~router.listener.GuardedSite`).

**SIGTERM / SIGINT** (:meth:`Generation.drain`):

1. ``/readyz`` turns 503 and completion requests that still arrive on open keep-alive
   connections get 503 ``shutting_down`` (``Connection: close``);
2. the listening socket closes: new connections are refused;
3. in-flight requests run on for up to ``server.drain_s`` seconds;
4. then every stream still open ends with an SSE error frame (``code: "upstream_error"``,
   503, "shutting down") and ``data: [DONE]``, a non-streaming request gets 503; each is
   counted ``failed`` (``upstream_errors{kind="shutdown"}``);
5. the runner closes the remaining connections (a request still waiting for its backend's
   first byte is cancelled) and the app's resources.

**SIGHUP** (with a config path): the file is read and validated again. Invalid: the errors are
logged and nothing changes. Valid: a new generation is built from it and starts listening on
the same address (``SO_REUSEPORT``), then the old one drains as above, in the background. So a
reload is a rolling restart inside one process: no request is dropped, requests in flight
finish under the config they were admitted with, new ones see the new config. ``server.host``
and ``server.port`` cannot change this way (restart the process); everything else applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from router.app import build_app
from router.config import ConfigError, RouterConfig, ServerConfig, load_config
from router.lifecycle import LIFECYCLE, Lifecycle
from router.listener import GuardedSite, handler_kwargs

__all__ = ["DrainReport", "Generation", "running", "serve_forever"]

log = logging.getLogger("lpu_router.server")

_AFTER_DEADLINE_S = 2.0
"""How long streams ended at the drain deadline get to write their last frame."""


@dataclass(frozen=True, slots=True)
class DrainReport:
    in_progress_at_start: int
    ended_at_deadline: int
    """Requests the deadline ended (clean SSE end or 503)."""
    left_at_close: int
    """Requests still running when the runner closed (cancelled)."""


class Generation:
    """One app being served: its runner, its site, its lifecycle."""

    def __init__(self, app: web.Application, runner: web.AppRunner, site: GuardedSite,
                 host: str) -> None:
        self.app = app
        self.runner = runner
        self.site = site
        self.url = f"http://{host}:{site.port}"
        self.lifecycle: Lifecycle = app[LIFECYCLE] if LIFECYCLE in app else Lifecycle()

    @classmethod
    async def start(cls, app: web.Application, server: ServerConfig, host: str, port: int, *,
                    reuse_port: bool = False, shutdown_timeout: float = _AFTER_DEADLINE_S
                    ) -> Generation:
        runner = web.AppRunner(app, handler_cancellation=True,
                               shutdown_timeout=shutdown_timeout, **handler_kwargs(server))
        await runner.setup()
        site = GuardedSite(runner, server, host, port, reuse_port=reuse_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return cls(app, runner, site, host)

    async def drain(self, drain_s: float) -> DrainReport:
        """Stop accepting, let in-flight requests finish for ``drain_s``, end the rest, close."""
        life = self.lifecycle
        at_start = life.in_progress
        life.start_drain()
        await self.site.stop()
        ended = 0
        if not await life.wait_idle(drain_s):
            ended = life.end_in_flight()
            await life.wait_idle(_AFTER_DEADLINE_S)
        left = life.in_progress
        await self.runner.cleanup()
        report = DrainReport(at_start, ended, left)
        log.info("drained %s: %d in progress at start, %d ended at the deadline, %d cancelled",
                 self.url, report.in_progress_at_start, report.ended_at_deadline,
                 report.left_at_close)
        return report

    async def close(self) -> None:
        """Close at once (tests, errors): aiohttp's own shutdown, no drain period."""
        await self.runner.cleanup()


@contextlib.asynccontextmanager
async def running(app: web.Application, host: str = "127.0.0.1", port: int = 0,
                  *, shutdown_timeout: float = 5.0, server: ServerConfig | None = None
                  ) -> AsyncIterator[str]:
    """Serve ``app`` in the running loop; yield its base URL (``http://host:port``).

    ``server`` gives the limits (connections, header sizes, idle timeout); default
    :class:`ServerConfig`'s.
    """
    gen = await Generation.start(app, server or ServerConfig(), host, port,
                                 shutdown_timeout=shutdown_timeout)
    try:
        yield gen.url
    finally:
        await gen.close()


async def serve_forever(config: RouterConfig, *,
                        on_ready: Callable[[str], None] | None = None,
                        config_path: str | Path | None = None) -> None:
    """Serve ``config`` until SIGINT or SIGTERM (then drain); SIGHUP reloads ``config_path``."""
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, reload.set)
    host = config.server.host
    current = await Generation.start(build_app(config), config.server, host,
                                     config.server.port, reuse_port=True)
    retiring: set[asyncio.Task[DrainReport]] = set()
    if on_ready is not None:
        on_ready(current.url)
    try:
        while not stop.is_set():
            stopped = asyncio.ensure_future(stop.wait())
            reloaded = asyncio.ensure_future(reload.wait())
            await asyncio.wait({stopped, reloaded}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            reloaded.cancel()
            if reload.is_set() and not stop.is_set() and config_path is not None:
                reload.clear()
                nxt = await _reload(config, config_path, current)
                if nxt is not None:
                    old, old_config = current, config
                    current, config = nxt
                    task = asyncio.create_task(old.drain(old_config.server.drain_s))
                    retiring.add(task)
                    task.add_done_callback(retiring.discard)
    finally:
        await current.drain(config.server.drain_s)
        if retiring:
            await asyncio.gather(*retiring, return_exceptions=True)


async def _reload(config: RouterConfig, path: str | Path, current: Generation
                  ) -> tuple[Generation, RouterConfig] | None:
    """Validate the file again and start its generation; None (logged) when it cannot."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload refused, still serving the previous config: %s", exc)
        return None
    if (new.server.host, new.server.port) != (config.server.host, config.server.port):
        log.warning("reload: server.host/server.port changes need a restart; kept %s",
                    current.url)
    try:
        gen = await Generation.start(build_app(new), new.server, config.server.host,
                                     current.site.port, reuse_port=True)
    except OSError as exc:
        log.error("reload failed to listen, still serving the previous config: %s", exc)
        return None
    log.info("reloaded %s from %s", gen.url, path)
    return gen, new
