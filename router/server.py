"""Serving the router: start, drain on SIGTERM, reload on SIGHUP.

Every app is served by a :class:`Generation` (an aiohttp runner with
``handler_cancellation=True``, set explicitly so a client that goes away cancels its handler and
with it the upstream request, behind a :class:`~router.listener.GuardedSite`). The connection
cap is ``server.max_connections`` lowered to what the process's file-descriptor limit can hold
(:func:`router.process.connection_cap`; a warning says so).

**SIGTERM / SIGINT** (:meth:`Generation.drain`):

1. ``/readyz`` turns 503 and completion requests that still arrive on open keep-alive
   connections get 503 ``shutting_down`` (``Connection: close``);
2. the listening socket closes: new connections are refused;
3. in-flight requests run on for up to ``server.drain_s`` seconds;
4. then every upstream request still running is ended: a stream with an SSE error frame
   (``code: "shutting_down"``, 503) and ``data: [DONE]``, a non-streaming request (waiting
   for its backend's status line or for its body) with 503 ``shutting_down``; each is counted
   ``failed`` (``upstream_errors{kind="shutdown"}``) and in the report's "ended at the
   deadline";
5. the runner closes the remaining connections and the app's resources.

**SIGHUP** (with a config path): the file is read and validated again. Invalid: the errors are
logged and nothing changes. Valid: a new generation is built from it and starts accepting on
the *same* listening socket (the process owns it; each generation accepts on a duplicate), then
the old one retires in the background (:meth:`Generation.retire`): it stops accepting, keeps
serving the requests that arrive on its open keep-alive connections, each response with
``Connection: close`` (so the client's next request goes to the new generation), ends what
still runs at ``drain_s`` as above, and closes once its last connection has (each closes after
its next response, or idle after ``server.idle_timeout_s``). One socket means one accept
queue: no connection waiting in it is lost, as it would be with a second ``SO_REUSEPORT``
socket closing. So a reload loses no request: requests in flight finish under the config they
were admitted with, new ones see the new config. ``server.host`` and ``server.port`` cannot
change this way (restart the process); everything else applies.

**Worker processes** (``server.workers`` > 1, :mod:`router.workers`): each worker runs
:func:`serve_forever` as above on a socket of its own bound with ``SO_REUSEPORT`` to the port
its supervisor reserved (``reuse_port``, ``port``), building every generation with the
worker's one metric catalog (``build``); drain and reload are each worker's, as here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from router.app import METRICS, build_app
from router.config import ConfigError, RouterConfig, ServerConfig, load_config
from router.lifecycle import LIFECYCLE, Lifecycle
from router.listener import GuardedSite, handler_kwargs, listen_backlog
from router.process import connection_cap, fd_limit

__all__ = ["DrainReport", "Generation", "listen_socket", "running", "serve_forever"]

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
        self._hurry = asyncio.Event()

    @classmethod
    async def start(cls, app: web.Application, server: ServerConfig, host: str, port: int, *,
                    sock: socket.socket | None = None,
                    shutdown_timeout: float = _AFTER_DEADLINE_S) -> Generation:
        """Serve ``app`` on ``sock`` (shared with other generations) or on ``host:port``."""
        runner = web.AppRunner(app, handler_cancellation=True,
                               shutdown_timeout=shutdown_timeout, **handler_kwargs(server))
        await runner.setup()
        limit = fd_limit()
        cap = connection_cap(server.max_connections, limit)
        if cap < server.max_connections:
            log.warning("server.max_connections = %d lowered to %d: the process may open %d"
                        " files (RLIMIT_NOFILE), and each connection may need an upstream one",
                        server.max_connections, cap, limit)
        refused = app[METRICS].connections_refused.inc if METRICS in app else None
        site = GuardedSite(runner, server, host, port, cap=cap, sock=sock, on_refused=refused)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return cls(app, runner, site, host)

    async def drain(self, drain_s: float) -> DrainReport:
        """SIGTERM: refuse, stop accepting, let in-flight requests finish for ``drain_s``,
        end the rest, close."""
        self.lifecycle.start_drain()
        await self.site.stop()
        return await self._finish(self.lifecycle.in_progress, drain_s)

    async def retire(self, drain_s: float, idle_s: float) -> DrainReport:
        """A reload: stop accepting, serve what arrives on open connections (each closes after
        its response), end what still runs at ``drain_s``, close once no connection is left
        (each idle one closes by itself within ``idle_s``), or at once when a SIGTERM
        (:meth:`Lifecycle.start_drain`) comes meanwhile."""
        life = self.lifecycle
        life.retire()
        at_start = life.in_progress
        await self.site.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        ended = await self._deadline(drain_s)
        if not life.draining:
            closed = asyncio.ensure_future(self.site.connections_closed())
            hurried = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait({closed, hurried}, timeout=max(0.0, deadline - loop.time())
                               + idle_s, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            hurried.cancel()
        if life.in_progress:  # arrived on an old connection after the deadline: end it too
            ended += life.end_in_flight()
        return await self._close(at_start, ended)

    def hurry(self) -> None:
        """SIGTERM while retiring: refuse as a drain does and close without waiting for the
        last connections."""
        self.lifecycle.start_drain()
        self._hurry.set()

    async def _deadline(self, drain_s: float) -> int:
        """Wait up to ``drain_s`` for in-flight requests, then end the rest; how many ended."""
        life = self.lifecycle
        if await life.wait_idle(drain_s):
            return 0
        ended = life.end_in_flight()
        await life.wait_idle(_AFTER_DEADLINE_S)
        return ended

    async def _finish(self, at_start: int, drain_s: float) -> DrainReport:
        return await self._close(at_start, await self._deadline(drain_s))

    async def _close(self, at_start: int, ended: int) -> DrainReport:
        if self.lifecycle.in_progress:
            await self.lifecycle.wait_idle(_AFTER_DEADLINE_S)
        left = self.lifecycle.in_progress
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


def listen_socket(host: str, port: int, backlog: int, *, reuse_port: bool = False
                  ) -> socket.socket:
    """A listening TCP socket on ``host:port`` (the first address ``host`` resolves to);
    ``reuse_port``: with ``SO_REUSEPORT``, sharing the port with the pod's other workers (the
    kernel spreads new connections over their sockets)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_forever(config: RouterConfig, *,
                        on_ready: Callable[[str], None] | None = None,
                        config_path: str | Path | None = None,
                        build: Callable[[RouterConfig], web.Application] = build_app,
                        port: int | None = None, reuse_port: bool = False) -> None:
    """Serve ``config`` until SIGINT or SIGTERM (then drain); SIGHUP reloads ``config_path``.

    ``build`` makes each generation's app; ``port`` (default ``server.port``) and
    ``reuse_port`` say where to listen (a worker: the supervisor's port, ``SO_REUSEPORT``)."""
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
    # The process owns the listening socket; every generation accepts on it (see above).
    sock = listen_socket(host, config.server.port if port is None else port,
                         listen_backlog(connection_cap(config.server.max_connections,
                                                       fd_limit())), reuse_port=reuse_port)
    try:
        current = await Generation.start(build(config), config.server, host,
                                         sock.getsockname()[1], sock=sock)
    except BaseException:
        sock.close()
        raise
    retiring: dict[Generation, asyncio.Task[DrainReport]] = {}
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
                nxt = await _reload(config, config_path, current, sock, build)
                if nxt is not None:
                    old, old_config = current, config
                    current, config = nxt
                    task = asyncio.create_task(old.retire(old_config.server.drain_s,
                                                          old_config.server.idle_timeout_s))
                    retiring[old] = task
                    task.add_done_callback(_forget(retiring, old))
    finally:
        sock.close()  # the listener closes with the current generation's duplicate (drain)
        for gen in retiring:  # SIGTERM while a generation retires: it drains too
            gen.hurry()
        await current.drain(config.server.drain_s)
        if retiring:
            await asyncio.gather(*retiring.values(), return_exceptions=True)


def _forget(retiring: dict[Generation, asyncio.Task[DrainReport]], gen: Generation
            ) -> Callable[[asyncio.Task[DrainReport]], None]:
    def done(task: asyncio.Task[DrainReport]) -> None:
        retiring.pop(gen, None)
    return done


async def _reload(config: RouterConfig, path: str | Path, current: Generation,
                  sock: socket.socket, build: Callable[[RouterConfig], web.Application]
                  ) -> tuple[Generation, RouterConfig] | None:
    """Validate the file again and start its generation on ``sock``; None (logged) when it
    cannot."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload refused, still serving the previous config: %s", exc)
        return None
    if (new.server.host, new.server.port) != (config.server.host, config.server.port):
        log.warning("reload: server.host/server.port changes need a restart; kept %s",
                    current.url)
    try:
        gen = await Generation.start(build(new), new.server, config.server.host,
                                     current.site.port, sock=sock)
    except OSError as exc:
        log.error("reload failed to listen, still serving the previous config: %s", exc)
        return None
    log.info("reloaded %s from %s", gen.url, path)
    return gen, new
