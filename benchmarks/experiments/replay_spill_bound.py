"""Where spill can gain on a trace: the planner's simulator at ~2x overload of several layouts.

Part of experiment 8 (:mod:`benchmarks.experiments.exp8_trace_replay`), not an experiment of its
own. Every figure is a replay of the trace through the router's own admission code on a virtual
clock (:func:`benchmarks.plan_replay.replay`), so it costs seconds, not a measured run; the
measured replay checks the simulator on the experiment's layouts.

For each case (:func:`cases`): a layout (the planner's own recommendation for the trace at 1x and
at 10x, the experiment's two-shape layout, the same with the larger shape over-provisioned, the
demo's three shapes) and a TTFT SLO rule (4x each shape's prefill, or one SLO for every bucket),
the trace compressed until its offered work is ``overload`` x the layout's slots
(:func:`benchmarks.plan_trace.overload_speedup`), replayed three ways on the same arrivals:

* ``no_spill``: every bucket ``spill = false``;
* ``spill``: the router's default spill rule;
* ``limits_off``: spill with the rule's two headroom limits lifted (every bucket's
  ``spill_share`` 1 and ``target_utilization`` 1, in a no-spill replay of its own as the
  baseline, since the utilization target also guards a bucket's own traffic): what is left is
  the exact TTFT test alone, so its gain bounds what any setting of those limits could give.

:func:`burst_correlation` is the other half of the reason: the correlation of the arrivals of
two home buckets counted per window of the trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from benchmarks.plan_layout import BucketPlan, Layout, config_mapping
from benchmarks.plan_replay import Prediction, replay
from benchmarks.plan_search import SearchOptions, own_buckets, search
from benchmarks.plan_trace import DEFAULT_MODEL, overload_speedup
from benchmarks.shape_family import family, power_of_two_lengths, shapes
from benchmarks.traces import Trace
from lpu_protocol.artifact import Artifact, builtin_artifact
from router.config import parse_config

__all__ = ["Case", "burst_correlation", "cases", "evaluate", "own_load", "planner_layout",
           "spill_bound"]

SLO_PREFILLS = 4.0


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    layout: Layout
    slo_rule: str
    """How the SLOs were set, for the table: ``"4x prefill"`` or ``"one: N ms"``."""


def _slo_per_shape(a: Artifact) -> float:
    return SLO_PREFILLS * a.prefill_s


def _layout(spec: Sequence[tuple[str, int]], one_slo_s: float | None = None) -> Layout:
    return Layout(DEFAULT_MODEL, tuple(
        BucketPlan(a, n, one_slo_s or _slo_per_shape(a))
        for a, n in ((builtin_artifact(name), n) for name, n in spec)))


def _with_one_slo(layout: Layout, slo_s: float) -> Layout:
    return Layout(layout.model, tuple(replace(b, ttft_slo_s=slo_s) for b in layout.buckets),
                  layout.spill, layout.time_scale)


def _rule(layout: Layout) -> str:
    slos = {round(b.ttft_slo_s, 6) for b in layout.buckets}
    if len(layout.buckets) > 1 and len(slos) == 1:
        return f"one: {slos.pop() * 1e3:.0f} ms"
    return f"{SLO_PREFILLS:g}x prefill"


def planner_layout(trace: Trace, speedup: float) -> Layout:
    """``lpu-bench plan --trace``'s recommendation for ``trace`` at ``speedup`` (its defaults:
    the model family's power-of-two shapes, 4x-prefill SLOs)."""
    cands = shapes(family(DEFAULT_MODEL), power_of_two_lengths())
    return search(trace.compressed(speedup), cands, DEFAULT_MODEL,
                  SearchOptions(_slo_per_shape)).best.layout


def cases(trace: Trace) -> list[Case]:
    """The layouts and SLO rules compared (module docstring)."""
    two = _layout((("llama-3.1-8b-2k", 1), ("llama-3.1-8b-8k", 1)))
    demo = _layout((("llama-3.1-8b-2k", 1), ("llama-3.1-8b-8k", 1), ("llama-3.1-8b-32k", 1)))
    one = two.buckets[-1].ttft_slo_s  # the 8K bucket's own SLO, for every bucket
    out = [("the planner's, trace at 1x", planner_layout(trace, 1.0)),
           ("the planner's, trace at 10x", planner_layout(trace, 10.0)),
           ("the experiment's", two), ("the experiment's", _with_one_slo(two, one)),
           ("8K over-provisioned", _layout((("llama-3.1-8b-2k", 1), ("llama-3.1-8b-8k", 3)))),
           ("the demo's", demo), ("the demo's", _with_one_slo(demo, one))]
    return [Case(label, lay, _rule(lay)) for label, lay in out]


