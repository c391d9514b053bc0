"""``lpu-bench instructions``: the proxies' instructions per request under callgrind.

Example::

    lpu-bench instructions --out-dir benchmarks/results      # ~6 minutes, needs valgrind

The stable figure of issue 11 on a shared machine, where wall-clock CPU per request moves by
20 % with other work (``lpu-bench overhead`` gives the wall-clock one). Per cell of the overhead
matrix ({non-streaming, streaming} x {40-character, 4 KB prompt}) and per proxy (the router, the
reference relay), the proxy runs under ``valgrind --tool=callgrind --separate-threads=yes`` in
front of the canned upstream. ``--warm`` requests go through first (imports, caches, the first
connections), then ``callgrind_control -z`` zeroes the counts, ``--requests`` requests go
through (8 in flight, a Python client), and ``callgrind_control -d`` dumps them: each thread's
instructions divided by ``--requests``. The router runs as ``lpu-bench overhead`` runs it
(admission ``timeline``, the default log level: its log listener's thread is counted apart),
with its ``/load`` polls and health probes an hour apart, so that only per-request work counts
(under valgrind a 50 ms poll lands every few requests), and ``OPENBLAS_NUM_THREADS=1`` (numpy's
idle BLAS thread spins under valgrind, not in production). Two runs of the same code differ by
up to ~2 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from benchmarks.machine import describe
from benchmarks.overhead.command import PROMPTS, body
from benchmarks.overhead.proxies import router_config, start_upstream
from benchmarks.processes import Service, start, url_in

__all__ = ["HELP", "Count", "configure", "execute", "per_thread", "ratio_table"]

HELP = "instructions per request of the router and the reference relay, under callgrind"
IN_FLIGHT = 8
_DUMP = re.compile(r"\.(\d+)-(\d+)$")
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Count:
    proxy: str
    stream: bool
    prompt: str
    requests: int
    threads: tuple[float, ...]
    """Instructions per request of each thread that ran any, largest first (the loop's)."""

    @property
    def total(self) -> float:
        return sum(self.threads)


def per_thread(dump_dir: Path, pid: int, requests: int, dump: int = 1) -> tuple[float, ...]:
    """Instructions per request of each thread in callgrind's dump number ``dump`` of process
    ``pid`` (files ``cg.PID.DUMP-THREAD``), largest first; threads under 1 per request (idle
    ones) are left out."""
    found: list[float] = []
    for path in dump_dir.glob(f"cg.{pid}.*"):
        m = _DUMP.search(path.name)
        if m is None or int(m.group(1)) != dump:
            continue
        total = _TOTAL.search(path.read_text(errors="replace"))
        if total is not None and int(total.group(1)) >= requests:
            found.append(int(total.group(1)) / requests)
    if not found:
        raise RuntimeError(f"no callgrind dump {dump} of process {pid} in {dump_dir}")
    return tuple(sorted(found, reverse=True))


async def _send(url: str, data: bytes, n: int) -> None:
    """``n`` POSTs, ``IN_FLIGHT`` at a time; each must answer 200 (a 429 is retried)."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            async with gate:
                for _ in range(20):
                    async with session.post(url + "/v1/chat/completions", data=data,
                                            headers=headers) as resp:
                        await resp.read()
                        if resp.status == 200:
                            return
                        if resp.status != 429:
                            raise RuntimeError(f"{url}: status {resp.status}")
                    await asyncio.sleep(0.05)
                raise RuntimeError(f"{url}: still refused after 20 tries")
        await asyncio.gather(*(one() for _ in range(n)))


def _under_callgrind(proxy: str, upstream: str, workdir: Path) -> Service:
    if proxy == "router":
        config = workdir / "router.toml"
        config.write_text(router_config(upstream).replace(
            "[admission]\n", "[admission]\nload_poll_interval_s = 3600\n")
            + "[health]\ninterval_s = 3600\n")
        cmd = [sys.executable, "-m", "router", "serve", str(config)]
    else:
        cmd = [sys.executable, "-m", "benchmarks.overhead.relay_reference", upstream]
    grind = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={workdir}/cg.%p"]
    return start(grind + cmd, name=proxy, ready_lines=1, timeout_s=300.0,
                 stderr=workdir / f"{proxy}.log",
                 env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))


def measure(proxy: str, stream: bool, prompt: str, upstream: str, warm: int, requests: int
            ) -> Count:
    """One proxy, one cell (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="lpu-instructions-") as tmp:
        workdir = Path(tmp)
        service = _under_callgrind(proxy, upstream, workdir)
        try:
            url = url_in(service.lines[0])
            data = body(stream, PROMPTS[prompt])
            asyncio.run(_send(url, data, warm))
            subprocess.run(["callgrind_control", "-z", str(service.pid)], check=True,
                           capture_output=True)
            asyncio.run(_send(url, data, requests))
            subprocess.run(["callgrind_control", "-d", str(service.pid)], check=True,
                           capture_output=True)
            threads = per_thread(workdir, service.pid, requests)
        finally:
            service.stop()
        return Count(proxy, stream, prompt, requests, threads)


def ratio_table(counts: list[Count]) -> list[str]:
    """Markdown rows: per cell, the relay's and the router's instructions per request and
    their ratio."""
    rows = ["| cell | relay | router: loop + other threads | router / relay |",
            "| --- | --- | --- | --- |"]
    for stream in (False, True):
        for prompt in PROMPTS:
            cell = {c.proxy: c for c in counts if c.stream == stream and c.prompt == prompt}
            if "router" not in cell or "relay" not in cell:
                continue
            router, relay = cell["router"], cell["relay"]
            parts = " + ".join(f"{t / 1e3:.1f}k" for t in router.threads)
            name = f"{'streaming' if stream else 'non-streaming'}, {prompt}"
            rows.append(f"| {name} | {relay.total / 1e3:.1f}k | {router.total / 1e3:.1f}k:"
                        f" {parts} | {router.total / relay.total:.2f} |")
    return rows


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warm", type=int, default=100, help="requests before counting")
    p.add_argument("--requests", type=int, default=400, help="requests counted")
    p.add_argument("--proxies", nargs="+", choices=["router", "relay"],
                   default=["router", "relay"])
    p.add_argument("--out-dir", type=Path, default=None,
                   help="write instructions.json and instructions.md here")


def execute(args: argparse.Namespace) -> int:
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"lpu-bench instructions: {tool} is not installed (Debian: valgrind)",
                  file=sys.stderr)
            return 2
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    counts: list[Count] = []
    with tempfile.TemporaryDirectory(prefix="lpu-instructions-up-") as tmp:
        upstream = start_upstream(Path(tmp))
        try:
            for stream in (False, True):
                for prompt in PROMPTS:
                    for proxy in args.proxies:
                        count = measure(proxy, stream, prompt, upstream.url, args.warm,
                                        args.requests)
                        counts.append(count)
                        print(f"{proxy} {'stream' if stream else 'json'} {prompt}:"
                              f" {count.total / 1e3:.1f}k per request"
                              f" ({' + '.join(f'{t / 1e3:.1f}k' for t in count.threads)})",
                              flush=True)
        finally:
            upstream.service.stop()
    table = ratio_table(counts)
    print("\n".join(table))
    if args.out_dir is not None:
        code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "unknown"
        doc = {"command": "lpu-bench instructions", "code": code, "started": started,
               "machine": describe(), "warm": args.warm, "requests": args.requests,
               "in_flight": IN_FLIGHT, "counts": [asdict(c) for c in counts]}
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "instructions.json").write_text(json.dumps(doc, indent=2) + "\n")
        (args.out_dir / "instructions.md").write_text(
            "# Instructions per request under callgrind: the router against the reference relay"
            f"\n\nCommand: `lpu-bench instructions`. Code: {code}. Started {started}.\n\n"
            f"{args.warm} requests to warm up, then {args.requests} counted, {IN_FLIGHT} in"
            " flight (a Python client), to the canned upstream; each thread's instructions"
            " divided by the requests counted (`benchmarks/overhead/instructions.py`). Target of"
            " issue 11: the router at most 1.5x the relay.\n\n" + "\n".join(table) + "\n")
    return 0
