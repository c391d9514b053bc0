"""``lpu-bench overhead``: what the router costs per request, as ratios to a 25-line relay.

Example::

    lpu-bench overhead --duration 5 --out-dir benchmarks/results

One run measures, each in its own process: a canned upstream (``direct``), the reference relay,
the router (``lpu-router serve``, admission ``timeline``, default log level) and nginx (when
installed) in front of that upstream, over the matrix {non-streaming, streaming} x {40-character,
4 KB prompt}. Per cell, every target gets a warm-up, then ``--connections`` connections for
``--duration`` s (throughput; CPU per request from ``/proc``), then one connection for
``--duration`` s (p50 latency). Load: wrk when installed, a Python client otherwise (the
results say which). Written: ``NAME.json`` and ``NAME.md`` in ``--out-dir``, with the router's
ratios to the relay checked against issue 11's targets (:mod:`benchmarks.overhead.report`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.machine import describe
from benchmarks.overhead.canned_upstream import MODEL
from benchmarks.overhead.load import Load, drive, warm_up, wrk_path, wrk_version
from benchmarks.overhead.proxies import (
    PROXIES,
    Target,
    nginx_path,
    start_nginx,
    start_relay,
    start_router,
    start_upstream,
)
from benchmarks.overhead.report import (
    Figures,
    Targets,
    conclude,
    figures_dict,
    markdown,
    median_figures,
)

__all__ = ["HELP", "PROMPTS", "benchmark", "configure", "execute"]

HELP = "router CPU, throughput and added latency per request against a 25-line aiohttp relay"
MAX_TOKENS = 16
_PROSE = ("The router counts each prompt, picks the smallest compiled shape that fits it, asks"
          " the admission controller whether the request can meet its deadline, and relays the"
          " answer of the backend to the client byte for byte. ")
PROMPTS = {"40-character": 40, "4 KB": 4096}
"""Prompt sizes of the matrix (name -> characters)."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=int, default=5,
                   help="seconds per run (each target, cell and connection count; wrk's"
                        " unit is whole seconds)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds of the whole matrix (figures: medians over rounds, each ratio"
                        " taken within its round)")
    p.add_argument("--connections", type=int, default=32,
                   help="connections of the throughput and CPU run")
    p.add_argument("--warmup", type=int, default=300, help="warm-up requests per target and cell")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 s per run, a short warm-up, the upstream's own"
                        " throughput not measured")
    p.add_argument("--only", default=",".join(PROXIES),
                   help=f"comma-separated proxies to run, of {','.join(PROXIES)}")
    p.add_argument("--python-client", action="store_true",
                   help="use the Python client even when wrk is installed")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"),
                   help="write NAME.json and NAME.md here")
    p.add_argument("--name", default="overhead", help="file name of the results")
    p.add_argument("--label", default=None,
                   help="what code was measured (default: the git commit of the checkout)")


def prompt(chars: int) -> str:
    return (_PROSE * (chars // len(_PROSE) + 1))[:chars]


def body(stream: bool, chars: int) -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": MAX_TOKENS, "stream": stream,
                       "messages": [{"role": "user", "content": prompt(chars)}]}).encode()


@dataclass(frozen=True)
class _Settings:
    duration_s: int
    connections: int
    warmup: int
    measure_direct_throughput: bool
    wrk: str | None


def _measure(target: Target, payload: bytes, s: _Settings, workdir: Path) -> Figures:
    high: Load | None = None
    cpu: float | None = None
    if target.name != "direct" or s.measure_direct_throughput:
        before = target.cpu_seconds()
        high = drive(target.url, payload, connections=s.connections, duration_s=s.duration_s,
                     workdir=workdir, wrk=s.wrk)
        used = target.cpu_seconds() - before
        cpu = used / high.requests * 1e3 if high.requests else None
    low = drive(target.url, payload, connections=1, duration_s=s.duration_s,
                workdir=workdir, wrk=s.wrk)
    return Figures(rps=None if high is None else high.rps, cpu_ms_per_request=cpu,
                   p50_ms=low.p50_ms,
                   requests=low.requests + (high.requests if high else 0),
                   errors=low.errors + (high.errors if high else 0))


def _start(names: list[str], workdir: Path, upstream: str, nginx: str | None) -> list[Target]:
    started: list[Target] = []
    try:
        for name in names:
            if name == "relay":
                started.append(start_relay(workdir, upstream))
            elif name == "router":
                started.append(start_router(workdir, upstream))
            elif name == "nginx" and nginx is not None:
                started.append(start_nginx(nginx, workdir, upstream))
    except BaseException:
        for t in started:
            t.service.stop()
        raise
    return started


