"""``lpu-bench fidelity-floor``: the least any emulator on this machine can be late by, with
the fidelity benchmark's schedule written by bare writers and nothing else.

The fidelity benchmark (:mod:`benchmarks.emulator_fidelity`) asks the emulator for a
server-side p99 lateness of at most 5 ms at 500 streams. This measures what that asks of the
machine, apart from the emulator's code: ``--servers`` processes (uvloop, one timer per loop
as the emulator's ticker has, SCHED_FIFO where allowed, like ``emulator-fidelity
--realtime``) write the same token schedule on ``--streams`` loopback TCP connections
(TCP_NODELAY), and ``--clients`` processes read them every ``--client-read-ms`` as the
fidelity clients do. A stream is a closed loop of requests of ``--max-tokens`` tokens: the
first token alone at ``prefill`` after the request's start, then writes of ``m`` tokens
(``--tokens-per-write``), each due when its last token is, and the next request starts when
the last token is due (the loop with no client lateness). A stream's writes due by one wake-up
go as one write (every token due, as the emulator's ticker writes them), so a writer that fell
behind catches up rather than staying behind. A write is ``m`` frames of the
emulator's size (:data:`FRAME`), already made: no HTTP, no parsing, no admission, no
histogram, no frame building, so whatever the emulator does per write or per request comes on
top. ``--work-us`` adds that much busy CPU after every write: p99 against the CPU a write may
cost beyond the bare send.

Per token, lateness is time written minus time due; a write of ``m`` tokens makes its tokens
late by ``late_last + (m - 1 - i) * step``. Reported over the measured window: p50 / p99 / max
token lateness per server process, the write's own lateness (its last token's) at p99, writes
and tokens per second, and CPU (user + system) of the servers per write and of the clients.
Every run checks that the clients read every byte the servers wrote (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import heapq
import json
import multiprocessing as mp
import os
import queue
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from benchmarks.emulator_fidelity import PER_TOKEN_MS, PREFILL_MS
from benchmarks.experiments.exp1_realtime import realtime
from benchmarks.machine import describe, load_average
from benchmarks.processes import cpu_seconds

__all__ = ["FRAME", "FloorResult", "FloorSetup", "configure", "execute", "request_writes",
           "run_floor"]

HELP = "the fidelity schedule written by bare writers: the least an emulator can be late by"

FRAME = b"b4\r\ndata: " + b"x" * 170 + b"\n\n\r\n"
"""One token's bytes: an HTTP chunk of one SSE frame the size of the emulator's."""
TIMER_BIAS_S = 0.0005
"""Added to every timer's delay, as the emulator's ticker does (uvloop's timers round to ms)."""
TARGET_MS = 5.0
_GO_AFTER_S = 0.3
"""Seconds from the last connection made to the schedule's origin (every process waiting)."""
_START_TIMEOUT_S = 60.0


def request_writes(start: float, prefill_s: float, step_s: float, tokens: int,
                   per_write: int) -> Iterator[tuple[float, int]]:
    """The writes of one request started at ``start``: ``(due, tokens)`` each, due when its
    last token is. Token ``k`` is due at ``start + prefill_s + k * step_s``; the first token
    goes alone, the rest in writes of ``per_write`` (the last one may be shorter)."""
    first = start + prefill_s
    yield first, 1
    k = 1
    while k < tokens:
        n = min(per_write, tokens - k)
        k += n
        yield first + (k - 1) * step_s, n


@dataclass(frozen=True, slots=True)
class FloorSetup:
    streams: int
    servers: int
    clients: int
    per_write: int
    work_us: float
    max_tokens: int
    prefill_ms: float
    per_token_ms: float
    client_read_ms: float
    warmup_s: float
    duration_s: float
    realtime: bool


@dataclass(frozen=True, slots=True)
class FloorResult:
    setup: FloorSetup
    scheduling: str
    writes_per_s: float
    tokens_per_s: float
    server_cores: float
    server_us_per_write: float
    client_cores: float
    token_p50_ms: list[float]
    token_p99_ms: list[float]
    token_max_ms: list[float]
    write_p99_ms: list[float]
    bytes_written: int
    bytes_read: int


def _cpu() -> float:
    return cpu_seconds(os.getpid())


def _stream_writes(s: FloorSetup, origin: float) -> Iterator[tuple[float, int]]:
    start = origin
    while True:
        due = start
        for due, n in request_writes(start, s.prefill_ms / 1e3, s.per_token_ms / 1e3,
                                     s.max_tokens, s.per_write):
            yield due, n
        start = due


def _serve(s: FloorSetup, streams: int, ready: Any, go: Any, results: Any) -> None:
    import uvloop

    results.put(("server", uvloop.run(_serve_loop(s, streams, ready, go))))


async def _serve_loop(s: FloorSetup, streams: int, ready: Any, go: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    connected = loop.create_future()

    class _Conn(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
            transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transports.append(transport)
            if len(transports) == streams and not connected.done():
                connected.set_result(None)

    server = await loop.create_server(_Conn, "127.0.0.1", 0, backlog=4096)
    ready.put(server.sockets[0].getsockname()[1])
    await connected
    ready.put(None)
    # The origin comes once every process has made its connections: nothing else runs on
    # this loop until then, so a blocking get holds up nobody.
    origin: float = go.get(timeout=_START_TIMEOUT_S)
    step = s.per_token_ms / 1e3
    chunks = {n: FRAME * n for n in range(1, s.per_write + 1)}
    # Streams spread over one token time, as requests starting at random would be.
    plans = [_stream_writes(s, origin + i * step / streams) for i in range(streams)]
    heap = [(*next(p), i) for i, p in enumerate(plans)]
    heapq.heapify(heap)
    measure_from, measure_to = origin + s.warmup_s, origin + s.warmup_s + s.duration_s
    late = array.array("d")
    counts = array.array("l")
    work = s.work_us / 1e6
    written = writes = 0
    cpu = [0.0, 0.0]
    done = loop.create_future()
    mono = time.monotonic

    def tick() -> None:
        nonlocal written, writes
        now = mono()
        if not cpu[0] and now >= measure_from:
            cpu[0] = _cpu()
        counting = cpu[0] and now < measure_to
        while heap and heap[0][0] <= now:
            due, n, i = heapq.heappop(heap)
            # Every token due by now in one write, as the emulator's ticker writes them: a
            # stream that fell behind catches up instead of staying behind.
            plan = plans[i]
            later = next(plan)
            parts = [(due, n)]
            total = n
            while later[0] <= now:
                parts.append(later)
                total += later[1]
                later = next(plan)
            chunk = chunks.get(total) or FRAME * total
            transports[i].write(chunk)
            t = mono()
            written += len(chunk)
            if counting:
                writes += 1
            for part_due, part_n in parts:
                if measure_from <= part_due < measure_to:
                    late.append(t - part_due)
                    counts.append(part_n)
            if work:
                until = t + work
                while mono() < until:
                    pass
            heapq.heappush(heap, (*later, i))
        if now >= measure_to:
            cpu[1] = _cpu()
            done.set_result(None)
            return
        delay = heap[0][0] - mono()
        loop.call_later(delay + TIMER_BIAS_S if delay > 0 else 0.0, tick)

    loop.call_later(max(0.0, origin - mono()), tick)
    await done
    for t in transports:
        t.close()
    server.close()
    last = np.frombuffer(late, dtype=np.float64)
    n = np.frombuffer(counts, dtype=np.int64)
    # Token i of a write of n is due (n - 1 - i) steps before the write's last token.
    tokens = np.repeat(last, n) + step * (np.repeat(np.cumsum(n), n) - 1
                                          - np.arange(int(n.sum())))
    return {"writes": writes, "tokens": int(n.sum()), "cpu_s": cpu[1] - cpu[0],
            "bytes": written, "p50": float(np.percentile(tokens, 50)),
            "p99": float(np.percentile(tokens, 99)), "max": float(tokens.max()),
            "write_p99": float(np.percentile(last, 99))}


def _read(s: FloorSetup, ports: list[int], first: int, count: int, results: Any) -> None:
    import uvloop

    socks = []
    for k in range(count):
        sock = socket.create_connection(("127.0.0.1", ports[(first + k) % len(ports)]))
        sock.setblocking(False)
        socks.append(sock)
    results.put(("client", uvloop.run(_read_loop(s, socks))))


async def _read_loop(s: FloorSetup, socks: list[socket.socket]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    got = 0
    open_socks = list(socks)
    cpu0 = _cpu()
    t0 = time.monotonic()

    def poll() -> None:
        nonlocal got, open_socks
        still = []
        for sock in open_socks:
            while True:
                try:
                    data = sock.recv(1 << 18)
                except BlockingIOError:
                    still.append(sock)
                    break
                if not data:
                    sock.close()
                    break
                got += len(data)
        open_socks = still
        if not open_socks:
            done.set_result(None)
            return
        loop.call_later(s.client_read_ms / 1e3, poll)

    poll()
    await done
    # Reading costs the same per second whatever the window: the whole run's mean.
    return {"bytes": got, "cpu_s": _cpu() - cpu0, "wall_s": time.monotonic() - t0}


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (k < total % parts) for k in range(parts)]


def run_floor(s: FloorSetup) -> FloorResult:
    """Start the servers and clients, run the schedule, gather what they measured. The
    schedule's origin is set once every connection is made (spawned processes take a while
    to import), so no writer starts behind."""
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    servers = [ctx.Process(target=_serve, args=(s, n, ready, go, results))
               for n in _split(s.streams, s.servers)]
    clients: list[Any] = []
    got: dict[str, list[dict[str, Any]]] = {"server": [], "client": []}
    with contextlib.ExitStack() as stack:
        for p in servers:
            p.start()
            stack.callback(p.kill)
        ports = [ready.get(timeout=_START_TIMEOUT_S) for _ in servers]
        per_client = _split(s.streams, s.clients)
        firsts = np.cumsum([0, *per_client[:-1]]).tolist()
        clients = [ctx.Process(target=_read, args=(s, ports, f, n, results))
                   for f, n in zip(firsts, per_client, strict=True)]
        for p in clients:
            p.start()
            stack.callback(p.kill)
        for _ in servers:
            ready.get(timeout=_START_TIMEOUT_S)  # every connection of that server made
        scheduling = stack.enter_context(
            realtime([cast(int, p.pid) for p in servers]) if s.realtime
            else contextlib.nullcontext("SCHED_OTHER"))
        origin = time.monotonic() + _GO_AFTER_S
        for _ in servers:
            go.put(origin)
        timeout = _GO_AFTER_S + s.warmup_s + s.duration_s + 60
        deadline = time.monotonic() + timeout
        while len(got["server"]) + len(got["client"]) < len(servers) + len(clients):
            with contextlib.suppress(queue.Empty):
                kind, value = results.get(timeout=0.5)
                got[kind].append(value)
                continue
            dead = [p.exitcode for p in servers + clients if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"fidelity-floor: a process failed (exit {dead}) or the"
                                   f" run took over {timeout:.0f} s")
        for p in servers + clients:
            p.join(timeout=10)
    sv, cl = got["server"], got["client"]
    writes = sum(x["writes"] for x in sv)
    server_cpu = sum(x["cpu_s"] for x in sv)
    ms = 1e3
    return FloorResult(
        setup=s, scheduling=scheduling,
        writes_per_s=writes / s.duration_s,
        tokens_per_s=sum(x["tokens"] for x in sv) / s.duration_s,
        server_cores=server_cpu / s.duration_s,
        server_us_per_write=server_cpu / writes * 1e6 if writes else float("nan"),
        client_cores=sum(x["cpu_s"] / x["wall_s"] for x in cl),
        token_p50_ms=[x["p50"] * ms for x in sv], token_p99_ms=[x["p99"] * ms for x in sv],
        token_max_ms=[x["max"] * ms for x in sv], write_p99_ms=[x["write_p99"] * ms for x in sv],
        bytes_written=sum(x["bytes"] for x in sv), bytes_read=sum(x["bytes"] for x in cl))


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--servers", type=int, default=os.cpu_count() or 1,
                   help="writer processes (default: one per core, as the emulator's fleet)")
    p.add_argument("--clients", type=int, default=2, help="reader processes")
    p.add_argument("--tokens-per-write", type=int, nargs="+", default=[2, 3])
    p.add_argument("--work-us", type=float, nargs="+", default=[0.0, 2.0, 4.0, 8.0],
                   help="busy CPU after every write, microseconds")
    p.add_argument("--max-tokens", type=int, default=300)
    p.add_argument("--client-read-ms", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--no-realtime", dest="realtime", action="store_false",
                   help="writers SCHED_OTHER (default: SCHED_FIFO 10 where allowed)")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke test: 20 streams, one second; checks only that every byte"
                   " written is read (writes nothing)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/fidelity_floor.json"))


