"""``lpu-bench plan --trace FILE``: the layout to compile and run for a recorded trace.

Reads the trace (:mod:`benchmarks.traces`), compresses its time by ``--speedup``, searches the
layouts of the candidate shapes (:mod:`benchmarks.plan_search`) and prints
(:mod:`benchmarks.plan_report`) the recommendation:
shapes to compile, bucket boundaries, replicas per bucket, spill, and the predicted goodput,
p99 TTFT and padding waste, every figure from replaying the trace through the router's own
admission code (:mod:`benchmarks.plan_replay`). ``--overload F`` also predicts the chosen
layout with the trace compressed until its offered work is ``F`` times the layout's slot
capacity (:func:`overload_speedup`), the trace-replay experiment's overload point.

Example::

    lpu-bench plan --trace ../shared/traces/azure_llm_2023_code.csv --speedup 10 \\
        --overload 2 --out-config plan.toml --json plan.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.plan_layout import (
    BASE_PORT,
    SPILL_SUPPORTED,
    BucketPlan,
    Layout,
    config_mapping,
    render_toml,
    router_config,
)
from benchmarks.plan_replay import Prediction, replay
from benchmarks.plan_report import Overload, render, to_json
from benchmarks.plan_search import (
    Candidate,
    SearchOptions,
    SearchResult,
    Slo,
    own_buckets,
    search,
)
from benchmarks.shape_family import family, power_of_two_lengths, shapes
from benchmarks.traces import FORMATS, Trace, TraceError, read_trace
from lpu_protocol.artifact import Artifact
from lpu_protocol.tokens import ESTIMATE_UNDERCOUNT_MARGIN

__all__ = ["add_arguments", "execute", "overload_speedup", "parse_layout", "parse_slo",
           "predict"]

DEFAULT_MODEL = "llama-3.1-8b-instant"
DEFAULT_SLO_PREFILL_X = 4.0
"""Without ``--ttft-slo-ms``: each bucket's SLO is this many times its shape's prefill (the
issue's replay used 4x)."""


def parse_slo(spec: str | None, prefill_x: float) -> Slo:
    """``None`` -> ``prefill_x`` times the shape's prefill; ``"500"`` -> 500 ms for every bucket;
    ``"2048=320,8192=760"`` -> per shape length (a shape not named is a ValueError when asked)."""
    if spec is None:
        if not prefill_x > 0:
            raise ValueError("--slo-prefill-x must be > 0")
        return lambda a: prefill_x * a.prefill_s
    if "=" not in spec:
        one = float(spec) / 1e3
        if not one > 0:
            raise ValueError("--ttft-slo-ms must be > 0")
        return lambda a: one
    per: dict[int, float] = {}
    for part in spec.split(","):
        length, _, ms = part.partition("=")
        try:
            per[int(length)] = float(ms) / 1e3
        except ValueError:
            raise ValueError(f"--ttft-slo-ms: expected LEN=MS pairs, got {part!r}") from None

    def slo(a: Artifact) -> float:
        if a.max_seq_len not in per:
            raise ValueError(f"--ttft-slo-ms names no SLO for shape {a.max_seq_len}")
        return per[a.max_seq_len]
    return slo


def predict(layout: Layout, trace: Trace, margin: float = ESTIMATE_UNDERCOUNT_MARGIN,
            dispatch_s: float = 0.0, return_s: float = 0.0) -> Prediction:
    """The layout's figures on ``trace`` (already compressed as wanted)."""
    return replay(router_config(layout), trace, margin=margin, dispatch_s=dispatch_s,
                  return_s=return_s)


def overload_speedup(layout: Layout, trace: Trace, factor: float,
                     margin: float = ESTIMATE_UNDERCOUNT_MARGIN) -> float:
    """The speedup of ``trace`` at which its offered work (every request's service time at its
    own bucket's shape, per second) is ``factor`` times the layout's slots (all buckets):
    ``factor * slots * span / work``. Requests no bucket fits are left out."""
    work = sum(_own_work(layout, trace, i, margin) for i in range(len(layout.buckets)))
    slots = sum(b.replicas * b.shape.slots for b in layout.buckets)
    return factor * slots * (trace.duration_s or 1.0) / work if work else 1.0


def _own_work(layout: Layout, trace: Trace, i: int, margin: float) -> float:
    """Slot-seconds of the requests whose smallest fit is bucket ``i``, at its shape."""
    arts = [b.shape for b in layout.buckets]
    a = arts[i]
    outs = trace.output_tokens[own_buckets(trace, arts, margin) == i].clip(1, a.max_output_tokens)
    return float(outs.size * a.prefill_s + (outs - 1).sum() * a.per_token_s)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("from a trace (--trace)")
    g.add_argument("--trace", type=Path, help="trace file (project CSV/JSONL or Azure CSV)")
    g.add_argument("--trace-format", choices=FORMATS, default="auto")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="the model whose shipped artifacts make the shape family")
    g.add_argument("--shapes", default=None,
                   help="candidate shape lengths, e.g. 2048,8192 (default: powers of two from"
                   " 1024 to 32768)")
    g.add_argument("--ttft-slo-ms", default=None,
                   help="TTFT SLO: MS for every bucket, or LEN=MS,... per shape (default:"
                   " --slo-prefill-x times each shape's prefill)")
    g.add_argument("--slo-prefill-x", type=float, default=DEFAULT_SLO_PREFILL_X)
    g.add_argument("--max-artifacts", type=int, default=3)
    g.add_argument("--max-replicas", type=int, default=16, help="replicas of all buckets")
    g.add_argument("--goodput-target", type=float, default=0.99,
                   help="fraction of offered requests to serve within SLO")
    g.add_argument("--spill", choices=["auto", "on", "off"], default="auto")
    g.add_argument("--speedup", "--time-scale", dest="speedup", type=float, default=1.0,
                   help="divide the trace's time by this (2: twice the rate)")
    g.add_argument("--layout", default=None,
                   help="predict this layout instead of searching: LEN:REPLICAS,... of"
                   " --shapes (spill on unless --spill off)")
    g.add_argument("--overload", type=float, default=None,
                   help="also predict the layout at this multiple of its slot capacity")
    g.add_argument("--backend-time-scale", type=float, default=1.0,
                   help="the backends' durations are the artifacts' times this (the router's"
                   " and emulator's time_scale)")
    g.add_argument("--estimate-margin", type=float, default=ESTIMATE_UNDERCOUNT_MARGIN,
                   help="the router's prompt count margin (0 with a tokenizer)")
    g.add_argument("--dispatch-ms", type=float, default=0.0,
                   help="modelled delay from a decision until the backend has the request")
    g.add_argument("--return-ms", type=float, default=0.0,
                   help="modelled delay from a backend's token until the router sees it")
    g.add_argument("--base-port", type=int, default=BASE_PORT,
                   help="first port of the backend URL placeholders")
    g.add_argument("--out-config", type=Path, default=None, help="write the router config")
    g.add_argument("--json", type=Path, default=None, help="write the plan as JSON ('-': stdout)")


