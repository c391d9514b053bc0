"""Closed-loop load for ``lpu-bench overhead``: wrk when installed, a Python client otherwise.

:func:`drive` sends the same POST body over ``connections`` keep-alive connections for
``duration_s`` seconds and returns a :class:`Load`: responses with a 2xx status, everything
else (non-2xx, socket errors, timeouts), the elapsed time and the latency quantiles.

wrk (one thread: the machine's other core is the proxy's) gets its body and its report from a
generated Lua script; the report is one JSON line printed by the script's ``done`` hook, so no
human-readable output is parsed. The Python client (aiohttp on uvloop, in this process) cannot
saturate a fast proxy: its figures are a lower bound on throughput, which the report says.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from benchmarks.run_command import run_async

__all__ = ["PATH", "Load", "drive", "warm_up", "wrk_path", "wrk_version"]

PATH = "/v1/chat/completions"
_MARK = "OVERHEAD-RESULT "
_LUA = """wrk.method = "POST"
wrk.path = "{path}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"responses": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d,'
    .. ' "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    requests: int
    """Responses with a 2xx status."""
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version(binary: str) -> str:
    """E.g. ``debian/4.1.0-3+b2 [epoll]`` (the first line of ``wrk -v``, without the name and
    the copyright)."""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()[0]
    return first.split(" Copyright", 1)[0].removeprefix("wrk ").strip()


def drive(url: str, body: bytes, *, connections: int, duration_s: int, workdir: Path,
          wrk: str | None) -> Load:
    """``connections`` closed loops posting ``body`` to ``url + PATH`` (see module doc)."""
    if wrk is not None:
        return _wrk(wrk, url, body, connections, duration_s, workdir)
    return run_async(_python(url, body, connections, duration_s))


def _wrk(binary: str, url: str, body: bytes, connections: int, duration_s: int,
         workdir: Path) -> Load:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the body would end the Lua long string early")
    script = workdir / "overhead.lua"
    script.write_text(_LUA.format(path=PATH, body=text, mark=_MARK))
    cmd = [binary, "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "10s",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         timeout=duration_s + 60)
    for line in out.stdout.splitlines():
        if line.startswith(_MARK):
            r = json.loads(line.removeprefix(_MARK))
            errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
            return Load(requests=r["responses"] - r["status"], errors=errors + r["status"],
                        duration_s=r["duration_us"] / 1e6, p50_ms=r["p50_us"] / 1e3,
                        p99_ms=r["p99_us"] / 1e3)
    raise RuntimeError(f"wrk printed no result: {out.stdout!r} {out.stderr!r}")


async def _python(url: str, body: bytes, connections: int, duration_s: float) -> Load:
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        end = started + duration_s

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    async with session.post(url + PATH, data=body, headers=headers) as r:
                        await r.read()
                        ok = 200 <= r.status < 300
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    lat = np.array(latencies or [float("nan")]) * 1e3
    return Load(len(latencies), errors, elapsed, float(np.percentile(lat, 50)),
                float(np.percentile(lat, 99)))


def warm_up(url: str, body: bytes, requests: int, timeout_s: float = 30.0) -> None:
    """Send until one answer is 2xx (the router's first health probe may still be due), then
    ``requests`` more over one connection; raise RuntimeError when none succeeds in time."""
    run_async(_warm_up(url, body, requests, timeout_s))


async def _warm_up(url: str, body: bytes, requests: int, timeout_s: float) -> None:
    headers = {"Content-Type": "application/json"}
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        last = ""
        while True:
            try:
                async with session.post(url + PATH, data=body, headers=headers) as r:
                    last = f"{r.status} {(await r.read())[:200]!r}"
                    if 200 <= r.status < 300:
                        break
            except aiohttp.ClientError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} answered no completion in {timeout_s} s: {last}")
            await asyncio.sleep(0.05)
        for _ in range(requests):
            async with session.post(url + PATH, data=body, headers=headers) as r:
                await r.read()
