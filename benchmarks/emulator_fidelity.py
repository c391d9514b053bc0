"""``lpu-bench emulator-fidelity``: does the LPU emulator keep its schedule at hundreds of
concurrent streams, seen from the emulator itself and from its clients?

Run::

    lpu-bench emulator-fidelity                     # 100 / 300 / 500 / 1000 streams
    lpu-bench emulator-fidelity --streams 500 --processes 2 --clients 2
    lpu-bench emulator-fidelity --quick             # seconds: CI smoke test, asserts only
    lpu-bench emulator-fidelity --streams 500 --realtime   # emulator under SCHED_FIFO

For each stream count ``S`` it starts an emulator fleet (``lpu-emulator --replicas R
--processes P``, :mod:`lpu_emulator.fleet_process`) serving a synthetic artifact with
``ceil(S / R)`` slots per replica (nothing queues) at LPU speeds (80 ms prefill, 1.786 ms per
token), and ``--clients`` load processes (:mod:`benchmarks.fidelity_client`) that together keep
``S`` streaming requests of ``--max-tokens`` tokens in flight for ``--warmup`` + ``--duration``
seconds, spread over the replicas. Over the measured window it reports:

* server lateness (time written minus time scheduled, every token), from the emulator's
  ``lpu_emulator_token_lateness_seconds`` histograms summed over replicas: p50 / p99 / max as
  bucket upper bounds, first tokens and later tokens apart;
* client lateness (arrival minus ``t_send + prefill + k * per_token``: the server's plus
  loopback plus the client's own loop), p50 / p99 / max;
* tokens per second (the histograms' count), emulator CPU per token and in cores (user +
  system of every emulator process, ``/proc``), and the clients' CPU in cores.

``--realtime`` runs the emulator processes under SCHED_FIFO
(:func:`benchmarks.experiments.exp1_realtime.realtime`) from before the first request to the
end of the run, the clients staying SCHED_OTHER at their nice value: a woken emulator then
takes a core at once instead of waiting for the clients' time slices (the runqueue wait
column). Each result records the class in force (``emulator_scheduling``).

After each run, once every client has read every stream to its end, the histograms' total
count must equal the tokens the clients received (and their first-token count the requests):
a run where they differ fails the benchmark (exit 1), as does any stream that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.experiments.exp1_realtime import realtime
from benchmarks.fidelity_histogram import Buckets, parse, writes
from benchmarks.fidelity_report import write_markdown
from benchmarks.machine import describe, load_average
from benchmarks.processes import Service, cpu_seconds, start
from lpu_emulator.fleet import default_processes
from lpu_emulator.fleet_process import FleetProcess, running_fleet

__all__ = ["HELP", "RunResult", "Setup", "configure", "execute", "run_one"]

HELP = "timing fidelity of the LPU emulator under hundreds of concurrent streams"
PREFILL_MS = 80.0
PER_TOKEN_MS = 1.786
_GO_AFTER_S = 0.3
"""Seconds from the go file to the first request: every client is ready and waiting."""


@dataclass(frozen=True)
class RunResult:
    streams: int
    replicas: int
    processes: int
    clients: int
    tick_ms: float
    write_budget_per_s: float
    """0 = unbounded."""
    duration_s: float
    tokens: int
    """Tokens the emulator wrote in the window (its histograms' count, between the answers
    to the two scrapes; tokens_per_s divides by the time between those answers)."""
    tokens_per_s: float
    server_first_p50_ms: float
    server_first_p99_ms: float
    server_first_max_ms: float
    server_later_p50_ms: float
    server_later_p99_ms: float
    server_later_max_ms: float
    server_all_p99_ms: float
    """Bucket upper bounds: the quantile is at or under it (inf: above the last bucket)."""
    client_p50_ms: float
    client_p99_ms: float
    client_max_ms: float
    client_first_p99_ms: float
    emulator_cpu_us_per_token: float
    emulator_cpu_cores: float
    """Emulator CPU seconds per wall second, all its processes (1.0 = one core busy)."""
    client_cpu_cores: float
    emulator_runqueue_wait_share: float
    """Per serving emulator process: the share of wall time it was runnable but waiting for
    a core (the machine's other work holding it back; 0 on an idle machine)."""
    client_tokens_total: int
    """Whole run, after every stream ended: tokens the clients received ..."""
    server_tokens_total: int
    """... and the emulator's histograms counted (must be equal)."""
    client_requests_total: int
    server_first_total: int
    writes_per_s: float = math.nan
    """Stream writes per second over all replicas (``lpu:token_delivery_lateness_seconds``
    counts one per write), between the answers to the two scrapes."""
    emulator_cpu_us_per_write: float = math.nan
    """Emulator CPU (all of it: requests, frames, the send system calls) per write."""
    client_nice: int = 0
    """The clients' nice value above the benchmark's (same session: it ranks them below the
    emulator when both want a core)."""
    client_read_ms: float = 0.0
    """The clients read every connection every this many ms (0: each write as it arrives);
    their lateness includes up to this much waiting to be read, by design."""
    emulator_scheduling: str = "SCHED_OTHER"
    """The emulator processes' scheduling class during the run (``--realtime``: ``SCHED_FIFO
    10``, or ``SCHED_OTHER (why)`` where it could not be set)."""


def _artifact_toml(slots: int, max_tokens: int) -> str:
    return (
        "[artifact]\n"
        'name = "bench-fidelity"\nmodel = "bench-model"\nversion = "0"\n'
        'compiler_version = "bench"\nprecision = "fp8"\ntarget = "emulated"\n'
        f"max_seq_len = {max_tokens + 512}\nmax_output_tokens = {max_tokens}\n"
        f"slots = {slots}\nprefill_ms = {PREFILL_MS}\nper_token_ms = {PER_TOKEN_MS}\n"
        "compile_time_s = 0.0\n"
    )


def _scrape_one(url: str) -> tuple[dict[str, Buckets], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        text = r.read().decode()
    return parse(text), writes(text)


def _scrape(urls: list[str]) -> tuple[dict[str, Buckets], float, float]:
    """The histograms and the write count summed over replicas, and when the last answer
    came: a busy emulator answers late, so the window's length is taken between answers, not
    between asks."""
    total: dict[str, Buckets] = {"first": Buckets(), "later": Buckets()}
    made = 0.0
    with ThreadPoolExecutor(len(urls)) as pool:
        for found, n in pool.map(_scrape_one, urls):
            made += n
            for token, b in found.items():
                total[token] = total.get(token, Buckets()) + b
    return total, made, time.monotonic()


def _runqueue_wait_s(pids: list[int]) -> float:
    """Seconds the main threads of ``pids`` spent runnable but waiting for a core
    (``/proc/PID/schedstat``, second field, ns): how much the machine held them back."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3) if math.isfinite(seconds) else seconds


def _q(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if len(values) else math.nan


@dataclass(frozen=True)
class Setup:
    """One run: ``streams`` over ``replicas`` served by ``processes`` emulator processes and
    driven by ``clients`` load processes; delivery settings; request length; seconds."""

    streams: int
    replicas: int
    processes: int
    clients: int
    tick_ms: float
    write_budget: float
    max_tokens: int
    warmup_s: float
    duration_s: float
    client_read_ms: float = 0.0
    client_nice: int = 0
    realtime: bool = False


def _start_clients(s: Setup, urls: list[str], work: Path) -> list[Service]:
    services = []
    for i in range(s.clients):
        share = s.streams // s.clients + (1 if i < s.streams % s.clients else 0)
        offset = sum(s.streams // s.clients + (1 if j < s.streams % s.clients else 0)
                     for j in range(i))
        services.append(start(
            [sys.executable, "-m", "benchmarks.fidelity_client", "--urls", *urls,
             "--offset", str(offset), "--streams", str(share),
             "--max-tokens", str(s.max_tokens), "--prefill-ms", str(PREFILL_MS),
             "--per-token-ms", str(PER_TOKEN_MS), "--go", str(work / "go"),
             "--client-read-ms", str(s.client_read_ms), "--nice", str(s.client_nice),
             "--out", str(work / f"client-{i}.json")],
            name=f"fidelity-client-{i}", ready_lines=1, timeout_s=60.0,
            stderr=work / f"client-{i}.log"))
    return services


def _measure(s: Setup, fleet: FleetProcess, work: Path) -> RunResult:
    clients = _start_clients(s, fleet.urls, work)
    # After the clients started: they must not inherit the class this thread takes.
    with (realtime(fleet.pids()) if s.realtime
          else contextlib.nullcontext("SCHED_OTHER")) as scheduling:
        return _measure_with(s, fleet, work, clients, scheduling)


def _measure_with(s: Setup, fleet: FleetProcess, work: Path, clients: list[Service],
                  scheduling: str) -> RunResult:
    try:
        begin = time.monotonic() + _GO_AFTER_S
        lo = begin + s.warmup_s
        hi = lo + s.duration_s
        (work / "go.tmp").write_text(f"{begin!r} {lo!r} {hi!r}")
        (work / "go.tmp").rename(work / "go")
        time.sleep(max(0.0, lo - time.monotonic()))
        emu = fleet.pids()
        cpu0, cli0, t0 = fleet.cpu_seconds(), _cpu([c.pid for c in clients]), time.monotonic()
        wait0 = _runqueue_wait_s(emu)
        h0, w0, a0 = _scrape(fleet.urls)
        time.sleep(max(0.0, hi - time.monotonic()))
        cpu1, cli1, t1 = fleet.cpu_seconds(), _cpu([c.pid for c in clients]), time.monotonic()
        wait1 = _runqueue_wait_s(emu)
        h1, w1, a1 = _scrape(fleet.urls)
        for c in clients:
            code = c.proc.wait(timeout=120 + s.max_tokens * PER_TOKEN_MS / 1e3)
            if code != 0:
                log = (work / f"{c.name.removeprefix('fidelity-')}.log").read_text()[-2000:]
                raise RuntimeError(f"{c.name} exited with {code}:\n{log}")
    finally:
        for c in clients:
            c.stop()
    end, _, _ = _scrape(fleet.urls)
    if fleet.poll() is not None:
        raise RuntimeError(f"the emulator fleet exited with {fleet.poll()}")
    docs = [json.loads((work / f"client-{i}.json").read_text()) for i in range(s.clients)]
    late = np.concatenate([np.load(work / f"client-{i}.npy") for i in range(s.clients)],
                          axis=1)
    first, later = h1["first"] - h0["first"], h1["later"] - h0["later"]
    both = first + later
    wall = t1 - t0
    tokens = int(both.count)
    cpu = cpu1 - cpu0
    serving = len(emu) - 1 if len(emu) > 1 else 1  # a fleet's supervisor serves nothing
    rate = tokens / (a1 - a0)
    return RunResult(
        streams=s.streams, replicas=s.replicas, processes=s.processes, clients=s.clients,
        tick_ms=s.tick_ms, write_budget_per_s=s.write_budget, duration_s=round(wall, 3),
        tokens=tokens, tokens_per_s=round(rate, 1),
        server_first_p50_ms=_ms(first.quantile_bound(0.5)),
        server_first_p99_ms=_ms(first.quantile_bound(0.99)),
        server_first_max_ms=_ms(first.max_bound()),
        server_later_p50_ms=_ms(later.quantile_bound(0.5)),
        server_later_p99_ms=_ms(later.quantile_bound(0.99)),
        server_later_max_ms=_ms(later.max_bound()),
        server_all_p99_ms=_ms(both.quantile_bound(0.99)),
        client_p50_ms=_q(late[0], 50), client_p99_ms=_q(late[0], 99),
        client_max_ms=round(float(late[0].max()), 3) if late.shape[1] else math.nan,
        client_first_p99_ms=_q(late[0][late[1] > 0], 99),
        emulator_cpu_us_per_token=round(cpu / wall / rate * 1e6, 2) if tokens else math.nan,
        emulator_cpu_cores=round(cpu / wall, 3),
        client_cpu_cores=round((cli1 - cli0) / wall, 3),
        emulator_runqueue_wait_share=round((wait1 - wait0) / wall / serving, 3),
        client_tokens_total=sum(int(d["tokens_total"]) for d in docs),
        server_tokens_total=int(end["first"].count + end["later"].count),
        client_requests_total=sum(int(d["requests_total"]) for d in docs),
        server_first_total=int(end["first"].count),
        writes_per_s=round((w1 - w0) / (a1 - a0), 1),
        emulator_cpu_us_per_write=round(cpu / wall / ((w1 - w0) / (a1 - a0)) * 1e6, 2)
        if w1 > w0 else math.nan,
        client_read_ms=s.client_read_ms, client_nice=s.client_nice,
        emulator_scheduling=scheduling,
    )


def run_one(s: Setup) -> RunResult:
    """One measurement on a fresh fleet and fresh clients."""
    slots = math.ceil(s.streams / s.replicas)
    with tempfile.TemporaryDirectory(prefix="lpu-fidelity-") as tmp:
        work = Path(tmp)
        toml = work / "bench.toml"
        toml.write_text(_artifact_toml(slots, s.max_tokens))
        with running_fleet(str(toml), s.replicas, s.processes,
                           args=["--tick-ms", str(s.tick_ms), "--write-budget",
                                 str(s.write_budget)], stderr=work / "emulator.log") as fleet:
            return _measure(s, fleet, work)


def _problems(r: RunResult) -> list[str]:
    out = []
    if r.server_tokens_total != r.client_tokens_total:
        out.append(f"{r.streams} streams: the emulator counted {r.server_tokens_total} tokens,"
                   f" the clients received {r.client_tokens_total}")
    if r.server_first_total != r.client_requests_total:
        out.append(f"{r.streams} streams: {r.server_first_total} first tokens counted for"
                   f" {r.client_requests_total} requests")
    if r.tokens == 0:
        out.append(f"{r.streams} streams: no token in the measured window")
    return out


def _row(r: RunResult) -> str:
    return (f"{r.streams:>7} {r.tokens_per_s:>9.0f} "
            f"{r.server_first_p50_ms:>6g}/{r.server_first_p99_ms:<6g}/{r.server_first_max_ms:<6g} "
            f"{r.server_later_p50_ms:>6g}/{r.server_later_p99_ms:<6g}/{r.server_later_max_ms:<6g} "
            f"{r.client_p50_ms:>7.1f}/{r.client_p99_ms:<7.1f}/{r.client_max_ms:<7.1f} "
            f"{r.emulator_cpu_us_per_token:>6.2f} {r.emulator_cpu_cores:>5.2f} "
            f"{r.client_cpu_cores:>5.2f} {r.emulator_runqueue_wait_share:>5.0%} "
            f"{r.writes_per_s:>8.0f} {r.emulator_cpu_us_per_write:>6.1f}")


_HEAD = (f"{'streams':>7} {'tok/s':>9} {'srv first p50/p99/max':>20} "
         f"{'srv later p50/p99/max':>20} {'client p50/p99/max ms':>23} {'us/tok':>6} "
         f"{'emu':>5} {'cli':>5} {'wait':>5} {'writes/s':>8} {'us/wr':>6}")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, nargs="+", default=[100, 300, 500, 1000])
    p.add_argument("--replicas", type=int, default=None,
                   help="emulated replicas (default: as many as --processes)")
    p.add_argument("--processes", type=int, default=None,
                   help="emulator processes (default: one per core)")
    p.add_argument("--clients", type=int, default=2, help="load generator processes")
    p.add_argument("--tick-ms", type=float, default=1.5)
    p.add_argument("--write-budget", type=float, default=25000.0,
                   help="emulator writes per second per replica (0: unbounded)")
    p.add_argument("--client-read-ms", type=float, default=20.0,
                   help="the clients read each connection every this many ms (0: every"
                   " write as it arrives, a client wake-up per emulator write)")
    p.add_argument("--client-nice", type=int, default=10,
                   help="the client processes' nice value above this one (they share its"
                   " session, so it ranks them below the emulator when both want a core)")
    p.add_argument("--realtime", action="store_true",
                   help="run the emulator processes under SCHED_FIFO (needs CAP_SYS_NICE;"
                   " without it the run says SCHED_OTHER); the clients stay SCHED_OTHER")
    p.add_argument("--max-tokens", type=int, default=300, help="tokens per request")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke test: 4 and 12 streams, about a second each; checks only"
                   " that the histogram counts every token received (writes nothing)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/emulator_fidelity.json"))
    p.add_argument("--variant-of", type=Path, default=None,
                   help="add this run to that result file's variants (other settings measured"
                   " in the same session) and rewrite its Markdown, instead of writing --out")


def execute(args: argparse.Namespace) -> int:
    if args.quick:
        args.streams, args.max_tokens, args.warmup, args.duration = [4, 12], 40, 0.3, 1.0
    processes = args.processes or default_processes(10**6)
    replicas = args.replicas or processes
    results: list[RunResult] = []
    problems: list[str] = []
    load_before = load_average()
    print(_HEAD, flush=True)
    for streams in args.streams:
        setup = Setup(streams, replicas, min(processes, replicas), args.clients,
                       args.tick_ms, args.write_budget, args.max_tokens, args.warmup,
                       args.duration, args.client_read_ms, args.client_nice, args.realtime)
        try:
            r = run_one(setup)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{streams} streams: {exc}", file=sys.stderr)
            return 1
        print(_row(r), flush=True)
        results.append(r)
        problems += _problems(r)
    for p in problems:
        print(f"emulator-fidelity: {p}", file=sys.stderr)
    if args.quick:
        return 1 if problems else 0
    doc = {
        "command": shlex.join(["lpu-bench", *sys.argv[1:]]),
        "machine": describe(),
        "prefill_ms": PREFILL_MS,
        "per_token_ms": PER_TOKEN_MS,
        "max_tokens": args.max_tokens,
        # The load average cannot tell what else ran: the report gives it, says no more.
        "load_note": f"Load average (1 min) {load_before} before the runs and"
                     f" {load_average()} after.",
        "results": [asdict(r) for r in results],
    }
    out = args.out
    if args.variant_of is not None:
        out = args.variant_of
        main = json.loads(out.read_text())
        main.setdefault("variants", []).append(
            {"command": doc["command"], "load_note": doc["load_note"], "results": doc["results"]})
        doc = main
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    md = write_markdown(doc, out.with_suffix(".md"))
    print(f"written: {out}, {md}")
    return 1 if problems else 0
