"""A real Prometheus server for the live deploy tests, and the client-side load they offer.

:func:`prometheus` runs Debian's ``prometheus`` on loopback with a given config (skipped, or
failed under ``LPU_REQUIRE_PROMETHEUS=1``, when it is not installed) and always stops it;
:func:`query` asks its HTTP API; :func:`streaming_client` is one closed-loop OpenAI client.
Used by ``test_prometheus_live.py`` (one router process) and ``test_prometheus_workers.py`` (a
router with worker processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from deploy_support import require_tool

__all__ = ["free_port", "has_finite", "prometheus", "query", "scalar", "streaming_client",
           "wait_ready"]


def free_port() -> int:
    """A free loopback port. Prometheus takes its listen address on the command line, so it
    needs a number; the window between closing and its bind is harmless on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def prometheus(tmp: Path, config: dict[str, Any]) -> AsyncIterator[str]:
    """Run a Prometheus server on loopback; yield its base URL; always stop it."""
    binary = require_tool("prometheus")
    config_file = tmp / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), "utf-8")
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        stdout=log, stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def wait_ready(session: aiohttp.ClientSession, prom: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{prom}/-/ready") as resp:
                if resp.status == 200:
                    return
        assert time.monotonic() < deadline, "Prometheus did not become ready"
        await asyncio.sleep(0.2)


async def query(session: aiohttp.ClientSession, prom: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector ``expr`` evaluates to now."""
    async with session.get(f"{prom}/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def scalar(session: aiohttp.ClientSession, prom: str, expr: str) -> float | None:
    """The value of a one-series ``expr`` (e.g. a ``sum(...)``), None while it has none."""
    result = await query(session, prom, expr)
    assert len(result) <= 1, f"{expr}: {result}"
    return float(result[0]["value"][1]) if result else None


def has_finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


async def streaming_client(session: aiohttp.ClientSession, url: str, model: str, pause_s: float,
                           stop: asyncio.Event, statuses: list[int]) -> None:
    """One closed-loop client: streaming requests until ``stop``, pausing between them; the
    status of every answer read to its end is appended to ``statuses``."""
    body = {"model": model, "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": "Say something short."}]}
    while not stop.is_set():
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            await resp.read()
            statuses.append(resp.status)
        await asyncio.sleep(pause_s)


async def await_data(session: aiohttp.ClientSession, prom: str, queries: Mapping[str, str],
                     clients: list[asyncio.Task[None]], deadline_s: float) -> None:
    """Query every expression of ``queries`` once a second until each returns a finite value,
    for at most ``deadline_s``; a load client that died meanwhile raises its error. Fails the
    test naming the queries that never returned data."""
    missing = dict(queries)
    deadline = time.monotonic() + deadline_s
    while missing and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        for where, expr in list(missing.items()):
            if has_finite(await query(session, prom, expr)):
                del missing[where]
        for task in clients:
            if task.done():
                task.result()  # a client that died: show why
    assert not missing, f"no data for: {sorted(missing)}"
