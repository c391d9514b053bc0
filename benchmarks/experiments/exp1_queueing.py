"""Experiment 1: TTFT against utilization with admission off, measured through the router,
against the exact stationary M/D/c prediction (and M/M/c for contrast).

One emulator replica with ``c`` slots behind the router in mode ``off``; Poisson arrivals at
``rho * c / D``; every request makes the same number of tokens, so the backend is exactly
M/D/c and TTFT = W + prefill. Each point below capacity is one long run measured until its
p99 TTFT is known to within +-10%, its warm-up cut off
(:mod:`benchmarks.experiments.exp1_point`); the intervals are 95% batch-means intervals over
the correlated sequence of TTFTs in arrival order
(:func:`benchmarks.experiments.stationary.batch_quantile_ci`). Two predictions sit next to
each measurement:

* the stationary M/D/c percentile (``benchmarks.theory``), defined for rho < 1;
* the exact FIFO schedule of the *same* intended arrival times
  (:func:`~benchmarks.experiments.exp1_point.exact_intended_ttft`), which also holds the
  overload growth of a finite run; measured minus it is all the rig adds, the load
  generator's lateness included.

Below capacity each point also carries the range M/D/c gives the mean wait of a run of this
length (:func:`~benchmarks.experiments.schedule.mean_wait_band`) and where the rig's time
went (:mod:`benchmarks.experiments.exp1_overhead`), and every point the per-request
difference between the measured TTFT and the exact schedule's. The claims about the rig's
few ms are made of the points below capacity; the points beyond it have their own sentence
of figures. With
``lpu-bench sweep --only 1 --check`` these claims are the check that queueing through the
router is M/D/c (a wall-clock comparison that a busy machine can miss, so a benchmark and
not a test).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import ExperimentResult, SweepConfig
from benchmarks.experiments import exp1_point as ep
from benchmarks.experiments.claims import (
    Claim,
    config,
    est,
    finite,
    listing,
    missing,
    ms,
    paragraph,
    rising,
    sentences,
)
from benchmarks.experiments.exp1_point import (
    COVERAGE,
    FULL,
    QUICK,
    TARGET,
    Design,
    measure_point,
    point_config,
    predictions,
)
from benchmarks.experiments.output import fmt_ms, md_table, plt, write_experiment

__all__ = ["NAME", "TITLE", "claims", "run", "summarize", "write"]

NAME = "exp1_queueing"
TITLE = "1. TTFT against utilization (admission off): measured vs exact M/D/c"


FEW_MS = 0.010
"""What "a few ms" of router, loopback and client overhead may be, at most."""
TAIL_FEW = 3
"""Nine requests in ten differ from the exact schedule by at most this many times FEW_MS."""
DISTINCT = 1.5
"""M/M/c and M/D/c are told apart only where their p99 differ by at least this factor."""


def _heads(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to three points with a stationary prediction at the largest slot count, spread."""
    if not points:
        return []
    top = max(p["slots"] for p in points)
    mine = [p for p in points if p["slots"] == top and finite(p.get("mdc_p99"))]
    if len(mine) <= 3:
        return mine
    return [mine[round(i * (len(mine) - 1) / 2)] for i in range(3)]


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What experiment 1's figures show, each with its condition checked."""
    points: list[dict[str, Any]] = list(data.get("points") or [])
    out: list[Claim] = []
    text = ("the measured p99 TTFT is nearer the M/D/c prediction than the M/M/c one wherever"
            f" the two differ by {DISTINCT:g}x or more")
    apart = [p for p in points if finite(p.get("mdc_p99")) and finite(p.get("mmc_p99"))
             and finite(est(p.get("p99"))) and p["mmc_p99"] >= DISTINCT * p["mdc_p99"]]
    if apart:
        nearer = [p for p in apart
                  if abs(est(p["p99"]) - p["mdc_p99"]) < abs(est(p["p99"]) - p["mmc_p99"])]
        ratio = [p["mmc_p99"] / est(p["p99"]) for p in apart]
        out.append(Claim(text, len(nearer) == len(apart),
                         f"{len(nearer)} of {len(apart)} such points; M/M/c says"
                         f" {min(ratio):.1f} to {max(ratio):.1f} times the measured p99"))
    else:
        out.append(missing(text, "point where the two models differ that much"))
    out.append(_rig_few_ms(points))
    text = "beyond rho = 1 the queue grows for as long as the overload lasts"
    grows: list[bool] = []
    evidence: list[str] = []
    for slots in sorted({p["slots"] for p in points}):
        mine = sorted((p for p in points if p["slots"] == slots), key=lambda p: p["rho"])
        over = [p for p in mine if p["rho"] > 1 and finite(est(p.get("p50")))]
        under = [est(p.get("p99")) for p in mine if p["rho"] < 1 and finite(est(p.get("p99")))]
        if not over:
            continue
        p50s = [est(p["p50"]) for p in over]
        floor = max(under, default=0.0)
        grows.append(rising(p50s) and min(p50s) > floor)
        evidence.append(f"c = {slots}: p50 " + " / ".join(ms(x, 0) for x in p50s)
                        + " ms at rho = " + " / ".join(f"{p['rho']:g}" for p in over)
                        + (f", against p99 {ms(floor, 0)} ms below capacity" if under else ""))
    out.append(Claim(text, all(grows), "; ".join(evidence)) if grows
               else missing(text, "point beyond rho = 1"))
    return [*out, _per_request(points), _mean_wait(points), *_stationary(points)]