def parse_layout(spec: str, cands: list[Artifact], slo: Slo, model: str, spill: bool,
                 time_scale: float) -> Layout:
    """``"2048:1,8192:2"`` (shape length: replicas) as a layout of the candidate shapes."""
    by_len = {a.max_seq_len: a for a in cands}
    buckets = []
    for part in spec.split(","):
        length, _, count = part.partition(":")
        try:
            n, replicas = int(length), int(count or "1")
        except ValueError:
            raise ValueError(f"--layout: expected LEN:REPLICAS pairs, got {part!r}") from None
        if n not in by_len or replicas < 1:
            raise ValueError(f"--layout: {part!r} needs a shape of --shapes and replicas >= 1")
        buckets.append(BucketPlan(by_len[n], replicas, slo(by_len[n])))
    buckets.sort(key=lambda b: b.shape.max_seq_len)
    return Layout(model, tuple(buckets), spill and SPILL_SUPPORTED, time_scale)


def _lengths(spec: str | None) -> list[int]:
    if spec is None:
        return power_of_two_lengths()
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--shapes: expected lengths like 2048,8192, got {spec!r}") from None


def execute(args: argparse.Namespace) -> int:
    try:
        if not args.speedup > 0:
            raise ValueError("--speedup must be > 0")
        if not 0 < args.goodput_target <= 1:
            raise ValueError("--goodput-target must be in (0, 1]")
        trace = read_trace(args.trace, args.trace_format).compressed(args.speedup)
        if not args.backend_time_scale > 0:
            raise ValueError("--backend-time-scale must be > 0")
        cands = [a.scaled(args.backend_time_scale)
                 for a in shapes(family(args.model), _lengths(args.shapes))]
        if args.dispatch_ms < 0 or args.return_ms < 0:
            raise ValueError("--dispatch-ms and --return-ms must be >= 0")
        delays = (args.dispatch_ms / 1e3, args.return_ms / 1e3)
        opts = SearchOptions(parse_slo(args.ttft_slo_ms, args.slo_prefill_x),
                             args.max_artifacts, args.max_replicas, args.goodput_target,
                             args.spill, args.estimate_margin, args.backend_time_scale, *delays)
        t0 = time.perf_counter()
        if args.layout is not None:
            given = parse_layout(args.layout, cands, opts.slo, args.model, args.spill != "off",
                                 args.backend_time_scale)
            one = Candidate(given, predict(given, trace, args.estimate_margin, *delays))
            result = SearchResult(one, (one,), given.buckets[-1].shape)
        else:
            result = search(trace, cands, args.model, opts)
        elapsed = time.perf_counter() - t0
    except (TraceError, ValueError) as exc:
        print(f"lpu-bench plan: {exc}", file=sys.stderr)
        return 2
    overload = None
    lay = result.best.layout
    if args.overload is not None:
        at = overload_speedup(lay, trace, args.overload, args.estimate_margin)
        hot = trace.compressed(at)
        overload = Overload(args.overload, args.speedup * at, {
            spill: predict(lay.with_spill(spill), hot, args.estimate_margin, *delays)
            for spill in ((False, True) if SPILL_SUPPORTED else (False,))})
    to_stdout = args.json is not None and str(args.json) == "-"
    if not to_stdout:
        print(render(result, trace, args.speedup, elapsed, overload, args.estimate_margin,
                     searched=args.layout is None))
    if args.out_config is not None:
        header = (f"Router config written by lpu-bench plan --trace {args.trace} (speedup"
                  f" {args.speedup:g}).\nBackends are placeholders: one per replica, ports from"
                  f" {args.base_port} up; start a backend\nof the bucket's shape on each, or"
                  " put your replicas' URLs there.\nCheck: lpu-router --check FILE")
        args.out_config.write_text(render_toml(config_mapping(lay, args.base_port), header))
    if args.json is not None:
        data = to_json(result, trace, args.speedup, args.base_port, overload,
                       args.estimate_margin)
        text = json.dumps(data, indent=2) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            args.json.write_text(text)
    return 0
