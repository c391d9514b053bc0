"""``lpu-bench run``: one open-loop run against a server, results to a folder.

Example::

    lpu-bench run --url http://127.0.0.1:8080 --model llama-3.1-8b-instant \\
        --arrivals poisson --rate 20 --duration 30 --output-tokens fixed:64 \\
        --seed 1 --slo-ttft-ms 500 --out benchmarks/results/run-poisson-20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from benchmarks import arrivals
from benchmarks.lengths import parse_lengths
from benchmarks.loadgen import LoadConfig, RunResult, run_load
from benchmarks.metrics import Slo, summarize, timeseries
from benchmarks.progress import Progress
from benchmarks.prompts import PromptFactory
from benchmarks.report import markdown_summary, write_results
from benchmarks.workload import ARRIVAL_KINDS, WorkloadSpec, plan_requests

__all__ = ["HELP", "configure", "execute", "run_async"]

HELP = "send an open-loop load and record every request"
T = TypeVar("T")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", required=True, help="model name sent in each request")
    p.add_argument("--api", choices=("chat", "completion"), default="chat",
                   help="/v1/chat/completions (default) or /v1/completions")
    p.add_argument("--arrivals", choices=ARRIVAL_KINDS, default="poisson")
    p.add_argument("--rate", type=float, default=1.0, help="requests per second")
    p.add_argument("--duration", type=float, default=30.0, help="arrival window, seconds")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma: squared coefficient of variation of gaps (1 = Poisson)")
    p.add_argument("--steps", default=None,
                   help='step: "DURATION:RATE,..."; rates are fractions of --capacity if given')
    p.add_argument("--capacity", type=float, default=None, help="requests/s that --steps scales")
    p.add_argument("--trace", type=Path, default=None, help="trace file (CSV or JSONL)")
    p.add_argument("--prompt-tokens", default="fixed:100",
                   help="fixed:N | uniform:LO:HI | lognormal:MEDIAN:SIGMA[:MAX] | W*SPEC|W*SPEC")
    p.add_argument("--output-tokens", default="fixed:64", help="max_tokens per request, same forms")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-requests", type=int, default=100_000, help="cap on planned requests")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds to wait for stragglers after the last send")
    p.add_argument("--slo-ttft-ms", type=float, default=None)
    p.add_argument("--slo-e2e-ms", type=float, default=None)
    p.add_argument("--slo-tpot-ms", type=float, default=None)
    p.add_argument("--keep-gaps", action="store_true", help="store every inter-token gap")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--out", type=Path, required=True, help="results folder")


def _ms(v: float | None) -> float | None:
    return None if v is None else v / 1e3


def workload_from_args(args: argparse.Namespace) -> WorkloadSpec:
    steps: tuple[tuple[float, float], ...] = ()
    duration = args.duration
    if args.arrivals == "step":
        if not args.steps:
            raise ValueError("--arrivals step needs --steps")
        steps = tuple(arrivals.parse_steps(args.steps, args.capacity))
        duration = sum(d for d, _ in steps)
    if args.arrivals == "trace" and args.trace is None:
        raise ValueError("--arrivals trace needs --trace FILE")
    return WorkloadSpec(
        arrivals=args.arrivals,
        rate=args.rate,
        duration_s=duration,
        burstiness=args.burstiness,
        steps=steps,
        trace=args.trace,
        prompt_tokens=parse_lengths(args.prompt_tokens),
        output_tokens=parse_lengths(args.output_tokens),
        max_requests=args.max_requests,
    )


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed, else on the default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def execute(args: argparse.Namespace) -> int:
    try:
        spec = workload_from_args(args)
        planned = plan_requests(spec, np.random.default_rng(args.seed))
    except (ValueError, OSError) as exc:
        print(f"lpu-bench run: {exc}", file=sys.stderr)
        return 2
    config = LoadConfig(
        url=args.url, model=args.model, kind=args.api, drain_timeout_s=args.drain_timeout,
        keep_gaps=args.keep_gaps,
    )
    slo = Slo(_ms(args.slo_ttft_ms), _ms(args.slo_e2e_ms), _ms(args.slo_tpot_ms))
    progress = None if args.quiet else Progress(len(planned), spec.duration_s)
    prompts = PromptFactory(np.random.default_rng(args.seed + 1))
    result: RunResult = run_async(run_load(planned, config, prompts, progress=progress))
    summary = summarize(result.records, spec.duration_s, slo, result.gaps)
    settings = {
        "url": args.url, "model": args.model, "api": args.api, "arrivals": args.arrivals,
        "rate": args.rate, "duration_s": spec.duration_s, "burstiness": args.burstiness,
        "steps": args.steps, "capacity": args.capacity,
        "trace": str(args.trace) if args.trace else None,
        "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
        "seed": args.seed, "started_unix": result.started_unix, "elapsed_s": result.elapsed_s,
    }
    write_results(args.out, result.records, summary, timeseries(result.records, spec.duration_s),
                  settings)
    print(markdown_summary(summary, settings))
    print(f"results in {args.out}")
    return 0
