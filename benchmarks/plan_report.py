"""What ``lpu-bench plan --trace`` prints and writes: the plan as text and as JSON.

:func:`render` is the text report, :func:`to_json` the plain data of ``--json`` (its fields are
listed in docs/benchmarks.md); both read a :class:`~benchmarks.plan_search.SearchResult` and,
with ``--overload``, an :class:`Overload`. :func:`theory_check` gives the exact M/D/c p99 TTFT
of the buckets where the theory applies, printed beside the replay's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.plan_layout import Layout, config_mapping
from benchmarks.plan_replay import Prediction
from benchmarks.plan_search import SearchResult, own_trace, theory_p99
from benchmarks.shape_family import DERIVED_VERSION
from benchmarks.traces import Trace
from lpu_protocol.artifact import Artifact
from lpu_protocol.tokens import ESTIMATE_UNDERCOUNT_MARGIN

__all__ = ["Overload", "render", "theory_check", "to_json"]

@dataclass(frozen=True, slots=True)
class Overload:
    """The chosen layout's predictions at ``factor`` times its slot capacity."""

    factor: float
    speedup: float
    """Of the trace as read (the planned ``--speedup`` times :func:`overload_speedup`)."""
    by_spill: dict[bool, Prediction]
    """Spill off and (when the router has it) on."""



def _shape_json(a: Artifact) -> dict[str, Any]:
    return {"artifact": a.name, "derived": a.version == DERIVED_VERSION,
            "max_seq_len": a.max_seq_len, "max_output_tokens": a.max_output_tokens,
            "slots": a.slots, "prefill_ms": a.prefill_s * 1e3, "per_token_ms": a.per_token_s * 1e3}


def _prediction_json(p: Prediction) -> dict[str, Any]:
    return {
        "span_s": p.span_s, "offered": p.offered, "admitted": p.admitted, "good": p.good,
        "refused": p.refused, "violations": p.violations, "unplaceable": p.unplaceable,
        "goodput_rps": p.goodput_rps, "served_fraction": p.served_fraction,
        "p99_ttft_s": p.p99_ttft_s, "padding_waste": p.padding_waste,
        "worst_start_error_s": p.worst_start_error_s,
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
        kind = "derived: compile it" if b.shape.version == DERIVED_VERSION else "shipped"
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
