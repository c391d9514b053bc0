"""``lpu-router serve`` as a real subprocess (uvloop, its own signals and limits) for the
listener, drain and reload tests, with its stderr collected while it runs (a router that logs a
lot must never block on a full pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reliability_harness import ARTIFACT, MODEL

__all__ = ["Served", "config_toml", "http_exchange", "served_router"]


def config_toml(backends: list[str], *, server: dict[str, Any] | None = None,
                bucket: dict[str, Any] | None = None) -> str:
    """One bucket ``short`` of MODEL over ``backends``, admission ``off``, on port 0."""
    def table(values: dict[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    return ("[server]\n" + table({"host": "127.0.0.1", "port": 0, **(server or {})})
            + "[admission]\nmode = \"off\"\n[health]\ninterval_s = 0.2\n"
            + "[[buckets]]\n" + table({"name": "short", "model": MODEL, "artifact": ARTIFACT,
                                       "backends": backends, **(bucket or {})}))


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    port: int
    log: list[str] = field(default_factory=list)
    """Lines of the router's stderr so far."""

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.log if needle in line]

    def access(self) -> list[dict[str, Any]]:
        """The access log's JSON lines so far."""
        return [json.loads(line) for line in self.log if line.startswith('{"ts"')]


def _limit_files(soft: int, hard: int | None) -> Callable[[], None]:
    def apply() -> None:
        _, now = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, now if hard is None else hard))
    return apply


@contextlib.asynccontextmanager
async def served_router(config: Path, *, files: tuple[int, int | None] | None = None
                        ) -> AsyncIterator[Served]:
    """``python -m router serve config``; ``files``: its (soft, hard) ``RLIMIT_NOFILE`` at
    exec (hard None: unchanged). Killed at the end if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--log-level", "INFO", "serve", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=None if files is None else _limit_files(*files))
    assert proc.stdout is not None and proc.stderr is not None
    served = Served(proc, 0)
    stderr = proc.stderr

    async def collect() -> None:
        while line := await stderr.readline():
            served.log.append(line.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(collect())
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("lpu-router serving on http://"), (line, served.log[-20:])
        served.port = int(line.strip().rsplit(":", 1)[1])
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader, 5)


def post_bytes(body: dict[str, Any] | bytes, *, path: str = "/v1/chat/completions",
               extra: str = "") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n").encode() + data


async def http_exchange(port: int, request: bytes, *, timeout_s: float = 15.0) -> bytes:
    """Send ``request`` on a new connection and read until the router closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
