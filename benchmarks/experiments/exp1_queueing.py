"""Experiment 1: TTFT against utilization with admission off, measured through the router,
against the exact M/D/c prediction (and M/M/c for contrast).

One emulator replica with ``c`` slots (1 and 4) behind the router in mode ``off``; Poisson
arrivals at ``rho * c / D`` for rho from 0.3 to 1.5; every request makes the same number of
tokens, so the backend is exactly M/D/c and TTFT = W + prefill. Each point is R independent
replications (own seeds, each starting empty); the first ``warmup`` seconds of arrivals are
sent but not counted. Per replication we take p50 and p99 of TTFT; the interval is the 95%
Student-t interval over the R replications. Two predictions sit next to each measurement:

* the stationary M/D/c percentile (``benchmarks.theory``), defined for rho < 1;
* the exact FIFO schedule of the *same* realized send times
  (:mod:`benchmarks.experiments.schedule`), which also holds the start-up transient and the
  overload growth of a finite run.

Below capacity each point also carries the range M/D/c gives the mean wait of a point of
this shape (:func:`~benchmarks.experiments.schedule.mean_wait_band`), and every replication
the per-request difference between the measured TTFT and the exact schedule's. With
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

from benchmarks import theory
from benchmarks.experiments import ExperimentResult, SweepConfig
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
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.output import fmt_ms, md_table, plt, write_experiment
from benchmarks.experiments.rig import Pool, serve
from benchmarks.experiments.schedule import exact_ttft, mean_wait_band
from benchmarks.experiments.stats import mean_ci

__all__ = ["NAME", "TITLE", "claims", "run", "summarize"]

NAME = "exp1_queueing"
TITLE = "1. TTFT against utilization (admission off): measured vs exact M/D/c"


async def _replication(cfg: SweepConfig, url: str, slots: int, rho: float, rep: int,
                       duration_s: float, warmup_s: float) -> dict[str, float]:
    lam = rho * cfg.capacity_rps(slots)
    rng = np.random.default_rng([cfg.seed, slots, round(rho * 1000), rep])
    planned = plan(cfg, rng, rate=lam, duration_s=warmup_s + duration_s)
    m = Measured.of(await drive(url, planned, cfg, seed=cfg.seed + rep))
    keep = m.after(warmup_s)
    done = keep & m.completed
    ttft = m.ttft[done]
    exact_all = exact_ttft(m, slots, cfg.service_s, cfg.prefill_s)
    exact = exact_all[keep]
    err = np.abs(ttft - exact_all[done])
    return {
        "n": float(ttft.size), "failed": float(m.failed),
        "p50": float(np.percentile(ttft, 50)), "p99": float(np.percentile(ttft, 99)),
        "mean": float(ttft.mean()),
        "exact_p50": float(np.percentile(exact, 50)), "exact_p99": float(np.percentile(exact, 99)),
        "err_p50": float(np.percentile(err, 50)), "err_p90": float(np.percentile(err, 90)),
    }


def _theory(cfg: SweepConfig, slots: int, rho: float) -> dict[str, float]:
    if rho >= 0.995:
        return {"mdc_p50": float("nan"), "mdc_p99": float("nan"), "mmc_p99": float("nan")}
    lam, d, pre = rho * cfg.capacity_rps(slots), cfg.service_s, cfg.prefill_s
    return {
        "mdc_p50": theory.mdc_ttft_percentile(0.5, lam, slots, d, pre),
        "mdc_p99": theory.mdc_ttft_percentile(0.99, lam, slots, d, pre),
        "mmc_p99": theory.mmc_wait_percentile(0.99, lam, slots, d) + pre,
    }


FEW_MS = 0.010
"""What "a few ms" of router, loopback and client overhead may be, at most."""
TAIL_FEW = 3
"""Nine requests in ten differ from the exact schedule by at most this many times FEW_MS."""
COVERAGE = 0.99
"""The share of simulated points' mean waits that M/D/c's range for a point holds."""
DISTINCT = 1.5
"""M/M/c and M/D/c are told apart only where their p99 differ by at least this factor."""


def _band(cfg: SweepConfig, slots: int, rho: float, reps: int, duration_s: float,
          warmup_s: float) -> dict[str, list[float]]:
    """M/D/c's range for this point's mean wait (below capacity only: above it the mean
    grows with the run and is compared with the exact schedule instead)."""
    if rho >= 1.0:
        return {}
    band = mean_wait_band(rho * cfg.capacity_rps(slots), slots, cfg.service_s,
                          duration_s=duration_s, warmup_s=warmup_s, runs=reps, coverage=COVERAGE,
                          rng=np.random.default_rng([cfg.seed, slots, round(rho * 1000), 99]))
    return {"mdc_mean_wait_band": list(band)}


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
    text = ("the router, loopback and client add only a few ms to the exact FIFO schedule of"
            " the same arrivals")
    gaps = [est(p.get("p99")) - p["exact_p99"] for p in points
            if finite(est(p.get("p99"))) and finite(p.get("exact_p99"))]
    if gaps:
        out.append(Claim(text, max(abs(g) for g in gaps) <= FEW_MS,
                         f"measured minus exact-schedule p99: {ms(min(gaps))} to"
                         f" {ms(max(gaps))} ms over {len(gaps)} points"))
    else:
        out.append(missing(text, "measured point"))
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
    return [*out, _per_request(points), _mean_wait(points)]


def _per_request(points: list[dict[str, Any]]) -> Claim:
    """Each request's measured TTFT against the exact schedule's: the median difference
    within a few ms, nine in ten within three times that, in every point."""
    text = ("request by request, the TTFT measured through the router is the exact FIFO"
            " schedule's of the same arrivals within a few ms")
    mine = [p for p in points if finite(p.get("err_p50")) and finite(p.get("err_p90"))]
    if not mine:
        return missing(text, "per-request comparison")
    p50, p90 = max(p["err_p50"] for p in mine), max(p["err_p90"] for p in mine)
    return Claim(text, p50 <= FEW_MS and p90 <= TAIL_FEW * FEW_MS,
                 f"median difference at most {ms(p50)} ms, 90th percentile at most"
                 f" {ms(p90)} ms, over {len(mine)} points")


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


def summarize(data: Mapping[str, Any]) -> str:
    """Experiment 1's summary: its setting, the headline figures and :func:`claims`."""
    c = config(data)
    setting = ""
    if finite(c.get("service_s")) and finite(c.get("prefill_s")):
        parts = f"prefill {ms(c['prefill_s'], 0)} ms"
        if finite(c.get("per_token_s")) and finite(c.get("output_tokens")):
            parts += f" + {int(c['output_tokens']) - 1} x {ms(c['per_token_s'], 0)} ms"
        setting = (f"Service time D = {ms(c['service_s'], 0)} ms ({parts}),"
                   f" {c.get('replications', '?')} replication(s) of {_s(c.get('duration_s'))}"
                   f" per point after a {_s(c.get('warmup_s'))} warm-up.")
    heads = listing("Measured vs stationary M/D/c p99 TTFT", [
        f"c = {p['slots']}, rho = {p['rho']:g}: {ms(est(p['p99']))} ms"
        f" [{ms(p['p99'][1])}, {ms(p['p99'][2])}] vs {ms(p['mdc_p99'])} ms"
        f" (M/M/c would say {ms(p['mmc_p99'])} ms)"
        for p in _heads(list(data.get("points") or []))])
    return paragraph([setting, heads, sentences(claims(data))])