_HEAD = (f"{'m':>2} {'work us':>7} {'writes/s':>9} {'tok/s':>8} {'srv cores':>9}"
         f" {'us/write':>8} {'cli cores':>9}  token p99 ms (per server)   write p99 ms")


def _row(r: FloorResult) -> str:
    p99 = " / ".join(f"{x:.2f}" for x in r.token_p99_ms)
    w99 = " / ".join(f"{x:.2f}" for x in r.write_p99_ms)
    return (f"{r.setup.per_write:>2} {r.setup.work_us:>7g} {r.writes_per_s:>9.0f}"
            f" {r.tokens_per_s:>8.0f} {r.server_cores:>9.2f} {r.server_us_per_write:>8.2f}"
            f" {r.client_cores:>9.2f}  {p99:<26} {w99}")


def markdown(doc: dict[str, Any]) -> str:
    """The result file's report: setup, the table, and per tokens-per-write the largest work
    per write that still met the target."""
    m = doc["machine"]
    first = doc["results"][0]["setup"]
    lines = [
        "# Fidelity floor: the fidelity schedule written by bare writers",
        "",
        f"Command: `{doc['command']}`, under `flock /tmp/lpu-measure.lock`.",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['date']}."
        f" {doc['load_note']}",
        "",
        f"Setup: {first['streams']} streams on loopback TCP in {first['servers']} writer"
        f" processes ({doc['results'][0]['scheduling']}), {first['clients']} reader"
        f" processes reading every connection every {first['client_read_ms']:g} ms; requests of"
        f" {first['max_tokens']} tokens at {first['prefill_ms']:g} ms prefill and"
        f" {first['per_token_ms']} ms per token, one after another on each stream; the first"
        " token alone, the rest in writes of m tokens due at their last token; one timer per"
        f" loop (uvloop, {TIMER_BIAS_S * 1e3:g} ms added to each delay as the emulator's ticker"
        " does). A write is m ready-made frames of the emulator's size: no HTTP, no admission,"
        " no frame building, no histogram. `work` is busy CPU added after every write."
        f" {first['warmup_s']:g} s of warm-up, then {first['duration_s']:g} s measured.",
        "",
        "| m (tokens a write) | work per write (us) | writes/s | tokens/s | writer cores |"
        " writer us/write | reader cores | token lateness p50 (ms) | p99 (ms) | max (ms) |"
        " write p99 (ms) | p99 <= 5 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        s = r["setup"]
        ok = max(r["token_p99_ms"]) <= TARGET_MS

        def j(xs: list[float], d: int = 2) -> str:
            return " / ".join(f"{x:.{d}f}" for x in xs)

        lines.append(
            f"| {s['per_write']} | {s['work_us']:g} | {r['writes_per_s']:,.0f} |"
            f" {r['tokens_per_s']:,.0f} | {r['server_cores']:.2f} |"
            f" {r['server_us_per_write']:.2f} | {r['client_cores']:.2f} |"
            f" {j(r['token_p50_ms'])} | {j(r['token_p99_ms'])} | {j(r['token_max_ms'], 1)} |"
            f" {j(r['write_p99_ms'])} | {'yes' if ok else 'no'} |")
    lines += ["", "Per server process where a cell lists several values.", ""]
    for per_write in sorted({r["setup"]["per_write"] for r in doc["results"]}):
        mine = [r for r in doc["results"] if r["setup"]["per_write"] == per_write]
        met = [r["setup"]["work_us"] for r in mine if max(r["token_p99_ms"]) <= TARGET_MS]
        missed = [r["setup"]["work_us"] for r in mine if max(r["token_p99_ms"]) > TARGET_MS]
        if met:
            lines.append(f"- m = {per_write}: p99 <= {TARGET_MS:g} ms with up to {max(met):g} us"
                         " of work per write"
                         + (f"; missed from {min(missed):g} us." if missed else "."))
        else:
            lines.append(f"- m = {per_write}: p99 <= {TARGET_MS:g} ms in no run, not even with"
                         " no work per write.")
    return "\n".join(lines) + "\n"


