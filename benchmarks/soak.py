"""``lpu-bench soak``: minutes of mixed load with backend faults and client disconnects, then a
reconciliation of every request sent.

Example::

    lpu-bench soak --duration 180 --rate 30 --out benchmarks/results/soak.json

Setup: emulated backends in this process (buckets ``short`` = ``llama-3.1-8b-2k`` and
``medium`` = ``llama-3.1-8b-8k``, two replicas each, ``--time-scale``), the router as a
subprocess (``lpu-router serve``, admission ``timeline``). Load: Poisson arrivals at
``--rate``; each request is chat or legacy, streaming or not, at a random priority
(``x-priority``), sized for either bucket. Faults: every few seconds one emulator gets a random
mix of ``/admin/faults`` (5xx, stalls, crashes, garbage, error frames) for a few seconds, then is
healed. Disconnects: a ``--disconnect`` fraction of clients leave at a random moment (while
waiting, or mid-stream).

At the end (load stopped, the router settled) the router's ``/metrics`` is read and reconciled:

    unaccounted = sent - (completed + failed + cancelled + rejected)    (server side; must be 0)

plus the client-side view of the same requests, the in-flight gauge (must be 0) and the router
process's resident memory at the start (after a warm-up) and at the end. Exit status 1 when
anything is unaccounted or still in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.processes import Service, rss_kib, start, url_in
from lpu_emulator.server import EmulatorOptions, start_emulators
from lpu_protocol.artifact import builtin_artifact

__all__ = ["HELP", "configure", "execute", "server_counts", "soak"]

HELP = "mixed load with injected faults and client disconnects; reconcile every request"
MODEL = "llama-3.1-8b-instant"
BUCKETS = (("short", "llama-3.1-8b-2k"), ("medium", "llama-3.1-8b-8k"))
HEALED = {"error_rate": 0.0, "stall_rate": 0.0, "crash_rate": 0.0, "garbage_rate": 0.0,
          "stream_error_rate": 0.0}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    p.add_argument("--rate", type=float, default=30.0, help="requests per second (Poisson)")
    p.add_argument("--disconnect", type=float, default=0.1,
                   help="fraction of clients that leave early")
    p.add_argument("--time-scale", type=float, default=0.5,
                   help="emulated durations multiplied by this")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")


def _config(backends: dict[str, list[str]], time_scale: float) -> str:
    out = ['[server]\nhost = "127.0.0.1"\nport = 0\ndrain_s = 5.0\n',
           '[admission]\nmode = "timeline"\n',
           "[health]\ninterval_s = 0.5\neject_after_failures = 3\neject_for_s = 1.0\n",
           "[timeouts]\nread_s = 3.0\n"]
    for name, artifact in BUCKETS:
        urls = ", ".join(f'"{u}"' for u in backends[name])
        prefill = builtin_artifact(artifact).prefill_s * time_scale
        out.append(f'[[buckets]]\nname = "{name}"\nmodel = "{MODEL}"\nartifact = "{artifact}"\n'
                   f"time_scale = {time_scale}\nbackends = [{urls}]\n"
                   f"ttft_slo_s = {max(0.05, prefill * 6):.4f}\n")
    return "\n".join(out)


@contextlib.asynccontextmanager
async def _router(config: str) -> AsyncIterator[tuple[Service, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "router.toml"
        path.write_text(config)
        # In a thread: this loop serves the emulators the router probes while it starts.
        router = await asyncio.to_thread(
            start, [sys.executable, "-m", "router", "--log-level", "WARNING", "serve", str(path)],
            name="router", ready_lines=1)
        try:
            line = router.lines[0]
            if not line.startswith("lpu-router serving on "):
                raise RuntimeError(f"the router did not start: {line!r}")
            yield router, url_in(line)
        finally:
            await asyncio.to_thread(router.stop)


def _body(rng: np.random.Generator) -> tuple[str, dict[str, Any]]:
    words = int(rng.choice([20, 200, 2500]))
    max_tokens = int(rng.choice([16, 128, 512]))
    stream = bool(rng.random() < 0.6)
    text = "word " * words
    if rng.random() < 0.7:
        return "/v1/chat/completions", {
            "model": MODEL, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": text}]}
    return "/v1/completions", {"model": MODEL, "max_tokens": max_tokens, "stream": stream,
                               "prompt": text}


async def _one(session: aiohttp.ClientSession, url: str, rng: np.random.Generator,
               leave_after_s: float | None) -> str:
    """Send one request; its client-side outcome."""
    path, body = _body(rng)
    headers = {"x-priority": str(rng.choice(["interactive", "standard", "batch"]))}
    try:
        async with asyncio.timeout(leave_after_s), session.post(url + path, json=body,
                                                                 headers=headers) as r:
            data = await r.read()
            if r.status in (429,) or (r.status == 503 and b"no_backend" in data):
                return "rejected"
            if r.status >= 400:
                return "failed"
            if body["stream"] and (b'"error"' in data or not data.endswith(b"[DONE]\n\n")):
                return "failed"
            return "completed"
    except TimeoutError:
        return "cancelled"
    except aiohttp.ClientError:
        return "failed"


async def _faults(backends: list[str], rng: np.random.Generator, stop: asyncio.Event) -> int:
    """Break one backend at a time, at random; heal it. Returns how many fault windows ran."""
    windows = 0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), float(rng.uniform(1.0, 4.0)))
            if stop.is_set():
                break
            target = str(rng.choice(backends))
            faults = {"error_rate": float(rng.choice([0.1, 0.5])),
                      "stall_rate": float(rng.choice([0.0, 0.3])), "stall_s": 0.5,
                      "crash_rate": float(rng.choice([0.1, 0.3])),
                      "garbage_rate": float(rng.choice([0.0, 0.2])),
                      "stream_error_rate": float(rng.choice([0.0, 0.2])),
                      "crash_after_tokens": int(rng.integers(1, 8))}
            await s.post(target + "/admin/faults", json=faults)
            windows += 1
            await asyncio.sleep(float(rng.uniform(1.0, 3.0)))
            await s.post(target + "/admin/faults", json=HEALED)
    return windows


def server_counts(text: str) -> dict[str, Any]:
    """The router's pod-wide books from a ``/metrics`` text: admitted, in flight, received
    (``/v1/`` routes but models), finished by outcome and rejected by reason."""
    out: dict[str, Any] = {"admitted": 0.0, "in_flight": 0.0, "received": 0.0,
                           "finished": Counter(), "rejected": Counter()}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "lpu_router_requests_admitted_total":
                out["admitted"] += s.value
            elif s.name == "lpu_router_requests_finished_total":
                out["finished"][s.labels["outcome"]] += s.value
            elif s.name == "lpu_router_requests_rejected_total":
                out["rejected"][s.labels["reason"]] += s.value
            elif s.name == "lpu_router_in_flight":
                out["in_flight"] += s.value
            elif s.name == "lpu_router_requests_received_total" and \
                    s.labels["route"].startswith("/v1/") and "models" not in s.labels["route"]:
                out["received"] += s.value
    return out


async def soak(*, duration: float, rate: float, disconnect: float, time_scale: float,
               seed: int) -> dict[str, Any]:
    """Run the soak; return its figures (see the module docstring)."""
    rng = np.random.default_rng(seed)
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, list[str]] = {}
        for name, artifact in BUCKETS:
            options = EmulatorOptions(artifact=builtin_artifact(artifact), time_scale=time_scale,
                                      seed=seed)
            backends[name] = await stack.enter_async_context(start_emulators(options, 2))
        proc, url = await stack.enter_async_context(_router(_config(backends, time_scale)))
        session = await stack.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0)))
        await asyncio.sleep(1.0)  # warm-up: imports and first probes done
        rss_start = rss_kib(proc.pid)
        stop = asyncio.Event()
        faults = asyncio.create_task(_faults([u for us in backends.values() for u in us],
                                             rng, stop))
        tasks: list[asyncio.Task[str]] = []
        started = time.monotonic()
        next_at = started
        while next_at - started < duration:
            leave = float(rng.uniform(0.02, 0.6)) if rng.random() < disconnect else None
            tasks.append(asyncio.create_task(_one(session, url, rng, leave)))
            next_at += float(rng.exponential(1.0 / rate))
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        client = Counter(await asyncio.gather(*tasks))
        stop.set()
        windows = await faults
        text = ""
        for _ in range(100):  # let the router see every disconnect
            async with session.get(url + "/metrics") as r:
                text = await r.text()
            server = server_counts(text)
            if server["in_flight"] == 0:
                break
            await asyncio.sleep(0.1)
        rss_end = rss_kib(proc.pid)
    fin = server["finished"]
    rejected = sum(server["rejected"].values())
    accounted = fin["completed"] + fin["failed"] + fin["cancelled"] + rejected
    sent = len(tasks)
    return {
        "duration_s": duration, "rate_per_s": rate, "disconnect_fraction": disconnect,
        "time_scale": time_scale, "seed": seed, "fault_windows": windows,
        "sent": sent, "received": int(server["received"]),
        "server": {"admitted": int(server["admitted"]), "completed": int(fin["completed"]),
                   "failed": int(fin["failed"]), "cancelled": int(fin["cancelled"]),
                   "rejected": int(rejected),
                   "rejected_by_reason": {k: int(v) for k, v in server["rejected"].items()}},
        "client": dict(client),
        "unaccounted": int(sent - accounted),
        "admitted_minus_finished": int(server["admitted"] - (fin["completed"] + fin["failed"]
                                                             + fin["cancelled"])),
        "in_flight_at_end": int(server["in_flight"]),
        "router_rss_kib": {"start": rss_start, "end": rss_end},
    }


def execute(args: argparse.Namespace) -> int:
    figures = asyncio.run(soak(duration=args.duration, rate=args.rate,
                               disconnect=args.disconnect, time_scale=args.time_scale,
                               seed=args.seed))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    ok = figures["unaccounted"] == 0 and figures["in_flight_at_end"] == 0 \
        and figures["admitted_minus_finished"] == 0
    return 0 if ok else 1
