"""``lpu-bench trace-soak``: the shipped trace at its own speed through emulator processes and a
router with ``--workers 2``, as a soak.

Example::

    lpu-bench trace-soak                # the whole hour (~57 min), to benchmarks/results
    lpu-bench trace-soak --window-s 60  # a minute of the trace at its mean rate
    lpu-bench trace-soak --quick        # 15 s of it (the CI test's run)

The trace (experiment 8's: the Azure LLM inference trace 2023, code service, 8,819 requests over
an hour, CC-BY; :data:`benchmarks.experiments.exp8_trace_replay.CITATION`) at 1x: its own
arrival times, each request with the trace's prompt length (a prompt the router counts as
``ContextTokens``) and ``max_tokens`` = its ``GeneratedTokens`` (the emulators produce exactly
the allowance). Placed by the router's own bucket table, as experiment 8 does
(:func:`~benchmarks.experiments.exp8_trace_replay.home_buckets`); the requests no bucket fits
are left out.

Processes (all real, all on loopback): one ``lpu-emulator`` process per replica of
:data:`LAYOUT` (``short`` = ``llama-3.1-8b-2k`` x2, ``medium`` = ``llama-3.1-8b-8k`` x2: four
emulator processes, the artifacts' own timings), the router as ``lpu-router serve CONFIG
--workers 2`` (timeline admission with spill, TTFT SLO 4x each shape's prefill, experiment 8's
rule), and the open-loop load generator (:func:`benchmarks.loadgen.run_load`) in this process.

What it shows (:func:`benchmarks.trace_soak_figures.claims`): every admitted request ends once
(on exactly one recorded schedule; experiment 8's
:func:`~benchmarks.experiments.replay_figures.ended_once_problems`), the router's pod-wide
books agree with the client (:func:`benchmarks.trace_soak_figures.books`), no admitted
request's first token is scheduled later than its home bucket's SLO after its arrival at the
emulator (:func:`~benchmarks.experiments.replay_figures.arm_figures`' ``violations``), and the
emulators' own lateness histogram has p99 <= :data:`LATENESS_BOUND_S`.

The recorded schedules are read every :data:`POLL_S` during the run and merged as they come
(an emulator keeps its latest 4,096 requests; merging as they come keeps the memory bounded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks import machine
from benchmarks.experiments import exp8_trace_replay as exp8
from benchmarks.experiments import replay_figures
from benchmarks.experiments.rig import Pool, router_config, to_toml
from benchmarks.loadgen import LoadConfig, run_load
from benchmarks.processes import Service, rss_kib, start, tree_cpu_seconds, url_in
from benchmarks.progress import Progress
from benchmarks.prompts import PromptFactory
from benchmarks.schedule_polling import polling, read_schedule
from benchmarks.soak import server_counts
from benchmarks.trace_soak_figures import books, claims, lateness
from benchmarks.trace_soak_report import markdown
from benchmarks.traces import read_trace
from benchmarks.workload import PlannedRequest
from lpu_emulator.__main__ import build_parser as emulator_parser

__all__ = ["EMULATORS", "HELP", "LATENESS_BOUND_S", "LAYOUT", "QUICK_WINDOW_S", "WORKERS",
           "configure", "execute", "soak"]

HELP = "the shipped trace at 1x through 4 emulator processes and a 2-worker router, as a soak"

LAYOUT: exp8.Layout = (("short", "llama-3.1-8b-2k", 2), ("medium", "llama-3.1-8b-8k", 2))
WORKERS = 2
"""The router's worker processes."""
LATENESS_BOUND_S = 0.005
"""The emulator's lateness target (p99, server side): the issue's 5 ms."""
QUICK_WINDOW_S = 15.0
"""``--quick``: this many trace seconds at the hour's mean rate (:func:`exp8.typical_window`)."""
POLL_S = 60.0
"""Seconds between reads of the recorded schedules (a replica gets well under 4,096 requests
a minute at 1x)."""
EMULATORS = ("separate", "fleet")
"""How the emulator processes are started (:func:`_start_emulators`); the first is the
default."""
_START_TIMEOUT_S = 60.0
_SETTLE_S = 15.0
"""Longest wait for the router's in-flight gauge to reach 0 after the load (the sampled gauges
lag by up to 0.5 s)."""
_PREFIX = "soak-"


