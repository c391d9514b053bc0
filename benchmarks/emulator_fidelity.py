"""``lpu-bench emulator-fidelity``: timing fidelity of the LPU emulator under hundreds of
concurrent streams.

Run::

    lpu-bench emulator-fidelity                 # defaults, < 1 minute
    lpu-bench emulator-fidelity --streams 100 300 500 --tick-ms 0 5 10

For each (streams, tick) pair it starts ``lpu-emulator`` in a subprocess with a
synthetic artifact of ``streams`` slots (so nothing queues: a request starts
when it arrives) and LPU speeds (80 ms prefill, 1.786 ms per token), then keeps
``streams`` streaming requests in flight for ``--duration`` seconds with raw
aiohttp (closed loop: each worker sends its next request when one ends).

Every token's arrival is compared with its schedule as the client can derive
it: token ``k`` of a request sent at ``t_send`` is due at
``t_send + prefill + k * per_token`` (the request reaches the emulator a little
after ``t_send``, so the figure includes loopback transit and the client's own
lateness: it is what a client sees). Reported per run: lateness p50/p99/max in
ms, the emulator's own per-write lateness (from its metrics), tokens per second,
and the emulator's CPU seconds per token (from ``/proc/<pid>/stat`` over the
measured window). The client shares the machine's cores with the emulator.
Figures are printed and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np

from benchmarks.machine import describe
from benchmarks.processes import Service, cpu_seconds, start, url_in
from benchmarks.run_command import run_async

__all__ = ["HELP", "RunResult", "configure", "execute", "run_one"]

HELP = "timing fidelity of the LPU emulator under hundreds of concurrent streams"
PREFILL_MS = 80.0
PER_TOKEN_MS = 1.786
_TOKEN = b'"delta":{"content":'


@dataclass(frozen=True)
class RunResult:
    streams: int
    tick_ms: float
    write_budget_per_s: float
    """0 = unbounded."""
    duration_s: float
    requests: int
    tokens: int
    tokens_per_s: float
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    first_token_late_p50_ms: float
    first_token_late_p99_ms: float
    server_first_late_mean_ms: float
    """The emulator's own view: mean lateness of the writes carrying a first token."""
    server_later_late_mean_ms: float
    """Mean lateness of the earliest token of the other writes."""
    emulator_cpu_s: float
    emulator_cpu_us_per_token: float
    emulator_cpu_share: float
    """Emulator CPU seconds per wall second (1.0 = one core busy)."""
    client_cpu_share: float
    """The load client's CPU seconds per wall second (it shares the machine)."""


def _artifact_toml(slots: int, max_tokens: int) -> str:
    return (
        "[artifact]\n"
        'name = "bench-fidelity"\nmodel = "bench-model"\nversion = "0"\n'
        'compiler_version = "bench"\nprecision = "fp8"\ntarget = "emulated"\n'
        f"max_seq_len = {max_tokens + 512}\nmax_output_tokens = {max_tokens}\n"
        f"slots = {slots}\nprefill_ms = {PREFILL_MS}\nper_token_ms = {PER_TOKEN_MS}\n"
        "compile_time_s = 0.0\n"
    )


class _Recorder:
    """Per read: (arrival time, first token index, tokens in the read, send time)."""

    def __init__(self) -> None:
        self.reads: list[tuple[float, float, int, int]] = []
        self.requests = 0
        self.measuring = False


