"""``lpu-bench scale-out``: 1, 2 and 4 router processes in front of the same backends, overloaded.

Each cell of the run starts fresh processes: two emulator processes (two "hosts", one backend
each, :data:`SLOTS` slots, real timings at ``--time-scale``), then a router layout:

* ``1 process``: one ``lpu-router serve``;
* ``workers 2`` / ``workers 4``: one router with ``--workers N`` (one port, N processes);
* ``2 routers`` / ``4 routers``: N separate ``lpu-router serve`` processes, no shared files,
  traffic spread over them round robin, sharing Redis for the tenant limits when
  ``redis-server`` is there (``[limits] store = "redis"``);
* the same with ``schedule_from_answers = false`` (``/load`` polls and deadline refusals only):
  what the backend's schedule on every answer (``x-lpu-schedule``) saves.

A Poisson open loop at ``rate x capacity`` (capacity = slots / service time of the fixed output
length) sends streamed chat requests. Per cell, from the client, the emulators' recorded
schedules (``GET /admin/schedule``: the schedule's own times) and the routers' ``/metrics``:

* goodput: completions whose first token came within the TTFT SLO (client TTFT), per second,
  as a fraction of capacity;
* TTFT SLO violations among admitted requests: on the backends' schedule (first token later
  than the request's own ``x-lpu-deadline-ms``: exact) and at the client (TTFT above the SLO:
  includes this machine's scheduling delays);
* refusal latency p50/p99 at the client; backend deadline refusals and retries per admitted
  request (``upstream_errors{kind="deadline"}``, ``retries``).

Then the throughput and CPU per request of ``--workers 2`` vs ``--workers 1`` with ``wrk``
against the canned upstream (``benchmarks/overhead``'s pieces), and the per-request cost of the
piggyback's parse and merge (:mod:`benchmarks.scale_out_cost`) and, for option (a), a per-host
admission owner over a Unix socket (:mod:`benchmarks.uds_owner`). ``--quick``: one short cell per
layout kind, under 60 s (tests/integration/test_scale_out_quick.py).

Example::

    lpu-bench scale-out --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.processes import Service, free_port, start, tree_cpu_seconds, url_in
from benchmarks.scale_out_cost import piggyback_cost
from benchmarks.scale_out_load import (
    API_KEY,
    MODEL,
    TOKENS,
    TTFT_SLO_S,
    observe,
    open_loop,
    summarize,
)
from benchmarks.scale_out_report import markdown
from benchmarks.scale_out_wrk import workers_throughput
from benchmarks.uds_owner import measure as uds_measure
from lpu_protocol.artifact import builtin_artifact

__all__ = ["HELP", "Layout", "configure", "execute", "run"]

HELP = "1, 2 and 4 router processes (workers, replicas) in front of the same backends"

ARTIFACT = "llama-3.1-8b-2k"
SLOTS = 8
"""The artifact's slots, per backend."""
HOSTS = 2
"""Emulator processes, one backend each."""


@dataclass(frozen=True)
class Layout:
    name: str
    routers: int
    workers: int
    piggyback: bool = True
    poll_s: float = 0.05
    """``admission.load_poll_interval_s`` (the default: 0.05)."""


LAYOUTS = (
    Layout("1 process", 1, 1),
    Layout("workers 2", 1, 2),
    Layout("workers 4", 1, 4),
    Layout("2 routers", 2, 1),
    Layout("4 routers", 4, 1),
    Layout("workers 4, no piggyback", 1, 4, piggyback=False),
    Layout("4 routers, no piggyback", 4, 1, piggyback=False),
    # Polls 10x rarer: what the schedule on answers does when /load says little.
    Layout("4 routers, /load every 0.5 s", 4, 1, poll_s=0.5),
    Layout("4 routers, /load every 0.5 s, no piggyback", 4, 1, piggyback=False, poll_s=0.5),
)
QUICK = (LAYOUTS[0], LAYOUTS[1], LAYOUTS[3], LAYOUTS[6])


