"""``lpu-bench client-cost``: CPU per request of the router's backend client against aiohttp's.

Example::

    lpu-bench client-cost --out-dir benchmarks/results      # ~1 minute

Why the router has its own client (:mod:`router.backend_http`) on the completion path, as a
figure: one process (uvloop) sends ``--requests`` POSTs, 8 in flight, to the canned upstream
(its own process) through each client in turn, ``--rounds`` times alternating, and reads its own
CPU time (``time.process_time``) per request. aiohttp's ``ClientSession`` is set up as the
router had it (``TCPConnector(limit=0)``, no cookie jar, no decompression, a connect and a read
timeout); both read a non-streamed answer whole and a stream with ``readany``. The ratio is
taken within a round; the table gives the median over rounds [min to max]. Every answer must be
a 200 with the whole body, or the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

from benchmarks.machine import describe
from benchmarks.overhead.command import PROMPTS, body
from benchmarks.overhead.proxies import start_upstream
from router.backend_http import BackendClient, Response

__all__ = ["HELP", "configure", "execute", "run"]

HELP = "CPU per request of the router's backend client against aiohttp's ClientSession"
IN_FLIGHT = 8
CLIENTS = ("aiohttp", "backend_http")
_HEADERS = [("x-request-id", "client-cost"), ("Content-Type", "application/json"),
            ("Accept-Encoding", "identity")]

Send = Callable[[], Awaitable[int]]


async def _consume(resp: aiohttp.ClientResponse | Response, stream: bool, name: str) -> int:
    """Read ``resp`` as the router does (a stream by ``readany``, an answer whole); its size."""
    n = 0
    if stream:
        while chunk := await resp.content.readany():
            n += len(chunk)
    else:
        n = len(await resp.read())
    resp.close()
    if resp.status != 200:
        raise RuntimeError(f"{name}: status {resp.status}")
    return n


def _senders(session: aiohttp.ClientSession, client: BackendClient, url: str, data: bytes,
             stream: bool) -> dict[str, Send]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=60.0)

    async def by_aiohttp() -> int:
        resp = await session.post(url, data=data, headers=_HEADERS, timeout=timeout)
        return await _consume(resp, stream, "aiohttp")

    async def by_backend_http() -> int:
        return await _consume(await client.post(url, data, _HEADERS), stream, "backend_http")
    return {"aiohttp": by_aiohttp, "backend_http": by_backend_http}


async def _cpu_per_request(send: Send, n: int) -> tuple[float, set[int]]:
    """CPU seconds of this process per request over ``n`` requests, and the body sizes seen."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    sizes: set[int] = set()

    async def one() -> None:
        async with gate:
            sizes.add(await send())
    start = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    return (time.process_time() - start) / n, sizes


async def run(upstream: str, requests: int, rounds: int) -> list[dict[str, object]]:
    """Per cell, per round: each client's CPU per request (see the module docstring)."""
    url = upstream + "/v1/chat/completions"
    rows: list[dict[str, object]] = []
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        client = BackendClient(connect_s=2.0, read_s=60.0, keepalive_s=4.0)
        try:
            for stream in (False, True):
                for prompt, text in PROMPTS.items():
                    data = body(stream, text)
                    senders = _senders(session, client, url, data, stream)
                    for send in senders.values():  # connections, caches
                        await _cpu_per_request(send, max(IN_FLIGHT, requests // 10))
                    for r in range(rounds):
                        cpu: dict[str, float] = {}
                        for name, send in senders.items():
                            cpu[name], sizes = await _cpu_per_request(send, requests)
                            if len(sizes) != 1:
                                raise RuntimeError(f"{name}: bodies of sizes {sorted(sizes)}")
                        rows.append({"stream": stream, "prompt": prompt, "round": r,
                                     "requests": requests, **{f"{k}_cpu_s": v
                                                              for k, v in cpu.items()}})
        finally:
            client.close()
    return rows


def table(rows: list[dict[str, object]]) -> list[str]:
    out = ["| cell | aiohttp CPU per request | backend_http CPU per request |"
           " backend_http / aiohttp [min-max] |", "| --- | --- | --- | --- |"]
    for stream in (False, True):
        for prompt in PROMPTS:
            cell = [r for r in rows if r["stream"] == stream and r["prompt"] == prompt]
            if not cell:
                continue
            a = [float(str(r["aiohttp_cpu_s"])) for r in cell]
            b = [float(str(r["backend_http_cpu_s"])) for r in cell]
            ratios = [y / x for x, y in zip(a, b, strict=True)]
            name = f"{'streaming' if stream else 'non-streaming'}, {prompt}"
            out.append(f"| {name} | {statistics.median(a) * 1e6:.1f} us |"
                       f" {statistics.median(b) * 1e6:.1f} us | {statistics.median(ratios):.2f}"
                       f" [{min(ratios):.2f}-{max(ratios):.2f}] |")
    return out


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=10000, help="requests per client per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="write client_cost.json and client_cost.md here")


def execute(args: argparse.Namespace) -> int:
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="lpu-client-cost-") as tmp:
        upstream = start_upstream(Path(tmp))
        try:
            rows = uvloop.run(run(upstream.url, args.requests, args.rounds))
        finally:
            upstream.service.stop()
    lines = table(rows)
    machine = describe()
    print("\n".join(lines))
    if args.out_dir is not None:
        doc = {"command": "lpu-bench client-cost", "started": started, "machine": machine,
               "in_flight": IN_FLIGHT, "rows": rows}
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "client_cost.json").write_text(json.dumps(doc, indent=2) + "\n")
        (args.out_dir / "client_cost.md").write_text(
            "# CPU per request: the router's backend client against aiohttp's ClientSession\n\n"
            f"Command: `lpu-bench client-cost --requests {args.requests} --rounds"
            f" {args.rounds}`. Started {started}. {machine['nproc']} cores, {machine['cpu']},"
            f" Python {machine['python']}.\n\n"
            f"One process, {IN_FLIGHT} in flight, to the canned upstream; CPU of the client's"
            " process per request, medians over the rounds"
            " (`benchmarks/overhead/client_cost.py`).\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(execute(argparse.Namespace(requests=2000, rounds=1, out_dir=None)))
