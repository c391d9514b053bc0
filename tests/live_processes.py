"""The router and the emulator as real processes, the way production runs them (uvloop, their
own CLI, their own signals), for tests that make a claim about processes.

``router_process(config_path)`` runs ``python -m router serve CONFIG`` and yields the process and
its port once it prints its address; ``emulator_process(...)`` runs ``python -m lpu_emulator``
and yields the replicas' base URLs once each printed its own. Both are killed if still running
when the block ends, and their stderr can be read afterwards (``proc.stderr``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

__all__ = ["emulator_process", "router_process", "stop"]

_START_S = 20.0


@contextlib.asynccontextmanager
async def router_process(config: Path, *args: str, log_level: str = "INFO"
                         ) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``lpu-router serve config`` in its own process; yields (process, port)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--log-level", log_level, "serve", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), _START_S)).decode()
        if not line.startswith("lpu-router serving on http://"):
            err = b"" if proc.stderr is None else await proc.stderr.read()
            raise AssertionError(f"router did not start: {line!r} {err.decode()[-2000:]}")
        yield proc, int(line.strip().rsplit(":", 1)[1])
    finally:
        await stop(proc, kill=True)


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