def _pools() -> list[Pool]:
    """The router's buckets: experiment 8's SLO rule, timeline admission with spill."""
    return [Pool(b, art, r, {"ttft_slo_s": exp8.SLO_PREFILLS * art.prefill_s, "spill": True})
            for b, art, r in exp8.artifacts(1.0, LAYOUT)]


def _start_emulators(workdir: Path, seed: int, mode: str
                     ) -> tuple[list[Service], dict[str, list[str]]]:
    """The replicas of :data:`LAYOUT`, one emulator process each: ``separate``, one
    ``lpu-emulator`` per replica; ``fleet``, one ``lpu-emulator --replicas R --processes R``
    per bucket (its children serve one replica each). Replica ``k`` of the layout gets seed
    ``seed + k`` either way."""
    procs: list[Service] = []
    backends: dict[str, list[str]] = {}
    k = 0
    try:
        for bucket, artifact, replicas in LAYOUT:
            blocks = [(f"{bucket}{i}", 1) for i in range(replicas)] if mode == "separate" \
                else [(bucket, replicas)]
            for label, n in blocks:
                name = f"emulator-{label}"
                fleet = [] if mode == "separate" else ["--replicas", str(n), "--processes", str(n)]
                # It prints "lpu-emulator: ... at http://127.0.0.1:PORT/v1" per replica once
                # they serve.
                proc = start([sys.executable, "-m", "lpu_emulator", "--artifact", artifact,
                              "--port", "0", "--seed", str(seed + k), *fleet], name=name,
                             ready_lines=n, timeout_s=_START_TIMEOUT_S,
                             stderr=workdir / f"{name}.log")
                procs.append(proc)
                k += n
                backends.setdefault(bucket, []).extend(url_in(line) for line in proc.lines)
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs, backends


def _emulator_mode(mode: str) -> str:
    """How the emulators ran, with the delivery settings they took (their CLI's defaults)."""
    cli = emulator_parser()
    how = ("one lpu-emulator process per replica (--replicas 1)" if mode == "separate" else
           "one `lpu-emulator --replicas 2 --processes 2` per bucket (a child process per"
           " replica)")
    return (f"{how}, default delivery settings --tick-ms {cli.get_default('tick_ms'):g}"
            f" --write-budget {cli.get_default('write_budget'):g}")


def _start_router(workdir: Path, backends: Mapping[str, list[str]]) -> Service:
    conf = workdir / "router.toml"
    conf.write_text(to_toml(router_config(_pools(), backends, {"mode": "timeline"})))
    return start([sys.executable, "-m", "router", "--log-level", "WARNING", "serve", str(conf),
                  "--workers", str(WORKERS)], name="router", ready_lines=1,
                 timeout_s=_START_TIMEOUT_S, stderr=workdir / "router.log")


Schedules = dict[str, dict[tuple[str, float], Mapping[str, Any]]]
"""Per emulator URL: its recorded entries by (request id, arrival), the latest read of each."""


def _reader(urls: Sequence[str], into: Schedules, errors: list[str]
            ) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
    """One read of every emulator's schedule, merged into ``into``; a read that fails is noted
    in ``errors`` (an hour's run must not end on one failed read; a missing request shows in
    the books)."""
    async def read(session: aiohttp.ClientSession) -> None:
        for url in urls:
            try:
                entries = await read_schedule(session, url)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
                errors.append(f"{url}: {type(exc).__name__}: {exc}"[:200])
                continue
            for e in entries:
                into.setdefault(url, {})[(str(e["request_id"]), float(e["arrival"]))] = e
    return read


async def _settled(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The router's books once nothing is in flight (or after :data:`_SETTLE_S`)."""
    deadline = time.monotonic() + _SETTLE_S
    while True:
        async with session.get(url + "/metrics") as r:
            counts = server_counts(await r.text())
        if counts["in_flight"] == 0 or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.2)


async def _texts(session: aiohttp.ClientSession, urls: Sequence[str]) -> list[str]:
    out = []
    for url in urls:
        async with session.get(url + "/metrics") as r:
            out.append(await r.text())
    return out