def _predict(layout: Layout, trace: Trace, spill: bool, limits_off: bool,
             margin: float) -> Prediction:
    mapping = config_mapping(layout.with_spill(spill))
    if limits_off:
        for b in mapping["buckets"]:
            b.update(spill_share=1.0, target_utilization=1.0)
    return replay(parse_config(mapping, f"<spill bound {layout.describe()}>"), trace,
                  margin=margin)


def _own_loss(spill: Prediction, base: Prediction) -> float:
    """The largest fraction of a bucket's own goodput lost with spill (0: none lost)."""
    return max([1.0 - s.good / b.good for s, b in zip(spill.buckets, base.buckets, strict=True)
                if b.good] or [0.0])


def own_load(layout: Layout, trace: Trace, margin: float) -> dict[str, float]:
    """Per bucket, the slot-seconds per second its own requests (those whose smallest fit it
    is) offer at their shape over its slots: 1 is the bucket's own traffic filling it."""
    own = own_buckets(trace, [b.shape for b in layout.buckets], margin)
    span = trace.duration_s or 1.0
    out = {}
    for i, b in enumerate(layout.buckets):
        outs = trace.output_tokens[own == i].clip(1, b.shape.max_output_tokens)
        work = float(outs.size * b.shape.prefill_s + (outs - 1).sum() * b.shape.per_token_s)
        out[b.name] = work / span / (b.replicas * b.shape.slots)
    return out


def evaluate(case: Case, trace: Trace, overload: float, margin: float) -> dict[str, Any]:
    """One row of the table: the three replays of ``case`` at ``overload``."""
    speedup = overload_speedup(case.layout, trace, overload, margin)
    hot = trace.compressed(speedup)
    base = _predict(case.layout, hot, False, False, margin)
    spill = _predict(case.layout, hot, True, False, margin)
    base_off = _predict(case.layout, hot, False, True, margin)
    off = _predict(case.layout, hot, True, True, margin)
    return {"label": case.label, "layout": case.layout.describe().removesuffix(" spill"),
            "buckets": len(case.layout.buckets), "slo_rule": case.slo_rule,
            "speedup": speedup, "good_no_spill": base.good, "good_spill": spill.good,
            "spills": sum(b.spilled_out for b in spill.buckets),
            "gain": spill.good / base.good if base.good else None,
            "own_loss": _own_loss(spill, base),
            "good_limits_off_base": base_off.good, "good_limits_off": off.good,
            "spills_limits_off": sum(b.spilled_out for b in off.buckets),
            "gain_limits_off": off.good / base_off.good if base_off.good else None,
            "own_loss_limits_off": _own_loss(off, base_off),
            "utilization_no_spill": {b.name: b.utilization for b in base.buckets},
            "own_load": own_load(case.layout, hot, margin)}


def burst_correlation(trace: Trace, layout: Layout, window_s: float, margin: float
                      ) -> float | None:
    """Pearson correlation, over consecutive ``window_s`` windows of the trace, of the arrivals
    whose home is ``layout``'s first bucket against those of its second (None: fewer than two
    buckets, or a constant count)."""
    if len(layout.buckets) < 2:
        return None
    own = own_buckets(trace, [b.shape for b in layout.buckets], margin)
    edges = np.arange(0.0, trace.duration_s + window_s, window_s)
    a = np.histogram(trace.at_s[own == 0], edges)[0]
    b = np.histogram(trace.at_s[own == 1], edges)[0]
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def spill_bound(trace: Trace, overload: float, margin: float,
                window_s: float = 30.0) -> dict[str, Any]:
    """Every case of :func:`cases` at ``overload``, and the burst correlation of the
    experiment's two-shape layout per ``window_s`` of the trace."""
    cs = cases(trace)
    two = next(c for c in cs if c.label == "the experiment's")
    return {"overload": overload, "window_s": window_s,
            "burst_correlation": burst_correlation(trace, two.layout, window_s, margin),
            "cases": [evaluate(c, trace, overload, margin) for c in cs]}