def _plot(cfg: SweepConfig, points: list[dict[str, Any]], slot_counts: tuple[int, ...]) -> Any:
    fig, axes = plt.subplots(1, len(slot_counts), figsize=(6.2 * len(slot_counts), 4.6),
                             squeeze=False)
    for ax, slots in zip(axes[0], slot_counts, strict=True):
        grid = np.linspace(0.05, 0.97, 70)
        curves = [_theory(cfg, slots, float(r)) for r in grid]
        ax.plot(grid, [c["mdc_p99"] * 1e3 for c in curves], "C0-", label="M/D/c p99 (exact)")
        ax.plot(grid, [c["mdc_p50"] * 1e3 for c in curves], "C1-", label="M/D/c p50 (exact)")
        ax.plot(grid, [c["mmc_p99"] * 1e3 for c in curves], "C0:", label="M/M/c p99 (contrast)")
        mine = [p for p in points if p["slots"] == slots]
        x = np.array([p["rho"] for p in mine])
        for key, color, label in (("p99", "C0", "measured p99"), ("p50", "C1", "measured p50")):
            est = np.array([p[key][0] for p in mine]) * 1e3
            lo = np.array([p[key][1] for p in mine]) * 1e3
            hi = np.array([p[key][2] for p in mine]) * 1e3
            ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="o", color=color, capsize=3,
                        label=label + " (95% CI)")
        ax.plot(x, [p["exact_p99"] * 1e3 for p in mine], "kx", label="p99, exact schedule of"
                " the same arrivals")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("utilization rho = lambda D / c")
        ax.set_ylabel("TTFT (ms)")
        ax.set_title(f"c = {slots} slot(s), D = {cfg.service_s * 1e3:.0f} ms")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    return fig


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    """Sweep utilization for each slot count; write the table, plot and numbers."""
    t0 = time.perf_counter()
    slot_counts = (2,) if quick else (1, 4)
    rhos = (0.6, 1.2) if quick else (0.3, 0.5, 0.7, 0.8, 0.9, 1.2, 1.5)
    reps = 1 if quick else 3
    duration_s, warmup_s = (1.2, 0.2) if quick else (8.0, 2.0)
    points: list[dict[str, Any]] = []
    for slots in slot_counts:
        pool = Pool("main", cfg.artifact(slots), 1, {"ttft_slo_s": 10.0})
        async with serve(cfg, [pool], {"mode": "off"}) as stack:
            for rho in rhos:
                runs = [await _replication(cfg, stack.url, slots, rho, r, duration_s, warmup_s)
                        for r in range(reps)]
                points.append({
                    "slots": slots, "rho": rho, "rate_rps": rho * cfg.capacity_rps(slots),
                    "replications": runs, "n": sum(r["n"] for r in runs),
                    "failed": sum(r["failed"] for r in runs),
                    "p50": mean_ci([r["p50"] for r in runs]).as_list(),
                    "p99": mean_ci([r["p99"] for r in runs]).as_list(),
                    "exact_p50": float(np.mean([r["exact_p50"] for r in runs])),
                    "exact_p99": float(np.mean([r["exact_p99"] for r in runs])),
                    "err_p50": max(r["err_p50"] for r in runs),
                    "err_p90": max(r["err_p90"] for r in runs),
                    "mean_wait": float(np.mean([r["mean"] for r in runs])) - cfg.prefill_s,
                    **_theory(cfg, slots, rho),
                    **_band(cfg, slots, rho, reps, duration_s, warmup_s),
                })
    rows = [
        [p["slots"], f"{p['rho']:.2f}", f"{p['rate_rps']:.1f}", int(p["n"]),
         f"{fmt_ms(p['p50'][0])} [{fmt_ms(p['p50'][1])}, {fmt_ms(p['p50'][2])}]",
         fmt_ms(p["mdc_p50"]),
         f"{fmt_ms(p['p99'][0])} [{fmt_ms(p['p99'][1])}, {fmt_ms(p['p99'][2])}]",
         fmt_ms(p["exact_p99"]), fmt_ms(p["mdc_p99"]), fmt_ms(p["mmc_p99"])]
        for p in points
    ]
    table = md_table(["c", "rho", "rate (req/s)", "n", "p50 measured [95% CI] (ms)",
                      "p50 M/D/c", "p99 measured [95% CI] (ms)", "p99 exact schedule",
                      "p99 M/D/c", "p99 M/M/c"], rows)
    intro = (
        "Router in admission mode `off`, one emulator replica, Poisson arrivals, fixed output"
        " length. Intervals: 95% Student-t over independent replications of the per-run"
        " percentile."
    )
    data = {"config": {"service_s": cfg.service_s, "prefill_s": cfg.prefill_s,
                       "per_token_s": cfg.per_token_s, "output_tokens": cfg.output_tokens,
                       "duration_s": duration_s, "warmup_s": warmup_s, "replications": reps,
                       "isolate": cfg.isolate},
            "points": points}
    summary = summarize(data)
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(cfg, points, slot_counts), data=data,
                            elapsed_s=time.perf_counter() - t0)