def _cpu(procs: Sequence[Service]) -> dict[str, float]:
    return {p.name: tree_cpu_seconds(p.pid) for p in procs}


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the router's supervisor and workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return rss_kib(pid) + sum(_tree_rss_kib(int(c)) for c in children)


def _rss(procs: Sequence[Service]) -> dict[str, int]:
    return {p.name: _tree_rss_kib(p.pid) for p in procs}


def _log_tails(workdir: Path, lines: int = 8) -> dict[str, dict[str, Any]]:
    """Each process's stderr log: how many lines it wrote, and its last ``lines``."""
    out: dict[str, dict[str, Any]] = {}
    for log in sorted(workdir.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        out[log.stem] = {"lines": len(text), "tail": text[-lines:]}
    return out


async def _run(planned: list[PlannedRequest], workdir: Path, seed: int, progress: bool,
               emulators_mode: str) -> dict[str, Any]:
    """Start the processes, replay ``planned``, read everything back; stop the processes."""
    emulators, backends = await asyncio.to_thread(_start_emulators, workdir, seed,
                                                  emulators_mode)
    procs = list(emulators)
    try:
        router = await asyncio.to_thread(_start_router, workdir, backends)
        procs.append(router)
        url = url_in(router.lines[0])  # "lpu-router serving on http://127.0.0.1:PORT"
        await asyncio.sleep(1.5)  # the workers' first health probes and /load polls
        urls = [u for us in backends.values() for u in us]
        schedules: Schedules = {}
        poll_errors: list[str] = []
        drain = 2 * max(exp8.SLO_PREFILLS * a.prefill_s + a.service_time(a.max_output_tokens)
                        for _, a, _ in exp8.artifacts(1.0, LAYOUT))
        load = LoadConfig(url, _pools()[0].artifact.model, drain_timeout_s=drain,
                          request_id_prefix=_PREFIX)
        span = planned[-1].at_s if planned else 0.0
        shown = Progress(len(planned), span, plain_every_s=60.0) if progress else None
        cpu0, rss0, load0, t0 = _cpu(procs), _rss(procs), os.getloadavg(), time.time()
        async with polling(_reader(urls, schedules, poll_errors), POLL_S):
            result = await run_load(planned, load, PromptFactory(np.random.default_rng(seed)),
                                    progress=shown)
        async with aiohttp.ClientSession() as session:
            server = await _settled(session, url)
            texts = await _texts(session, urls)
        cpu1, rss1, load1 = _cpu(procs), _rss(procs), os.getloadavg()
    finally:
        await asyncio.to_thread(lambda: [p.stop() for p in reversed(procs)])
    logs = _log_tails(workdir)
    bucket_of = {u: b for b, us in backends.items() for u in us}
    served = replay_figures.merge_schedules(
        [(bucket_of[u], list(entries.values())) for u, entries in schedules.items()])
    return {"records": result.records, "served": served, "server": server, "texts": texts,
            "elapsed_s": result.elapsed_s, "started_unix": t0,
            "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
            "rss_kib": {k: {"start": rss0[k], "end": rss1[k]} for k in rss0},
            "loadavg": {"start": list(load0), "end": list(load1)},
            "schedule_entries": {u: len(e) for u, e in schedules.items()},
            "schedule_read_errors": poll_errors[:20], "logs": logs}


async def soak(*, window_s: float | None = None, start_s: float | None = None, seed: int = 1,
               progress: bool = False, emulators: str = EMULATORS[0]) -> dict[str, Any]:
    """Run the soak on the trace window ``[start_s, start_s + window_s)`` (trace seconds; None:
    the whole trace; ``start_s`` None: 0 for the whole trace, else the first window at the
    hour's mean rate) and return its document (figures, books, lateness and claims).
    ``emulators``: one of :data:`EMULATORS` (:func:`_start_emulators`)."""
    if emulators not in EMULATORS:
        raise ValueError(f"emulators: one of {', '.join(EMULATORS)}, got {emulators!r}")
    trace = read_trace(exp8.TRACE, "azure")
    homes = exp8.home_buckets(trace, LAYOUT)
    length = trace.duration_s + 1e-6 if window_s is None else window_s
    if start_s is None:
        start_s = 0.0 if window_s is None else exp8.typical_window(trace, length)
    replay = exp8.Replay("1x", 1.0, 1.0, start_s, length, LAYOUT)
    planned = exp8.plan_window(trace, homes, replay)
    buckets = [b for b, _, _ in LAYOUT]
    with tempfile.TemporaryDirectory(prefix="trace-soak-") as tmp:
        got = await _run(planned, Path(tmp), seed, progress, emulators)
    records, served = got["records"], got["served"]
    figures = replay_figures.arm_figures(
        planned, records, served, prefix=_PREFIX, buckets=buckets, slo_s=exp8.slo_s(LAYOUT),
        scale=1.0, window_s=length,
        slots={b: a.slots * r for b, a, r in exp8.artifacts(1.0, LAYOUT)})
    figures["ended_once_problems"] = replay_figures.ended_once_problems(
        planned, records, served, _PREFIX)[:20]
    doc: dict[str, Any] = {
        "command": "lpu-bench trace-soak" + ("" if window_s is None else
                                             f" --window-s {window_s:g} --start-s {start_s:g}")
                   + ("" if emulators == EMULATORS[0] else f" --emulators {emulators}"),
        "machine": machine.describe(),
        "settings": {
            "trace": exp8.TRACE.name, "citation": exp8.CITATION,
            "trace_requests": len(trace), "trace_duration_s": trace.duration_s,
            "start_s": start_s, "window_s": length, "requests": len(planned),
            "output_tokens": sum(p.max_tokens for p in planned),
            "unplaced_in_window": int(sum(
                h is None for h, t in zip(homes, trace.at_s.tolist(), strict=True)
                if start_s <= t < start_s + length)),
            "load": 1.0, "time_scale": 1.0, "layout": [list(x) for x in LAYOUT],
            "slo_s": exp8.slo_s(LAYOUT), "admission": "timeline, spill on",
            "emulator_processes": sum(r for _, _, r in LAYOUT),
            "emulator_mode": _emulator_mode(emulators), "emulators": emulators,
            "router": f"lpu-router serve CONFIG --workers {WORKERS}", "seed": seed,
            "lateness_bound_s": LATENESS_BOUND_S},
        "elapsed_s": got["elapsed_s"], "loadavg": got["loadavg"], "cpu_s": got["cpu_s"],
        "rss_kib": got["rss_kib"], "schedule_entries": got["schedule_entries"],
        "schedule_read_errors": got["schedule_read_errors"], "logs": got["logs"],
        "replay": figures,
        "books": books(got["server"], records),
        "lateness": lateness(got["texts"], LATENESS_BOUND_S),
    }
    doc["claims"] = claims(doc)
    return doc


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window-s", type=float, default=None,
                   help="replay this many trace seconds (default: the whole trace)")
    p.add_argument("--start-s", type=float, default=None,
                   help="the window's start, trace seconds (default: 0 for the whole trace,"
                        " else the first window at the hour's mean rate)")
    p.add_argument("--quick", action="store_true",
                   help=f"--window-s {QUICK_WINDOW_S:g} (the CI test's run)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--emulators", choices=EMULATORS, default=EMULATORS[0],
                   help="separate: one lpu-emulator per replica; fleet: one lpu-emulator"
                        " --processes per bucket")
    p.add_argument("--source", default=None,
                   help="what code ran (e.g. the commit a snapshot was taken at), shown in the"
                        " results")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for trace_soak.json and trace_soak.md (default:"
                        " benchmarks/results for the whole trace, none for a window)")


def execute(args: argparse.Namespace) -> int:
    window = QUICK_WINDOW_S if args.quick else args.window_s
    doc = asyncio.run(soak(window_s=window, start_s=args.start_s, seed=args.seed,
                           progress=True, emulators=args.emulators))
    doc["source"] = args.source
    out: Path | None = args.out or (Path("benchmarks/results") if window is None else None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "trace_soak.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out / "trace_soak.md").write_text(markdown(doc))
    for c in doc["claims"]:
        print(f"{'held' if c['held'] else 'MISSED'}: {c['claim']}: {c['figures']}", flush=True)
    return 0 if all(c["held"] for c in doc["claims"]) else 1
