"""The supervisor of ``server.workers`` > 1 worker processes on one port.

``lpu-router serve CONFIG --workers N`` (or ``[server] workers = N``) makes the process
started a supervisor that serves no HTTP itself:

1. it reserves the port: a socket bound to ``server.host:server.port`` with ``SO_REUSEPORT``
   and never listening, so port 0 becomes a real port, no other program can take it, and no
   connection is ever queued on the supervisor (the kernel spreads connections over listening
   sockets only);
2. it makes the pod's prometheus multiprocess directory: a fresh temporary one, removed at
   exit, or the one ``PROMETHEUS_MULTIPROC_DIR`` names already, emptied first; its own series
   (``lpu_router_worker_restarts_total``, ``lpu_router_workers``) are written there too;
3. it starts worker ``0..N-1``, each ``python -m router worker CONFIG`` with
   ``PROMETHEUS_MULTIPROC_DIR`` in its environment (:mod:`router.worker_process`): each
   listens with ``SO_REUSEPORT`` on the reserved port and serves as a single process would.
   Once every worker said it serves, the supervisor prints ``lpu-router serving on URL``.

While it runs:

* a worker that exits unasked (a crash, a ``kill -9``, a config file made invalid meanwhile)
  is logged with its exit status, its live gauges are removed (``mark_process_dead``), it is
  counted in ``lpu_router_worker_restarts_total{worker}`` and started again after a backoff:
  :data:`BACKOFF_FIRST_S`, doubling up to :data:`BACKOFF_MAX_S`, back to the first once a
  worker has lived :data:`BACKOFF_RESET_S`;
* **SIGTERM / SIGINT**: SIGTERM to every worker (each drains, up to ``server.drain_s``); a
  worker still running :data:`DRAIN_MARGIN_S` after that is killed; the supervisor exits 0
  once every worker has exited;
* **SIGHUP**: the config file is validated first (invalid: the errors are logged, nothing
  changes), then every worker gets SIGHUP and reloads in place (no request is lost). A worker
  still starting gets it once it serves. A changed ``server.workers`` needs a restart (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from router.config import ConfigError, RouterConfig, limits_errors, load_config
from router.worker_process import READY_PREFIX

if TYPE_CHECKING:
    from router.metrics import SupervisorMetrics

__all__ = ["BACKOFF_FIRST_S", "BACKOFF_MAX_S", "BACKOFF_RESET_S", "DRAIN_MARGIN_S", "Backoff",
           "exit_status", "reserve_port", "supervise"]

log = logging.getLogger("lpu_router.workers")

BACKOFF_FIRST_S = 0.5
"""Seconds before a worker that exited is started again, the first time."""
BACKOFF_MAX_S = 30.0
"""The backoff doubles at each exit up to this (seconds)."""
BACKOFF_RESET_S = 60.0
"""A worker that lived this long (seconds) before exiting starts again after the first delay."""
DRAIN_MARGIN_S = 10.0
"""Seconds past ``server.drain_s`` a worker may take to finish its drain before it is killed
(the drain's own ends at the deadline take a few seconds)."""


@dataclass(slots=True)
class Backoff:
    """The delay before a worker's next start (seconds), by how long its last run lived."""

    first_s: float = BACKOFF_FIRST_S
    max_s: float = BACKOFF_MAX_S
    reset_after_s: float = BACKOFF_RESET_S
    _next_s: float = field(default=0.0, init=False)

    def after_exit(self, lived_s: float) -> float:
        """The delay before starting again a worker that exited after ``lived_s`` seconds."""
        if lived_s >= self.reset_after_s or self._next_s == 0.0:
            self._next_s = self.first_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


def exit_status(returncode: int) -> str:
    """``returncode`` in words: ``exit status 1``, ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, then given ``SO_REUSEPORT``, not listening (see the
    module doc); its ``getsockname()`` gives the port.

    Bound before ``SO_REUSEPORT`` is set: so the bind fails on a port any other socket holds
    (another pod's workers included) and port 0 picks one nobody holds, instead of sharing
    a port with another program's ``SO_REUSEPORT`` sockets; the workers, binding with
    ``SO_REUSEPORT`` after, may share it since this socket has it by then."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class _Worker:
    """One worker slot: the process running in it now, if any."""

    index: int
    backoff: Backoff = field(default_factory=Backoff)
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    reloads_seen: int = 0
    """The supervisor's reload count when this process started (its config is that one)."""


class _Supervisor:
    def __init__(self, config: RouterConfig, config_path: str | Path, *, port: int,
                 metrics_dir: str, metrics: SupervisorMetrics, log_level: str,
                 file_workers: int) -> None:
        self._config = config
        self._path = config_path
        self._port = port
        self._dir = metrics_dir
        self._metrics = metrics
        self._log_level = log_level
        self._count = config.server.workers
        self._file_workers = file_workers
        """``server.workers`` as the file said at the last (re)load (--workers may differ)."""
        self._workers = [_Worker(i) for i in range(self._count)]
        self._stopping = asyncio.Event()
        self._reloads = 0

    @property
    def url(self) -> str:
        return f"http://{self._config.server.host}:{self._port}"

    def _command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "router", "--log-level", self._log_level, "worker",
                str(self._path), "--index", str(index), "--workers", str(self._count),
                "--port", str(self._port), "--supervisor", str(os.getpid())]

    async def run(self, on_ready: Callable[[str], None] | None) -> None:
        loop = asyncio.get_running_loop()
        reload = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        keepers = [asyncio.create_task(self._keep(w), name=f"lpu-router-worker-{w.index}")
                   for w in self._workers]
        announce = asyncio.create_task(self._announce(on_ready))
        try:
            while not self._stopping.is_set():
                stopped = asyncio.ensure_future(self._stopping.wait())
                reloaded = asyncio.ensure_future(reload.wait())
                await asyncio.wait({stopped, reloaded}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                reloaded.cancel()
                if reload.is_set() and not self._stopping.is_set():
                    reload.clear()
                    self._reload()
        finally:
            self._stopping.set()
            announce.cancel()
            await self._stop_all()
            await asyncio.gather(*keepers, return_exceptions=True)

    async def _announce(self, on_ready: Callable[[str], None] | None) -> None:
        """The ready line, once every worker has served (the first start of each)."""
        await asyncio.gather(*(w.ready.wait() for w in self._workers))
        log.info("%d workers serving on %s", self._count, self.url)
        if on_ready is not None:
            on_ready(self.url)

    async def _keep(self, w: _Worker) -> None:
        """Run worker ``w`` until the supervisor stops, starting it again whenever it exits."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self._command(w.index), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, env={**os.environ,
                                                     "PROMETHEUS_MULTIPROC_DIR": self._dir})
            w.proc, w.started_at, w.reloads_seen = proc, loop.time(), self._reloads
            log.info("worker %d started (pid %d)", w.index, proc.pid)
            if self._stopping.is_set():  # the stop came while it was being started
                proc.terminate()
            reader = asyncio.create_task(self._read_ready(w, proc))
            code = await proc.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._dead(proc.pid)
            if self._stopping.is_set():
                log.info("worker %d (pid %d) exited: %s", w.index, proc.pid, exit_status(code))
                return
            delay = w.backoff.after_exit(loop.time() - w.started_at)
            log.error("worker %d (pid %d) exited unasked: %s; starting it again in %.1f s",
                      w.index, proc.pid, exit_status(code), delay)
            self._metrics.worker_restarts.labels(str(w.index)).inc()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def _read_ready(self, w: _Worker, proc: asyncio.subprocess.Process) -> None:
        """Wait for the worker's ready line (then send it a reload it missed), read to EOF."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if not line.decode(errors="replace").startswith(READY_PREFIX):
                continue
            first = not w.ready.is_set()
            w.ready.set()
            if not first:
                log.info("worker %d (pid %d) serving again", w.index, proc.pid)
            if w.reloads_seen != self._reloads and proc.returncode is None:
                proc.send_signal(signal.SIGHUP)  # its config file was read before the reload

    def _dead(self, pid: int) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self._dir)  # type: ignore[no-untyped-call]

    def _reload(self) -> None:
        try:
            new = load_config(self._path)
            problems = limits_errors(new.limits, self._count, new.admission)
            if problems:  # valid for the file's workers, not for the --workers running
                raise ConfigError(f"{self._path} with {self._count} workers", problems)
        except ConfigError as exc:
            log.error("reload refused, the workers keep the previous config: %s", exc)
            return
        if new.server.workers != self._file_workers:
            log.warning("reload: server.workers %d -> %d needs a restart; still %d workers",
                        self._file_workers, new.server.workers, self._count)
            self._file_workers = new.server.workers
        self._config = new
        self._reloads += 1
        for w in self._workers:
            proc = w.proc
            if proc is not None and proc.returncode is None and w.ready.is_set():
                w.reloads_seen = self._reloads
                proc.send_signal(signal.SIGHUP)
        log.info("reload: SIGHUP sent to the workers (%s)", self._path)

    async def _stop_all(self) -> None:
        """SIGTERM every worker, wait for each, kill one that overstays its drain."""
        procs = [w.proc for w in self._workers if w.proc is not None
                 and w.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        limit = self._config.server.drain_s + DRAIN_MARGIN_S
        deadline = asyncio.get_running_loop().time() + limit
        for proc in procs:  # one deadline for all: they drain at the same time
            try:
                async with asyncio.timeout_at(deadline):
                    await proc.wait()
            except TimeoutError:
                log.error("worker pid %d still running %.0f s after SIGTERM: killed",
                          proc.pid, limit)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def _file_workers(path: str | Path, config: RouterConfig) -> int:
    """``server.workers`` as the file says (``--workers`` may have overridden ``config``'s)."""
    try:
        return load_config(path).server.workers
    except ConfigError:  # changed since it was read: the next reload says what is wrong
        return config.server.workers


def _metrics_dir(given: str | None) -> tuple[str, bool]:
    """The pod's multiprocess directory and whether it is ours to remove at exit."""
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for f in path.glob("*.db"):  # a previous pod's series would add up with ours
            f.unlink()
        return str(path), False
    return tempfile.mkdtemp(prefix="lpu-router-metrics-"), True


async def supervise(config: RouterConfig, config_path: str | Path, *, log_level: str = "INFO",
                    on_ready: Callable[[str], None] | None = None,
                    metrics_dir: str | None = None) -> None:
    """Run ``config.server.workers`` workers of ``config_path`` until SIGTERM/SIGINT.

    ``metrics_dir``: ``PROMETHEUS_MULTIPROC_DIR`` as the environment gave it (None: a fresh
    temporary directory). prometheus-client must not have been imported yet in this process:
    it picks its multiprocess mode at import."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("the worker supervisor must start before prometheus_client is"
                           " imported (it reads PROMETHEUS_MULTIPROC_DIR at import)")
    sock = reserve_port(config.server.host, config.server.port)
    path, ours = _metrics_dir(metrics_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        from router.metrics import make_supervisor_metrics

        metrics = make_supervisor_metrics(config.server.workers)
        port = int(sock.getsockname()[1])
        supervisor = _Supervisor(config, config_path, port=port, metrics_dir=path,
                                 metrics=metrics, log_level=log_level,
                                 file_workers=_file_workers(config_path, config))
        started = time.monotonic()
        await supervisor.run(on_ready)
        log.info("all %d workers exited after %.1f s", config.server.workers,
                 time.monotonic() - started)
    finally:
        sock.close()
        if ours:
            shutil.rmtree(path, ignore_errors=True)