async def _one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, rec: _Recorder
) -> None:
    t_send = time.monotonic()
    async with session.post(
        url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        resp.raise_for_status()
        k = 0
        tail = b""
        async for data in resp.content.iter_any():
            now = time.monotonic()
            buf = tail + data
            cut = buf.rfind(b"\n\n") + 2
            count = buf.count(_TOKEN, 0, cut)
            tail = buf[cut:]
            if count and rec.measuring:
                rec.reads.append((now, t_send, k, count))
            k += count
    if rec.measuring:
        rec.requests += 1


async def _worker(
    session: aiohttp.ClientSession, url: str, body: bytes, rec: _Recorder, stop: float
) -> None:
    while time.monotonic() < stop:
        await _one_stream(session, url, body, rec)


_Sums = dict[str, float]


async def _server_lateness(session: aiohttp.ClientSession, url: str) -> _Sums:
    """Sum and count of the emulator's per-write lateness, by ``token`` label."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    out: _Sums = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"lpu:token_delivery_lateness_seconds_{part}"):
                token = "first" if 'token="first"' in line else "later"
                out[f"{token}_{part}"] = float(line.rsplit(" ", 1)[1])
    return out


def _mean_ms(before: _Sums, after: _Sums, token: str) -> float:
    n = after.get(f"{token}_count", 0.0) - before.get(f"{token}_count", 0.0)
    total = after.get(f"{token}_sum", 0.0) - before.get(f"{token}_sum", 0.0)
    return round(total / n * 1e3, 3) if n else 0.0


@dataclass(frozen=True)
class _Window:
    emulator_cpu_s: float
    client_cpu_s: float
    wall_s: float
    late_before: _Sums
    late_after: _Sums


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def _drive(
    url: str, pid: int, streams: int, max_tokens: int, warmup_s: float, duration_s: float
) -> tuple[_Recorder, _Window]:
    body = json.dumps({
        "model": "bench-model", "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": max_tokens, "stream": True,
    }).encode()
    rec = _Recorder()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        stop = start + warmup_s + duration_s
        workers = [
            asyncio.create_task(_worker(session, url, body, rec, stop)) for _ in range(streams)
        ]
        await asyncio.sleep(warmup_s)
        rec.measuring = True
        cpu0, own0, t0 = cpu_seconds(pid), _own_cpu_seconds(), time.monotonic()
        late0 = await _server_lateness(session, url)
        await asyncio.sleep(duration_s)
        rec.measuring = False
        cpu1, own1, t1 = cpu_seconds(pid), _own_cpu_seconds(), time.monotonic()
        late1 = await _server_lateness(session, url)
        await asyncio.gather(*workers)
    return rec, _Window(cpu1 - cpu0, own1 - own0, t1 - t0, late0, late1)


def _lateness_ms(rec: _Recorder) -> tuple[np.ndarray, np.ndarray]:
    """Lateness of every token and of every first token, in ms."""
    if not rec.reads:
        return np.zeros(0), np.zeros(0)
    arr = np.array(rec.reads, dtype=float)
    now, t_send, k0, count = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3].astype(int)
    # Expand each read into its tokens: token index k0 + j for j < count.
    rows = np.repeat(np.arange(len(arr)), count)
    offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    k = k0[rows] + offsets
    due = t_send[rows] + (PREFILL_MS + k * PER_TOKEN_MS) / 1e3
    late = (now[rows] - due) * 1e3
    return late, late[k == 0]


def _start_emulator(toml_path: Path, tick_ms: float, write_budget: float) -> tuple[Service, str]:
    emulator = start(
        [sys.executable, "-m", "lpu_emulator", "--artifact", str(toml_path), "--port", "0",
         "--tick-ms", str(tick_ms), "--write-budget", str(write_budget)],
        name="emulator", ready_lines=1)
    return emulator, url_in(emulator.lines[0])


def run_one(
    streams: int, tick_ms: float, write_budget: float = 20000.0, *, max_tokens: int = 300,
    warmup_s: float = 2.0, duration_s: float = 8.0,
) -> RunResult:
    """One measurement: ``streams`` concurrent streams at delivery quantum ``tick_ms``
    and at most ``write_budget`` writes per second (0: unbounded)."""
    with tempfile.TemporaryDirectory() as tmp:
        toml_path = Path(tmp) / "bench.toml"
        toml_path.write_text(_artifact_toml(streams, max_tokens))
        emulator, url = _start_emulator(toml_path, tick_ms, write_budget)
        try:
            rec, win = run_async(
                _drive(url, emulator.pid, streams, max_tokens, warmup_s, duration_s)
            )
        finally:
            emulator.stop()
    late, first = _lateness_ms(rec)
    tokens = len(late)
    cpu, wall = win.emulator_cpu_s, win.wall_s
    return RunResult(
        streams=streams, tick_ms=tick_ms, write_budget_per_s=write_budget,
        duration_s=round(wall, 3), requests=rec.requests,
        tokens=tokens, tokens_per_s=round(tokens / wall, 1),
        late_p50_ms=round(float(np.percentile(late, 50)), 3) if tokens else float("nan"),
        late_p99_ms=round(float(np.percentile(late, 99)), 3) if tokens else float("nan"),
        late_max_ms=round(float(late.max()), 3) if tokens else float("nan"),
        first_token_late_p50_ms=round(float(np.percentile(first, 50)), 3) if len(first) else 0,
        first_token_late_p99_ms=round(float(np.percentile(first, 99)), 3) if len(first) else 0,
        server_first_late_mean_ms=_mean_ms(win.late_before, win.late_after, "first"),
        server_later_late_mean_ms=_mean_ms(win.late_before, win.late_after, "later"),
        emulator_cpu_s=round(cpu, 3),
        emulator_cpu_us_per_token=round(cpu / tokens * 1e6, 2) if tokens else float("nan"),
        emulator_cpu_share=round(cpu / wall, 3),
        client_cpu_share=round(win.client_cpu_s / wall, 3),
    )


def _table(results: list[RunResult]) -> str:
    head = (f"{'streams':>7} {'tick ms':>7} {'budget':>7} {'tok/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'max ms':>7} {'TTFT p99':>8} {'srv 1st':>8} {'srv later':>9} {'CPU us/tok':>10} "
            f"{'emu CPU':>7} {'cli CPU':>7}")
    rows = [head]
    for r in results:
        rows.append(
            f"{r.streams:>7} {r.tick_ms:>7g} {r.write_budget_per_s:>7g} {r.tokens_per_s:>9.0f} "
            f"{r.late_p50_ms:>7.2f} "
            f"{r.late_p99_ms:>7.2f} {r.late_max_ms:>7.2f} {r.first_token_late_p99_ms:>8.2f} "
            f"{r.server_first_late_mean_ms:>8.2f} {r.server_later_late_mean_ms:>9.2f} "
            f"{r.emulator_cpu_us_per_token:>10.2f} {r.emulator_cpu_share:>7.2f} "
            f"{r.client_cpu_share:>7.2f}"
        )
    return "\n".join(rows)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, nargs="+", default=[100, 300])
    p.add_argument("--tick-ms", type=float, nargs="+", default=[5.0])
    p.add_argument("--write-budget", type=float, nargs="+", default=[20000.0],
                   help="emulator writes per second over all streams (0: unbounded)")
    p.add_argument("--max-tokens", type=int, default=300, help="tokens per request")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/emulator_fidelity.json"))


def execute(args: argparse.Namespace) -> int:
    results: list[RunResult] = []
    for streams in args.streams:
        for tick in args.tick_ms:
            for budget in args.write_budget:
                r = run_one(streams, tick, budget, max_tokens=args.max_tokens,
                            warmup_s=args.warmup, duration_s=args.duration)
                print(_table([r]).splitlines()[-1] if results else _table([r]), flush=True)
                results.append(r)
    doc = {
        "command": shlex.join(["lpu-bench", *sys.argv[1:]]),
        "machine": describe(),
        "prefill_ms": PREFILL_MS,
        "per_token_ms": PER_TOKEN_MS,
        "results": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0