HEADLINE = (0.5, 0.8, 0.9)
"""The utilizations at which the stationary claim is made (issue 15)."""


def _headline(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points at :data:`HEADLINE` utilizations of the largest slot count, with a
    stationary prediction and a batch-means interval."""
    if not points:
        return []
    top = max(p["slots"] for p in points)
    return [p for p in points if p["slots"] == top and p["rho"] in HEADLINE
            and finite(p.get("mdc_p99")) and finite(est(p.get("p99")))
            and isinstance(p.get("p99_ci"), Mapping)]


def _half(p: Mapping[str, Any]) -> float:
    v = p["p99_ci"].get("relative_half_width")
    return float(v) if finite(v) else float("inf")


def _stationary(points: list[dict[str, Any]]) -> list[Claim]:
    """Measured p99 within TARGET of exact M/D/c at every HEADLINE rho, the intervals that
    narrow, and batches long enough to be independent."""
    mine = _headline(points)
    rhos = " / ".join(f"{r:g}" for r in HEADLINE)
    text = (f"at rho = {rhos} the measured p99 TTFT is within {TARGET:.0%} of the exact"
            " stationary M/D/c value")
    narrow = (f"each of those p99 intervals (95%, batch means) is within +-{TARGET:.0%} of"
              " its estimate")
    apart = ("the batches are long enough to be treated as independent (lag-1 correlation"
             " of the batch estimates within 2 / sqrt(batches))")
    if not mine:
        what = "stationary point at those utilizations"
        return [missing(text, what), missing(narrow, what), missing(apart, what),
                _on_schedule(mine)]
    gaps = [est(p["p99"]) / p["mdc_p99"] - 1.0 for p in mine]
    all_there = sorted(p["rho"] for p in mine) == sorted(HEADLINE)
    out = [Claim(text, all_there and all(abs(g) <= TARGET for g in gaps), "; ".join(
        f"rho = {p['rho']:g}: {ms(est(p['p99']))} ms [{ms(p['p99'][1])}, {ms(p['p99'][2])}]"
        f" against {ms(p['mdc_p99'])} ms ({g:+.1%})" for p, g in zip(mine, gaps, strict=True))
        + ("" if all_there else f"; {len(mine)} of {len(HEADLINE)} utilizations measured"))]
    out.append(Claim(narrow, all_there and all(_half(p) <= TARGET for p in mine), "; ".join(
        f"rho = {p['rho']:g}: +-{_half(p):.1%} from {int(p['p99_ci']['batches'])} batches of"
        f" {int(p['p99_ci']['batch_size'])} after {p.get('measured_s', 0):.0f} s"
        f" ({p.get('stopped_by', '?')})" for p in mine)))
    lags = [(p, p["p99_ci"].get("lag1"), p["p99_ci"].get("batches")) for p in mine]
    ok = [finite(r) and finite(k) and k >= 3 and abs(r) <= 2 / k**0.5 for _, r, k in lags]
    out.append(Claim(apart, all(ok), "; ".join(
        f"rho = {p['rho']:g}: {r:+.2f} over {int(k)}" if finite(r) and finite(k)
        else f"rho = {p['rho']:g}: -" for p, r, k in lags)))
    out.append(_on_schedule(mine))
    return out


def _on_schedule(mine: list[dict[str, Any]]) -> Claim:
    """The run measured what it planned: every request completed and the load generator's
    sends were late by at most a few ms at the 99th percentile (a starved load generator
    sends in bursts, which a queue near capacity takes minutes to work off)."""
    text = ("at those utilizations every request completed and the load generator sent on"
            " schedule")
    lags = [p.get("send_lag_p99") for p in mine]
    if not mine or not all(finite(x) for x in lags):
        return missing(text, "record of the load generator's lateness")
    ok = all(p.get("failed", 0) == 0 and p["send_lag_p99"] <= FEW_MS for p in mine)
    return Claim(text, ok, "; ".join(
        f"rho = {p['rho']:g}: {int(p.get('failed', 0))} failed, send lateness p99"
        f" {ms(p['send_lag_p99'])} ms, max {ms(p.get('send_lag_max'))} ms" for p in mine))


def _below(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points below capacity: the stationary runs the rig's few ms are claimed of
    (beyond capacity the queue grows through the run: :func:`_overload_figures`)."""
    return [p for p in points if finite(p.get("rho")) and p["rho"] < 1.0]


def _rhos(points: list[dict[str, Any]]) -> str:
    """``"the 2 points at rho = 0.5 / 0.9"``."""
    n = len(points)
    return (f"the {n} point{'s' if n != 1 else ''} at rho = "
            + " / ".join(f"{p['rho']:g}" for p in points))


def _rig_few_ms(points: list[dict[str, Any]]) -> Claim:
    """Below capacity, measured p99 TTFT minus the exact FIFO schedule's (of the intended
    arrivals, so everything the rig adds) within a few ms at every point."""
    text = ("below capacity the router, loopback and client add only a few ms to the exact"
            " FIFO schedule of the same arrivals")
    mine = [p for p in _below(points)
            if finite(est(p.get("p99"))) and finite(p.get("exact_p99"))]
    if not mine:
        return missing(text, "measured point below capacity")
    p99 = [est(p["p99"]) - p["exact_p99"] for p in mine]
    p50 = [est(p.get("p50")) - p["exact_p50"] for p in mine
           if finite(est(p.get("p50"))) and finite(p.get("exact_p50"))]
    median = (f"; p50 {ms(min(p50))} to {ms(max(p50))} ms" if len(p50) == len(mine) else "")
    return Claim(text, max(abs(g) for g in p99) <= FEW_MS,
                 f"measured minus exact-schedule p99: {ms(min(p99))} to {ms(max(p99))} ms"
                 f"{median}, over {_rhos(mine)}")


def _per_request(points: list[dict[str, Any]]) -> Claim:
    """Below capacity, each request's measured TTFT against the exact schedule's: the
    median difference within a few ms, nine in ten within three times that, in every
    point."""
    text = ("below capacity, request by request, the TTFT measured through the router is the"
            " exact FIFO schedule's of the same arrivals within a few ms")
    mine = [p for p in _below(points) if finite(p.get("err_p50")) and finite(p.get("err_p90"))]
    if not mine:
        return missing(text, "per-request comparison below capacity")
    p50, p90 = max(p["err_p50"] for p in mine), max(p["err_p90"] for p in mine)
    return Claim(text, p50 <= FEW_MS and p90 <= TAIL_FEW * FEW_MS,
                 f"median difference at most {ms(p50)} ms, 90th percentile at most"
                 f" {ms(p90)} ms, over {_rhos(mine)}")


def _overload_figures(points: list[dict[str, Any]]) -> str:
    """Beyond capacity, each point against the exact FIFO schedule of the same arrivals
    (which holds the queue's growth through a finite run): figures, no claim."""
    mine = [p for p in points if finite(p.get("rho")) and p["rho"] > 1.0
            and finite(est(p.get("p50"))) and finite(p.get("exact_p50"))]
    return listing("Beyond capacity, measured against the exact FIFO schedule of the same"
                   " arrivals", [
        f"rho = {p['rho']:g}: p50 {ms(est(p['p50']), 0)} against {ms(p['exact_p50'], 0)} ms"
        + (f", p99 {ms(est(p.get('p99')), 0)} against {ms(p['exact_p99'], 0)} ms"
           if finite(est(p.get("p99"))) and finite(p.get("exact_p99")) else "")
        + (f", per-request difference median {ms(p['err_p50'])} ms, 90th percentile"
           f" {ms(p['err_p90'])} ms" if finite(p.get("err_p50")) and finite(p.get("err_p90"))
           else "")
        + f", {int(p.get('failed', 0))} failed" for p in mine])


_PARTS = (("send", "the load generator's send lateness"),
          ("to_emulator", "client to emulator (client, loopback, router, emulator's read)"),
          ("emulator_wait_beyond_exact", "the emulator's wait beyond the exact schedule's"),
          ("from_emulator", "the first token's due time to the client's read (emulator's"
                            " write, router, loopback, client)"))


def _pair(d: Any) -> str:
    if not isinstance(d, Mapping) or not (finite(d.get("p50")) and finite(d.get("p99"))):
        return "-"
    return f"{ms(d['p50'])} / {ms(d['p99'])} / {ms(d.get('mean'))}"


def _rig_figures(points: list[dict[str, Any]]) -> str:
    """Where the rig's time went at each point below capacity that recorded it
    (:mod:`benchmarks.experiments.exp1_overhead`): figures, no claim."""
    items = []
    for p in _below(points):
        rig, first = p.get("rig"), p.get("emulator_first_token")
        if not isinstance(rig, Mapping) or not rig.get("requests"):
            continue
        item = (f"rho = {p['rho']:g} ({int(rig['requests'])} requests): overhead on the exact"
                f" schedule {_pair(rig.get('overhead'))}; "
                + "; ".join(f"{label} {_pair(rig.get(key))}" for key, label in _PARTS))
        if isinstance(first, Mapping) and finite(first.get("mean")) and first.get("count"):
            item += (f"; the emulator's own first-token lateness (its histogram, every request"
                     f" of the run) mean {ms(first['mean'], 2)} ms, p50 at most"
                     f" {ms(first.get('p50_at_most'), 2)} ms, p99 at most"
                     f" {ms(first.get('p99_at_most'), 2)} ms")
        items.append(item)
    return listing("Where the rig's time goes below capacity (p50 / p99 / mean, ms, over the"
                   " counted requests still on the emulator's recorded schedule, matched by"
                   " request id on the clock both share; the means add up to the overhead, the"
                   " percentiles do not)", items)


def _mean_wait(points: list[dict[str, Any]]) -> Claim:
    """Below capacity the mean wait in the range M/D/c gives a point of this shape, widened
    by the few ms of measurement overhead."""
    text = ("below capacity the mean wait falls within a few ms of the range M/D/c gives runs"
            " of this length")
    mine = [p for p in points if finite(p.get("mean_wait"))
            and len(p.get("mdc_mean_wait_band") or []) == 2
            and all(finite(x) for x in p["mdc_mean_wait_band"])]
    if not mine:
        return missing(text, "point with a simulated range")
    outside = [p for p in mine if not (p["mdc_mean_wait_band"][0] - FEW_MS <= p["mean_wait"]
                                       <= p["mdc_mean_wait_band"][1] + FEW_MS)]
    shown = outside or mine[-1:]
    figures = "; ".join(f"c = {p['slots']}, rho = {p['rho']:g}: {ms(p['mean_wait'])} ms against"
                        f" {ms(p['mdc_mean_wait_band'][0])} to"
                        f" {ms(p['mdc_mean_wait_band'][1])} ms" for p in shown)
    return Claim(text, not outside, f"{len(mine) - len(outside)} of {len(mine)} points in the"
                 f" central {COVERAGE:.0%} of simulated runs' mean waits widened by"
                 f" {ms(FEW_MS, 0)} ms; {figures}")


def _s(seconds: Any) -> str:
    return f"{seconds:g} s" if finite(seconds) else "? s"


def _setting(c: Mapping[str, Any]) -> str:
    """The run's shape in one sentence, from its config."""
    if not (finite(c.get("service_s")) and finite(c.get("prefill_s"))):
        return ""
    tokens = int(c["output_tokens"]) if finite(c.get("output_tokens")) else 0
    parts = f"prefill {ms(c['prefill_s'], 0)} ms"
    if tokens > 1 and finite(c.get("per_token_s")):
        parts += f" + {tokens - 1} x {ms(c['per_token_s'], 0)} ms"
    elif tokens == 1:
        parts += ", one token"
    if c.get("stationary"):
        how = (f"one run per point below capacity, stopped once the p99's 95% batch-means"
               f" interval was within +-{c.get('target', TARGET):.0%} (at least"
               f" {_s(c.get('min_measured_s'))} counted, at most {_s(c.get('cap_s'))} of"
               f" arrivals), warm-up the later of {c.get('warmup_service_times', '?')} D and"
               f" the MSER-5 cut of the number in system; beyond capacity"
               f" {_s(c.get('overload_s'))} from empty, the first"
               f" {_s(c.get('overload_warmup_s'))} not counted")
    else:
        how = (f"one fixed run of {_s(c.get('cap_s'))} per point, the first"
               f" {_s(c.get('overload_warmup_s'))} not counted")
    return f"Service time D = {ms(c['service_s'], 0)} ms ({parts}), {how}."


def summarize(data: Mapping[str, Any]) -> str:
    """Experiment 1's summary: its setting, the headline figures and :func:`claims`."""
    heads = listing("Measured vs stationary M/D/c p99 TTFT", [
        f"c = {p['slots']}, rho = {p['rho']:g}: {ms(est(p['p99']))} ms"
        f" [{ms(p['p99'][1])}, {ms(p['p99'][2])}] vs {ms(p['mdc_p99'])} ms"
        f" (M/M/c would say {ms(p['mmc_p99'])} ms)"
        for p in _heads(list(data.get("points") or []))])
    points = list(data.get("points") or [])
    return paragraph([_setting(config(data)), heads, sentences(claims(data)),
                      _overload_figures(points), _rig_figures(points)])


def _plot(cfg: SweepConfig, points: list[dict[str, Any]], slot_counts: tuple[int, ...]) -> Any:
    fig, axes = plt.subplots(1, len(slot_counts), figsize=(6.8 * len(slot_counts), 4.8),
                             squeeze=False)
    for ax, slots in zip(axes[0], slot_counts, strict=True):
        grid = np.linspace(0.05, 0.97, 70)
        curves = [predictions(cfg, slots, float(r)) for r in grid]
        mdc99 = np.array([c["mdc_p99"] for c in curves]) * 1e3
        ax.plot(grid, mdc99, "C0-", label="M/D/c p99 (exact, stationary)")
        ax.fill_between(grid, mdc99 * (1 - TARGET), mdc99 * (1 + TARGET), color="C0",
                        alpha=0.12, label=f"M/D/c p99 +-{TARGET:.0%}")
        ax.plot(grid, [c["mdc_p50"] * 1e3 for c in curves], "C1-", label="M/D/c p50 (exact)")
        ax.plot(grid, [c["mmc_p99"] * 1e3 for c in curves], "C0:", label="M/M/c p99 (contrast)")
        mine = [p for p in points if p["slots"] == slots]
        x = np.array([p["rho"] for p in mine])
        for key, color, label in (("p99", "C0", "measured p99"), ("p50", "C1", "measured p50")):
            mid = np.array([p[key][0] for p in mine]) * 1e3
            lo = np.array([p[key][1] for p in mine]) * 1e3
            hi = np.array([p[key][2] for p in mine]) * 1e3
            ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], fmt="o", color=color, capsize=3,
                        label=label + " (95% batch-means CI)")
        ax.plot(x, [p["exact_p99"] * 1e3 for p in mine], "kx", label="p99, exact schedule of"
                " the same (intended) arrivals")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("utilization rho = lambda D / c")
        ax.set_ylabel("TTFT (ms)")
        ax.set_title(f"c = {slots} slot(s), D = {cfg.service_s * 1e3:.0f} ms")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    return fig


