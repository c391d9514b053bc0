"""Option (a) of issue 12, measured: one admission owner per host that every worker asks over a
Unix socket, decide + finish per request.

The owner (``python -m benchmarks.uds_owner serve PATH``, uvloop) holds the router's real
:class:`~router.admission.controller.TimelineAdmitter` for one bucket of two 8-slot replicas.
Per request a worker sends ``D <tokens>\\n`` and waits for ``A <id> <backend>\\n`` (or ``R
<reason>\\n``), then, once the request is over, ``F <id> <tokens>\\n`` (no answer: the worker
does not wait for its finish). This process is the worker side: asyncio streams on uvloop.

Two loads, each for ``duration_s``:

* ``paced``: one request at a time at a fixed rate (each decide alone in its wake-up: the
  cost at the load of a router that is not saturated);
* ``concurrent``: ``concurrency`` closed loops (answers batched per wake-up: the saturated case).

Per load: requests, the decide round trip p50/p99 (the latency added to every request), and CPU
per request of the owner and of the worker side, from ``/proc`` (utime + stime), with the
in-process decide + finish (no socket) timed as the part the owner would do anyway.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from benchmarks.processes import cpu_seconds, start
from router.admission import AdmissionRequest, Admitted, Ticket
from router.admission.controller import TimelineAdmitter
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.outcomes import Outcome

__all__ = ["measure"]

SLOTS = 8
PREFILL_S = 0.08
PER_TOKEN_S = 0.001786
TOKENS = 32


def _admitter() -> TimelineAdmitter:
    shapes = tuple(ReplicaShape(f"http://r{i}", SLOTS, PREFILL_S, PER_TOKEN_S)
                   for i in range(2))
    bucket = BucketPolicy("b", shapes, ttft_slo_s=0.5, e2e_slo_s=60.0)
    return TimelineAdmitter(AdmissionSettings(buckets=(bucket,)))


class _Owner:
    """The per-host owner: decisions and finishes, one connection per worker."""

    def __init__(self) -> None:
        self._admitter = _admitter()
        self._tickets: dict[int, Ticket] = {}
        self._next = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        a, tickets = self._admitter, self._tickets
        while line := await reader.readline():
            kind, *rest = line.split()
            if kind == b"D":
                d = a.decide(AdmissionRequest("b", prompt_tokens=100, max_tokens=int(rest[0])))
                if isinstance(d, Admitted):
                    self._next += 1
                    tickets[self._next] = d.ticket
                    writer.write(b"A %d %s\n" % (self._next, d.backend.encode()))
                else:
                    writer.write(b"R %s\n" % str(d.reason).encode())
            elif kind == b"F":
                t = tickets.pop(int(rest[0]), None)
                if t is not None:
                    t.finish(Outcome.COMPLETED, int(rest[1]))
        writer.close()


async def _serve(path: str) -> None:
    owner = _Owner()
    server = await asyncio.start_unix_server(owner.serve, path)
    print(f"uds owner on {path}", flush=True)
    async with server:
        await server.serve_forever()


async def _worker(path: str, stop_at: float, pace_s: float | None,
                  rtts: list[float]) -> int:
    reader, writer = await asyncio.open_unix_connection(path)
    n = 0
    next_at = time.monotonic()
    while time.monotonic() < stop_at:
        if pace_s is not None:
            next_at += pace_s
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        t0 = time.perf_counter()
        writer.write(b"D %d\n" % TOKENS)
        answer = await reader.readline()
        rtts.append(time.perf_counter() - t0)
        if answer.startswith(b"A"):
            writer.write(b"F %s %d\n" % (answer.split()[1], TOKENS))
        n += 1
    writer.close()
    await writer.wait_closed()
    return n


async def _load(path: str, duration_s: float, concurrency: int,
                pace_s: float | None) -> tuple[int, list[float]]:
    rtts: list[float] = []
    stop_at = time.monotonic() + duration_s
    counts = await asyncio.gather(*(_worker(path, stop_at, pace_s, rtts)
                                    for _ in range(concurrency)))
    return sum(counts), rtts


def _in_process_us(repeat: int = 20000) -> float:
    """Decide + finish in this process, no socket: what the owner does per request anyway."""
    a = _admitter()
    req = AdmissionRequest("b", prompt_tokens=100, max_tokens=TOKENS)
    t0 = time.perf_counter()
    for _ in range(repeat):
        d = a.decide(req)
        if isinstance(d, Admitted):
            d.ticket.finish(Outcome.COMPLETED, TOKENS)
    return (time.perf_counter() - t0) / repeat * 1e6


def measure(duration_s: float = 5.0, concurrency: int = 32, paced_rps: float = 1000.0
            ) -> dict[str, Any]:
    """Both loads against a fresh owner process; figures as the module docstring says."""
    with tempfile.TemporaryDirectory(prefix="uds-owner-") as tmp:
        path = str(Path(tmp) / "owner.sock")
        owner = start([sys.executable, "-m", "benchmarks.uds_owner", "serve", path],
                      name="uds-owner", ready_lines=1)
        try:
            loads: dict[str, Any] = {}
            for name, conc, pace in (("paced", 1, 1.0 / paced_rps),
                                     ("concurrent", concurrency, None)):
                own0, me0 = cpu_seconds(owner.proc.pid), cpu_seconds(os.getpid())
                n, rtts = uvloop.run(_load(path, duration_s, conc, pace))
                own = cpu_seconds(owner.proc.pid) - own0
                me = cpu_seconds(os.getpid()) - me0
                loads[name] = {
                    "concurrency": conc, "rate_rps": n / duration_s, "requests": n,
                    "decide_rtt_p50_us": float(np.percentile(rtts, 50)) * 1e6,
                    "decide_rtt_p99_us": float(np.percentile(rtts, 99)) * 1e6,
                    "owner_cpu_us_per_request": own / n * 1e6,
                    "worker_cpu_us_per_request": me / n * 1e6,
                }
        finally:
            owner.stop()
    return {"duration_s": duration_s, "in_process_decide_finish_us": _in_process_us(),
            "loads": loads}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        uvloop.run(_serve(sys.argv[2]))
    else:
        import json

        print(json.dumps(measure(), indent=1))