def _tools(wrk: str | None, nginx: str | None) -> dict[str, str]:
    tools = {"python": sys.version.split()[0], "aiohttp": version("aiohttp"),
             "uvloop": version("uvloop")}
    if wrk is not None:
        tools["wrk"] = wrk_version(wrk)
    if nginx is not None:
        out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
        tools["nginx"] = (out.stderr or out.stdout).strip().removeprefix("nginx version: nginx/")
    return tools


def code_label() -> str:
    """The checkout's commit, marked when router/ or lpu_protocol/ has uncommitted changes;
    "unknown" outside a git checkout."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "router", "lpu_protocol")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" with uncommitted changes to router/ or lpu_protocol/" if dirty else "")


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the matrix; return the JSON document (module docstring)."""
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(PROXIES)
    if unknown:
        raise SystemExit(f"--only: unknown proxies {sorted(unknown)} (known: {PROXIES})")
    wrk = None if args.python_client else wrk_path()
    nginx = nginx_path() if "nginx" in names else None
    s = _Settings(duration_s=1 if args.quick else args.duration, connections=args.connections,
                  warmup=30 if args.quick else args.warmup,
                  measure_direct_throughput=not args.quick, wrk=wrk)
    matrix = [(mode, label, chars) for mode in ("json", "stream")
              for label, chars in PROMPTS.items()]
    measured: dict[tuple[str, str], list[dict[str, Figures]]] = {
        (mode, label): [] for mode, label, _ in matrix}
    with tempfile.TemporaryDirectory(prefix="lpu-overhead-") as tmp:
        workdir = Path(tmp)
        upstream = start_upstream(workdir)
        targets = [upstream]
        try:
            targets += _start(names, workdir, upstream.url, nginx)
            # Rounds outermost: a busy spell of a shared machine then hits one round of
            # several cells rather than every round of one.
            for round_ in range(args.rounds):
                for mode, label, chars in matrix:
                    payload = body(mode == "stream", chars)
                    for t in targets:
                        warm_up(t.url, payload, s.warmup)
                    figures = {t.name: _measure(t, payload, s, workdir) for t in targets}
                    for name, f in figures.items():
                        print(f"  round {round_} {mode:6s} {label:12s} {name:6s} {_line(f)}",
                              flush=True)
                    measured[mode, label].append(figures)
        finally:
            for t in reversed(targets):
                t.service.stop()
    cells: list[dict[str, Any]] = []
    for mode, label, chars in matrix:
        rounds = measured[mode, label]
        cell: dict[str, Any] = {
            "mode": mode, "prompt": label, "prompt_chars": chars,
            "body_bytes": len(body(mode == "stream", chars)),
            "figures": {n: figures_dict(median_figures([r[n] for r in rounds]))
                        for n in rounds[0]},
            "rounds": [{n: figures_dict(f) for n, f in r.items()} for r in rounds]}
        cells.append(cell)
    conclusion = conclude(cells)
    nginx_state = "ran" if nginx is not None else \
        "not installed" if "nginx" in names else "not asked for (--only)"
    return {
        "command": shlex.join(["lpu-bench", *sys.argv[1:]]),
        "code": args.label or code_label(),
        "machine": describe(), "tools": _tools(wrk, nginx),
        "load_generator": "wrk (1 thread)" if wrk else
        "the Python client (aiohttp closed loop; it cannot saturate a fast proxy)",
        "nginx": nginx_state,
        "settings": {"rounds": args.rounds, "duration_s": s.duration_s,
                     "connections": s.connections,
                     "warmup_requests": s.warmup, "max_tokens": MAX_TOKENS,
                     "quick": bool(args.quick)},
        "targets": asdict(Targets()),
        "cells": cells,
        "verdict": conclusion,
    }


def _line(f: Figures) -> str:
    rps = "" if f.rps is None else f"{f.rps:8.0f} req/s  "
    cpu = "" if f.cpu_ms_per_request is None else f"cpu {f.cpu_ms_per_request:6.3f} ms/req  "
    return f"{rps}{cpu}p50@1 {f.p50_ms:6.3f} ms  errors {f.errors}"


def execute(args: argparse.Namespace) -> int:
    doc = benchmark(args)
    page = markdown(doc)
    print(page)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out_dir / f"{args.name}.md").write_text(page)
    print(f"wrote {args.out_dir / args.name}.json and .md")
    return 0