def _ci(v: list[float]) -> str:
    return f"{fmt_ms(v[0])} [{fmt_ms(v[1])}, {fmt_ms(v[2])}]"


def _row(p: Mapping[str, Any]) -> list[object]:
    ci = p.get("p99_ci") or {}
    half = ci.get("relative_half_width")
    return [p["slots"], f"{p['rho']:.2f}", f"{p['rate_rps']:.1f}", int(p["n"]),
            f"{p['warmup_s']:.1f}" if finite(p.get("warmup_s")) else "-",
            f"{p['measured_s']:.0f}", _ci(p["p50"]), fmt_ms(p["mdc_p50"]), _ci(p["p99"]),
            f"+-{half:.1%}" if finite(half) else "-",
            f"{int(ci['batches'])} x {int(ci['batch_size'])}" if ci else "-",
            f"{ci['lag1']:+.2f}" if finite(ci.get("lag1")) else "-",
            fmt_ms(p["exact_p99"]), fmt_ms(p["mdc_p99"]),
            f"{p['p99_vs_mdc']:+.1%}" if finite(p.get("p99_vs_mdc")) else "-",
            fmt_ms(p["mmc_p99"])]


def write(cfg: SweepConfig, out_dir: Path, points: list[dict[str, Any]], design: Design,
          elapsed_s: float, load_note: str | None = None) -> ExperimentResult:
    """Experiment 1's table, plot and numbers from its measured ``points``; ``load_note``
    says what else ran on the machine (default: the lock's rule)."""
    pcfg = point_config(cfg, design)
    table = md_table(["c", "rho", "rate (req/s)", "n", "warm-up (s)", "counted (s)",
                      "p50 measured [95% CI] (ms)", "p50 M/D/c", "p99 measured [95% CI] (ms)",
                      "CI +-", "batches", "lag-1", "p99 exact schedule (intended arrivals)",
                      "p99 M/D/c",
                      "p99 vs M/D/c", "p99 M/M/c"], [_row(p) for p in points])
    intro = (
        "Router in admission mode `off`, one emulator replica, Poisson arrivals, fixed output"
        " length. Intervals: 95% batch means over the sequence of TTFTs in arrival order"
        " (batch means of the exceedance of the estimate, mapped back through the empirical"
        " quantile function; `benchmarks/experiments/stationary.py`). The exact schedule is"
        " the FIFO M/D/c schedule of the run's intended arrival times (the sample path of its"
        " Poisson draws), so measured minus exact is all the rig adds, the load generator's"
        " own lateness included. Machine load: "
        + (load_note or "the measurement lock was held, other sessions' tests may have shared"
           " the cores.")
    )
    data = {"config": {"service_s": pcfg.service_s, "prefill_s": pcfg.prefill_s,
                       "per_token_s": pcfg.per_token_s, "output_tokens": pcfg.output_tokens,
                       "stationary": design.stationary, "cap_s": design.cap_s,
                       "overload_s": design.overload_s,
                       "overload_warmup_s": design.overload_warmup_s, "target": TARGET,
                       "min_measured_s": ep.MIN_MEASURED_S, "segment_s": ep.SEGMENT_S,
                       "warmup_service_times": ep.WARMUP_SERVICE_TIMES,
                       "mean_wait_band_coverage": COVERAGE, "isolate": cfg.isolate},
            "points": points}
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table,
                            summary=summarize(data),
                            figure=_plot(pcfg, points, design.slot_counts), data=data,
                            elapsed_s=elapsed_s)


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    """Measure every point of the design (each on its own stack); write the files."""
    t0 = time.perf_counter()
    design = QUICK if quick else FULL
    points = [{k: v for k, v in (await measure_point(cfg, design, slots, rho)).items()
               if k != "_measured"}
              for slots in design.slot_counts for rho in design.rhos]
    return write(cfg, out_dir, points, design, time.perf_counter() - t0)
