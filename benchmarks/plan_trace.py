"""``lpu-bench plan --trace FILE``: the layout to compile and run for a recorded trace.

Reads the trace (:mod:`benchmarks.traces`), compresses its time by ``--speedup``, searches the
layouts of the candidate shapes (:mod:`benchmarks.plan_search`) and prints the recommendation:
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from benchmarks.plan_search import (
    Candidate,
    SearchOptions,
    SearchResult,
    Slo,
    own_buckets,
    own_trace,
    search,
    theory_p99,
)
from benchmarks.shape_family import family, power_of_two_lengths, shapes
from benchmarks.traces import FORMATS, Trace, TraceError, read_trace
from lpu_protocol.artifact import Artifact
from lpu_protocol.tokens import ESTIMATE_UNDERCOUNT_MARGIN

__all__ = ["Overload", "add_arguments", "execute", "overload_speedup", "parse_layout",
           "parse_slo", "predict", "theory_check", "to_json"]

DEFAULT_MODEL = "llama-3.1-8b-instant"
DEFAULT_SLO_PREFILL_X = 4.0
"""Without ``--ttft-slo-ms``: each bucket's SLO is this many times its shape's prefill (the
issue's replay used 4x)."""


@dataclass(frozen=True, slots=True)
class Overload:
    """The chosen layout's predictions at ``factor`` times its slot capacity."""

    factor: float
    speedup: float
    """Of the trace as read (the planned ``--speedup`` times :func:`overload_speedup`)."""
    by_spill: dict[bool, Prediction]
    """Spill off and (when the router has it) on."""


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


def predict(layout: Layout, trace: Trace, margin: float = ESTIMATE_UNDERCOUNT_MARGIN
            ) -> Prediction:
    """The layout's figures on ``trace`` (already compressed as wanted)."""
    return replay(router_config(layout), trace, margin=margin)


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


def _shape_json(a: Artifact) -> dict[str, Any]:
    return {"artifact": a.name, "derived": a.version == "derived", "max_seq_len": a.max_seq_len,
            "max_output_tokens": a.max_output_tokens, "slots": a.slots,
            "prefill_ms": a.prefill_s * 1e3, "per_token_ms": a.per_token_s * 1e3}


def _prediction_json(p: Prediction) -> dict[str, Any]:
    return {
        "span_s": p.span_s, "offered": p.offered, "admitted": p.admitted, "good": p.good,
        "refused": p.refused, "violations": p.violations, "unplaceable": p.unplaceable,
        "goodput_rps": p.goodput_rps, "served_fraction": p.served_fraction,
        "p99_ttft_s": p.p99_ttft_s, "padding_waste": p.padding_waste,
        "buckets": [{
            "name": b.name, "offered": b.offered, "admitted": b.admitted, "good": b.good,
            "goodput_rps": b.goodput_rps, "refused": dict(b.refused),
            "spilled_out": b.spilled_out, "spilled_in": b.spilled_in, "served": b.served,
            "utilization": b.utilization, "p99_ttft_s": b.p99_ttft_s,
            "padding_waste": b.padding_waste} for b in p.buckets],
    }


def theory_check(layout: Layout, trace: Trace, margin: float) -> dict[str, float | None]:
    """Per bucket, the exact M/D/c p99 TTFT where the theory applies (its own requests all of
    one output length; Poisson arrivals assumed), else None: beside the replay's figure."""
    arts = [b.shape for b in layout.buckets]
    return {b.name: theory_p99(b.shape, b.replicas, own_trace(trace, arts, i, margin))
            for i, b in enumerate(layout.buckets)}


def _boundaries(layout: Layout) -> list[tuple[int, int]]:
    """Per bucket, the (exclusive, inclusive] range of ``need(prompt) + max_tokens`` it takes."""
    out, lo = [], 0
    for b in layout.buckets:
        out.append((lo, b.shape.max_seq_len))
        lo = b.shape.max_seq_len
    return out


def to_json(result: SearchResult, trace: Trace, speedup: float, base_port: int,
            overload: Overload | None, margin: float = ESTIMATE_UNDERCOUNT_MARGIN
            ) -> dict[str, Any]:
    """The plan as plain data (``--json``): the layout with its router config, the prediction
    at the planned speedup and, with ``--overload``, at the overload point."""
    lay = result.best.layout
    cfg = config_mapping(lay, base_port)
    out: dict[str, Any] = {
        "trace": {"name": trace.name, "requests": len(trace), "speedup": speedup,
                  "backend_time_scale": result.best.layout.time_scale,
                  "span_s": trace.duration_s, "rate_rps": trace.rate_rps},
        "layout": {
            "model": lay.model, "spill": lay.spill, "replicas": lay.replicas,
            "buckets": [{"name": b.name, "replicas": b.replicas, "ttft_slo_s": b.ttft_slo_s,
                         "boundary_tokens": list(rng), "backends": t["backends"],
                         **_shape_json(b.shape)}
                        for b, rng, t in zip(lay.buckets, _boundaries(lay), cfg["buckets"],
                                             strict=True)],
        },
        "config": cfg,
        "prediction": _prediction_json(result.best.prediction),
        "theory_p99_ttft_s": theory_check(lay, trace, margin),
        "evaluated": [{"layout": c.layout.describe(), "replicas": c.layout.replicas,
                       "goodput_rps": c.prediction.goodput_rps,
                       "served_fraction": c.prediction.served_fraction,
                       "p99_ttft_s": c.prediction.p99_ttft_s,
                       "padding_waste": c.prediction.padding_waste}
                      for c in result.evaluated],
    }
    if overload is not None:
        out["overload"] = {"factor": overload.factor, "speedup": overload.speedup, **{
            f"spill_{'on' if k else 'off'}": _prediction_json(v)
            for k, v in overload.by_spill.items()}}
    return out


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def _render_prediction(title: str, p: Prediction) -> list[str]:
    lines = [f"{title}: goodput {p.goodput_rps:.3f} req/s ({p.good}/{p.offered} requests within"
             f" SLO, {p.served_fraction:.2%}), p99 TTFT {_ms(p.p99_ttft_s)}, padding waste"
             f" {p.padding_waste:.1%}, refused {p.refused}, SLO violations {p.violations}"
             + (f", unplaceable {p.unplaceable}" if p.unplaceable else "")]
    lines.append(f"  {'bucket':>6} {'offered':>8} {'good':>6} {'goodput':>9} {'refused':>8}"
                 f" {'spill out':>9} {'spill in':>8} {'util':>6} {'p99 TTFT':>10} {'padding':>8}")
    for b in p.buckets:
        lines.append(f"  {b.name:>6} {b.offered:>8} {b.good:>6} {b.goodput_rps:>9.3f}"
                     f" {sum(b.refused.values()):>8} {b.spilled_out:>9} {b.spilled_in:>8}"
                     f" {b.utilization:>6.1%} {_ms(b.p99_ttft_s):>10} {b.padding_waste:>8.1%}")
    return lines


def render(result: SearchResult, trace: Trace, speedup: float, elapsed_s: float,
           overload: Overload | None, margin: float = ESTIMATE_UNDERCOUNT_MARGIN,
           searched: bool = True) -> str:
    lay = result.best.layout
    lines = [f"trace {trace.name}: {len(trace)} requests over {trace.duration_s:.1f} s"
             f" ({trace.rate_rps:.3f} req/s, speedup {speedup:g})",
             f"searched {len(result.evaluated)} layouts in {elapsed_s:.1f} s" if searched
             else f"the given layout, replayed in {elapsed_s:.1f} s",
             f"{'recommended' if searched else 'layout'}: {lay.describe()} ({lay.replicas} replica"
             f"{'s' if lay.replicas != 1 else ''}, spill"
             f" {'on' if lay.spill else 'off'})"]
    for b, (lo, hi) in zip(lay.buckets, _boundaries(lay), strict=True):
        kind = "derived: compile it" if b.shape.version == "derived" else "shipped"
        lines.append(f"  {b.name:>4}: {b.shape.name} ({kind}), {b.replicas} x"
                     f" {b.shape.slots} slots, prefill {b.shape.prefill_s * 1e3:.1f} ms,"
                     f" TTFT SLO {b.ttft_slo_s * 1e3:.0f} ms, takes {lo} < need + max_tokens"
                     f" <= {hi}")
    lines += _render_prediction("predicted", result.best.prediction)
    exact = {k: v for k, v in theory_check(lay, trace, margin).items() if v is not None}
    if exact:
        lines.append("  M/D/c p99 TTFT (one output length; if arrivals were Poisson): "
                     + ", ".join(f"{k} {_ms(v)}" for k, v in exact.items()))
    if overload is not None:
        for spill, pred in overload.by_spill.items():
            lines += _render_prediction(
                f"at {overload.factor:g}x overload (speedup {overload.speedup:.2f}), spill"
                f" {'on' if spill else 'off'}", pred)
    return "\n".join(lines)


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
        opts = SearchOptions(parse_slo(args.ttft_slo_ms, args.slo_prefill_x),
                             args.max_artifacts, args.max_replicas, args.goodput_target,
                             args.spill, args.estimate_margin, args.backend_time_scale)
        t0 = time.perf_counter()
        if args.layout is not None:
            given = parse_layout(args.layout, cands, opts.slo, args.model, args.spill != "off",
                                 args.backend_time_scale)
            one = Candidate(given, predict(given, trace, args.estimate_margin))
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
            spill: predict(lay.with_spill(spill), hot, args.estimate_margin)
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
        data = to_json(result, trace, args.speedup, args.base_port, overload, args.estimate_margin)
        text = json.dumps(data, indent=2) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            args.json.write_text(text)
    return 0
