"""The router and the emulator as real processes, the way production runs them (uvloop, their
own CLI, their own signals), for tests that make a claim about processes.

``served_router(config_path)`` runs ``python -m router serve CONFIG`` and yields a
:class:`Served` (process, port, the lines it logged) once it prints its address
(``router_process`` yields just process and port); ``emulator_process(...)`` runs
``python -m lpu_emulator`` and yields the replicas' base URLs once each printed its own. Both are
killed if still running when the block ends. :func:`config_toml` writes the usual one-bucket
config for such a router. (``tests/conftest.py`` offers them as fixtures too.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Served", "StartEmulatorProcess", "StartRouterProcess", "config_toml",
           "emulator_process", "per_worker", "pod_workers", "router_process", "served_router",
           "stop"]

_START_S = 20.0


@dataclass
class Served:
    """A router process and what it logged so far."""

    proc: asyncio.subprocess.Process
    port: int
    log: list[str] = field(default_factory=list)
    """Lines of the router's stderr so far (read while it runs: a full pipe never blocks it)."""

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.log if needle in line]

    def access(self) -> list[dict[str, Any]]:
        """The access log's JSON lines so far."""
        return [json.loads(line) for line in self.log if line.startswith('{"ts"')]


StartRouterProcess = Callable[..., Awaitable["Served"]]
"""The ``router_process`` fixture: ``await router_process(config, *args, log_level=...)``."""
StartEmulatorProcess = Callable[..., Awaitable[list[str]]]
"""The ``emulator_process`` fixture: ``await emulator_process(artifact, replicas=...)``."""


def config_toml(backends: list[str], *, server: dict[str, Any] | None = None,
                bucket: dict[str, Any] | None = None, admission: str = "off") -> str:
    """One bucket ``short`` of MODEL over ``backends``, on port 0 (TOML text)."""
    from stack import ARTIFACT, MODEL  # here: the process helpers need no router import

    def table(values: dict[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    return ("[server]\n" + table({"host": "127.0.0.1", "port": 0, **(server or {})})
            + f"[admission]\nmode = \"{admission}\"\n[health]\ninterval_s = 0.2\n"
            + "[[buckets]]\n" + table({"name": "short", "model": MODEL, "artifact": ARTIFACT,
                                       "backends": backends, **(bucket or {})}))


def _limit_files(soft: int, hard: int | None) -> Callable[[], None]:
    def apply() -> None:
        _, now = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, now if hard is None else hard))
    return apply


@contextlib.asynccontextmanager
async def served_router(config: Path, *args: str, log_level: str = "INFO",
                        files: tuple[int, int | None] | None = None) -> AsyncIterator[Served]:
    """``python -m router serve config``; ``files``: its (soft, hard) ``RLIMIT_NOFILE`` at
    exec (hard None: unchanged). Killed at the end if still running, with every process of its
    session (its workers, under ``--workers``)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--log-level", log_level, "serve", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=None if files is None else _limit_files(*files), start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    served = Served(proc, 0)
    stderr = proc.stderr

    async def collect() -> None:
        while line := await stderr.readline():
            served.log.append(line.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(collect())
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), _START_S)).decode()
        assert line.startswith("lpu-router serving on http://"), (line, served.log[-20:])
        served.port = int(line.strip().rsplit(":", 1)[1])
        yield served
    finally:
        await stop(proc, kill=True)
        # Workers hold the supervisor's stderr: a killed supervisor's workers drain on their
        # own (PR_SET_PDEATHSIG), and until they end the reader waits on an open pipe (a test
        # that failed or skipped early then closed its loop with the pipe still open).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader, 5)


@contextlib.asynccontextmanager
async def router_process(config: Path, *args: str, log_level: str = "INFO"
                         ) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """:func:`served_router`, yielding just (process, port)."""
    async with served_router(config, *args, log_level=log_level) as served:
        yield served.proc, served.port


@contextlib.asynccontextmanager
async def emulator_process(artifact: str = "llama-3.1-8b-2k", *, replicas: int = 1,
                           time_scale: float = 0.05, extra: Sequence[str] = ()
                           ) -> AsyncIterator[list[str]]:
    """``lpu-emulator`` serving ``replicas`` backends on ephemeral ports; yields their URLs."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lpu_emulator", "--artifact", artifact, "--port", "0",
        "--replicas", str(replicas), "--time-scale", str(time_scale), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        urls: list[str] = []
        while len(urls) < replicas:
            line = (await asyncio.wait_for(proc.stdout.readline(), _START_S)).decode()
            if not line:
                err = b"" if proc.stderr is None else await proc.stderr.read()
                raise AssertionError(f"emulator did not start: {err.decode()[-2000:]}")
            urls.append(line.strip().rsplit(" at ", 1)[1].removesuffix("/v1"))
        yield urls
    finally:
        await stop(proc, kill=True)


async def stop(proc: asyncio.subprocess.Process, *, kill: bool = False) -> int:
    """End ``proc`` (SIGTERM, or SIGKILL with ``kill``) and wait for it; its exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill() if kill else proc.terminate()
    return await proc.wait()


async def per_worker(port: int, path: str, count: int, *, tries: int = 400
                     ) -> dict[int, dict[str, Any]]:
    """The JSON each of a ``--workers count`` router's workers answers on ``path`` (an
    ``/admin`` path: it says which worker answered), by worker index, each asked on a fresh
    connection (the kernel spreads connections over the workers' ``SO_REUSEPORT`` sockets)
    until every index answered (at most ``tries`` connections)."""
    import aiohttp

    answers: dict[int, dict[str, Any]] = {}
    for _ in range(tries):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, \
                s.get(f"http://127.0.0.1:{port}{path}") as r:
            body = await r.json()
            worker = body["worker"]
            assert r.headers["x-lpu-worker"] == f"{worker['index']}; pid={worker['pid']}"
            answers[worker["index"]] = body
        if len(answers) == count:
            return answers
    raise AssertionError(f"only workers {sorted(answers)} of {count} answered in {tries} tries")


async def pod_workers(port: int, count: int) -> dict[int, int]:
    """The pids of a ``--workers count`` router's workers by index (:func:`per_worker`)."""
    answers = await per_worker(port, "/admin/backends", count)
    return {i: body["worker"]["pid"] for i, body in answers.items()}