def capacity(time_scale: float) -> float:
    """Completions per second the backends can make at the fixed output length."""
    art = builtin_artifact(ARTIFACT).scaled(time_scale)
    return HOSTS * art.slots / art.service_time(TOKENS)


def router_toml(backends: list[str], *, time_scale: float, piggyback: bool, poll_s: float,
                redis_url: str | None, target_utilization: float = 1.0) -> str:
    urls = ", ".join(f'"{u}"' for u in backends)
    limits = ""
    if redis_url is not None:
        # Limits far above the load: every request takes the shared store's check and charge.
        limits = f"""
[limits]
store = "redis"
redis_url = "{redis_url}"

[[tenants]]
name = "bench"
api_keys = ["{API_KEY}"]
requests_per_minute = 10000000
"""
    return f"""[server]
host = "127.0.0.1"
port = 0

[admission]
mode = "timeline"
schedule_from_answers = {"true" if piggyback else "false"}
load_poll_interval_s = {poll_s}

[[buckets]]
name = "small"
model = "{MODEL}"
artifact = "{ARTIFACT}"
time_scale = {time_scale}
backends = [{urls}]
ttft_slo_s = {TTFT_SLO_S}
target_utilization = {target_utilization}
{limits}"""


def _start_emulators(workdir: Path, time_scale: float) -> list[Service]:
    return [start([sys.executable, "-m", "lpu_emulator", "--artifact", ARTIFACT,
                   "--time-scale", str(time_scale), "--seed", str(i), "--port", "0"],
                  name=f"emulator{i}", ready_lines=1, stderr=workdir / f"emulator{i}.log")
            for i in range(HOSTS)]


def _start_routers(workdir: Path, layout: Layout, config: Path) -> list[Service]:
    out: list[Service] = []
    for i in range(layout.routers):
        cmd = [sys.executable, "-m", "router", "serve", str(config)]
        if layout.workers > 1:
            cmd += ["--workers", str(layout.workers)]
        out.append(start(cmd, name=f"router{i}", ready_lines=1,
                         stderr=workdir / f"router{i}.log", timeout_s=60.0))
    return out