def execute(args: argparse.Namespace) -> int:
    if args.quick:
        args.streams, args.tokens_per_write, args.work_us = 20, [3], [0.0]
        args.max_tokens, args.warmup, args.duration = 40, 0.2, 1.0
    load_before = load_average()
    results: list[FloorResult] = []
    problems: list[str] = []
    print(_HEAD, flush=True)
    for per_write in args.tokens_per_write:
        for work in args.work_us:
            s = FloorSetup(args.streams, args.servers, args.clients, per_write, work,
                           args.max_tokens, PREFILL_MS, PER_TOKEN_MS, args.client_read_ms,
                           args.warmup, args.duration, args.realtime)
            r = run_floor(s)
            print(_row(r), flush=True)
            results.append(r)
            if r.bytes_read != r.bytes_written or not r.writes_per_s:
                problems.append(f"m = {per_write}, work {work:g} us: {r.bytes_written} bytes"
                                f" written, {r.bytes_read} read, {r.writes_per_s:.0f} writes/s")
    for p in problems:
        print(f"fidelity-floor: {p}", file=sys.stderr)
    if args.quick:
        return 1 if problems else 0
    doc = {"command": shlex.join(["lpu-bench", *sys.argv[1:]]), "machine": describe(),
           "load_note": f"Load average (1 min) {load_before} before the runs and"
                        f" {load_average()} after.",
           "results": [asdict(r) for r in results]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    md = args.out.with_suffix(".md")
    md.write_text(markdown(doc))
    print(f"written: {args.out}, {md}")
    return 1 if problems else 0
