"""Router RSS before, during and after N concurrent large request bodies (issue 10, defect 8).

    python3 benchmarks/body_rss.py [--bodies 200] [--mib 4] [--budget-mib 128]

Starts ``python -m router serve`` (from the current directory's ``router`` package) in front of
one in-process emulator, sends ``--bodies`` chat requests of ``--mib`` MiB each at once (valid
JSON padded with whitespace, so parsing is cheap and only the body's memory is measured), and
prints the router's VmRSS before, its peak while they run (sampled every 10 ms), and 1 s and 5 s
after the last answer, with the answers' statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import aiohttp

from benchmarks.processes import rss_kib, start, url_in
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

MODEL = "llama-3.1-8b-instant"


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


async def run(bodies: int, mib: int, budget_mib: int | None) -> None:
    size = mib * 1024 * 1024
    options = EmulatorOptions(artifact=builtin_artifact("llama-3.1-8b-2k"), time_scale=0.05)
    async with start_emulators(options, 1) as urls:
        server = f"max_body_bytes = {size}\n"
        if budget_mib is not None:
            server += f"max_body_memory_bytes = {budget_mib * 1024 * 1024}\n"
        cfg = Path(tempfile.mkdtemp()) / "router.toml"
        cfg.write_text(f'[server]\nport = 0\n{server}[admission]\nmode = "off"\n'
                       f'[[buckets]]\nname = "short"\nmodel = "{MODEL}"\n'
                       f'artifact = "llama-3.1-8b-2k"\nbackends = ["{urls[0]}"]\n')
        # In a thread: this loop serves the emulator the router probes while it starts.
        proc = await asyncio.to_thread(
            start, [sys.executable, "-m", "router", "--log-level", "WARNING", "serve", str(cfg)],
            name="router", ready_lines=1, stderr=None)
        url = url_in(proc.lines[0])
        raw = json.dumps({"model": MODEL, "max_tokens": 4,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()
        body = raw + b" " * (size - len(raw))
        await asyncio.sleep(1.0)
        before = rss_mib(proc.pid)
        peak = before
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mib(proc.pid))
                await asyncio.sleep(0.01)

        statuses: Counter[str] = Counter()

        async def one(session: aiohttp.ClientSession) -> None:
            try:
                async with session.post(url + "/v1/chat/completions", data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    data = await r.read()
                    code = json.loads(data)["error"]["code"] if r.status != 200 else ""
                    statuses[f"{r.status} {code}".strip()] += 1
            except aiohttp.ClientError as exc:
                statuses[type(exc).__name__] += 1

        sampler = asyncio.create_task(sample())
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(one(session) for _ in range(bodies)))
        done.set()
        await sampler
        await asyncio.sleep(1.0)
        after_1 = rss_mib(proc.pid)
        await asyncio.sleep(4.0)
        after_5 = rss_mib(proc.pid)
        await asyncio.to_thread(proc.stop)
        print(f"{bodies} x {mib} MiB, budget {budget_mib or 'default'} MiB: RSS before"
              f" {before:.1f} MiB, peak {peak:.1f} MiB, 1 s after {after_1:.1f} MiB, 5 s after"
              f" {after_5:.1f} MiB; answers {dict(statuses)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--bodies", type=int, default=200)
    p.add_argument("--mib", type=int, default=4)
    p.add_argument("--budget-mib", type=int, default=None)
    args = p.parse_args()
    import uvloop

    uvloop.run(run(args.bodies, args.mib, args.budget_mib))


if __name__ == "__main__":
    main()