def _redis(workdir: Path) -> tuple[Service | None, str | None]:
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        return None, None
    port = free_port()
    service = start([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no"], name="redis", ready_lines=1,
                    stderr=workdir / "redis.log")
    time.sleep(0.3)
    return service, f"redis://127.0.0.1:{port}/0"


def run_cell(layout: Layout, rate_x: float, *, duration_s: float, time_scale: float,
             redis_url: str | None, seed: int, workdir: Path,
             target_utilization: float = 1.0) -> dict[str, Any]:
    """One layout at ``rate_x`` times capacity, on fresh processes."""
    cap = capacity(time_scale)
    emulators = _start_emulators(workdir, time_scale)
    routers: list[Service] = []
    try:
        backends = [url_in(e.lines[0]) for e in emulators]
        config = workdir / "router.toml"
        config.write_text(router_toml(backends, time_scale=time_scale, piggyback=layout.piggyback,
                                      poll_s=layout.poll_s, redis_url=redis_url,
                                      target_utilization=target_utilization))
        routers = _start_routers(workdir, layout, config)
        urls = [url_in(r.lines[0]) for r in routers]
        time.sleep(0.5)  # first /load polls
        cpu0 = sum(tree_cpu_seconds(r.proc.pid) for r in routers)
        shots = asyncio.run(open_loop(urls, rate_x * cap, duration_s, seed))
        cpu = sum(tree_cpu_seconds(r.proc.pid) for r in routers) - cpu0
        time.sleep(0.3)
        counts, entries = asyncio.run(observe(urls, backends))
    finally:
        for s in routers + emulators:
            s.stop()
    cell = {"layout": layout.name, "routers": layout.routers, "workers": layout.workers,
            "piggyback": layout.piggyback, "poll_s": layout.poll_s, "rate_x": rate_x,
            "rate_rps": rate_x * cap,
            **summarize(shots, counts, entries, cap, duration_s)}
    cell["router_cpu_ms_per_request"] = cpu / max(len(shots), 1) * 1e3
    return cell


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                   help="folder for scale_out.json and scale_out.md")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per cell")
    p.add_argument("--rates", default="1.5,2", help="offered load, times capacity")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="emulator time scale (1: the artifact's own timings)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target-utilization", type=float, default=1.0,
                   help="the bucket's target_utilization (default 1.0: the utilization guard"
                        " never sheds, so the cells compare the timelines; the router's own"
                        " default is 0.85)")
    p.add_argument("--no-redis", action="store_true", help="separate routers without Redis")
    p.add_argument("--wrk-duration", type=int, default=10,
                   help="seconds per wrk run of --workers 1 and 2 (0: skip)")
    p.add_argument("--quick", action="store_true",
                   help="one short cell per layout kind, under 60 s (for the test)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the results document."""
    rates = [float(x) for x in args.rates.split(",")]
    layouts = QUICK if args.quick else LAYOUTS
    duration = 3.0 if args.quick else args.duration
    if args.quick:
        rates = rates[-1:]
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        workdir = Path(tmp)
        redis, redis_url = (None, None) if args.no_redis else _redis(workdir)
        try:
            for rate_x in rates:
                for layout in layouts:
                    shared = redis_url if layout.routers > 1 or layout.workers > 1 else None
                    redis_cpu0 = tree_cpu_seconds(redis.proc.pid) if redis else 0.0
                    cell = run_cell(layout, rate_x, duration_s=duration,
                                    time_scale=args.time_scale, redis_url=shared,
                                    seed=args.seed, workdir=workdir,
                                    target_utilization=args.target_utilization)
                    cell["redis"] = shared is not None
                    # Redis's CPU over the cell (its idle timer included) per admitted request.
                    cell["redis_cpu_ms_per_admitted"] = (
                        (tree_cpu_seconds(redis.proc.pid) - redis_cpu0) / cell["admitted"] * 1e3
                        if redis is not None and shared and cell["admitted"] else None)
                    cells.append(cell)
                    print(_line(cell), flush=True)
        finally:
            if redis is not None:
                redis.stop()
        wrk = uds = None
        if not args.quick and args.wrk_duration > 0:
            wrk = workers_throughput(workdir, args.wrk_duration)
        if not args.quick:
            uds = uds_measure(duration_s=5.0)
    return {
        "command": "lpu-bench scale-out" + (" --quick" if args.quick else ""),
        "machine": machine.describe(),
        "settings": {"artifact": ARTIFACT, "hosts": HOSTS, "slots_per_host": SLOTS,
                     "output_tokens": TOKENS, "ttft_slo_s": TTFT_SLO_S,
                     "time_scale": args.time_scale, "duration_s": duration,
                     "capacity_rps": capacity(args.time_scale), "seed": args.seed,
                     "target_utilization": args.target_utilization,
                     "redis": redis_url is not None},
        "cells": cells,
        "redis_cpu_ms_per_admitted": _median([c["redis_cpu_ms_per_admitted"] for c in cells
                                              if c["redis_cpu_ms_per_admitted"] is not None]),
        "workers_wrk": wrk,
        "uds_owner": uds,
        "piggyback_cost": piggyback_cost(),
    }


def _median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


def _line(c: dict[str, Any]) -> str:
    return (f"{c['layout']:<42} {c['rate_x']:.1f}x goodput {c['goodput_fraction']:.3f}"
            f" late(sched/client) {c['ttft_violations_schedule']}/{c['ttft_violations_client']}"
            f" backend refusals/adm {c['backend_refusals_per_admitted']:.3f}"
            f" retries/adm {c['retries_per_admitted']:.3f}")


def execute(args: argparse.Namespace) -> int:
    doc = run(args)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale_out.json").write_text(json.dumps(doc, indent=2) + "\n")
        (args.out / "scale_out.md").write_text(markdown(doc))
    else:
        print(json.dumps({"cells": doc["cells"]}, indent=1))
    return 0


