"""Experiment 3: the timeline rule's rejection rate against offered load, measured and
predicted.

The router in mode ``timeline`` (worst-case prediction, utilization guard off, the default
adaptive margin) admits a request iff its predicted ``wait + prefill + margin <= SLO``. With
a fixed output length the prediction is exact, so the system is an M/D/c queue with balking
at a deterministic threshold: an arrival whose FIFO wait would exceed
``SLO - prefill - margin`` leaves. Two predictions from
:func:`benchmarks.simulate.simulate_fifo` with that policy:

* *same arrivals*: the simulator fed the realized send times of the run - what the rule
  should have refused in exactly this run;
* *stationary*: a long simulated Poisson stream (200 000 arrivals) at the same load - the
  rate the rule converges to (the fluid bound ``1 - 1/rho`` above capacity is drawn too).

Both use the margin the router had in force at the end of the point (read from
``/admin/buckets``; the adaptive margin can move during a point, the simulator holds it
fixed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import simulate
from benchmarks.experiments import ExperimentResult, SweepConfig
from benchmarks.experiments.claims import (
    Claim,
    est,
    finite,
    missing,
    paragraph,
    pct,
    rising,
    sentences,
)
from benchmarks.experiments.drive import Measured
from benchmarks.experiments.output import fmt_ms, fmt_pct, md_table, plt, write_experiment
from benchmarks.experiments.policies import load_point, policy_stack
from benchmarks.experiments.rig import bucket_snapshot
from benchmarks.experiments.stats import Interval

__all__ = ["NAME", "TITLE", "claims", "predicted_rejection", "run", "summarize"]

NAME = "exp3_rejection"
TITLE = "3. Rejection rate against offered load: measured vs predicted (timeline rule)"
SLOTS = 4
MARGIN_S = 0.005
"""The router's default ``admission.margin_s`` (the floor of its adaptive margin)."""


def predicted_rejection(arrivals: np.ndarray, cfg: SweepConfig, slots: int,
                        margin_s: float = MARGIN_S) -> float:
    """Share the timeline rule refuses for these (sorted) arrival times with ``margin_s``."""
    budget = cfg.ttft_slo_s - cfg.prefill_s - margin_s

    def admit(a: simulate.Arrival) -> bool:
        return a.wait_if_admitted <= budget

    return simulate.simulate_fifo(arrivals, cfg.service_s, slots, admit).refused_fraction


def _measured(m: Measured, warmup_s: float) -> Interval:
    """Rejected share after the warm-up, with a 95% normal interval (i.i.d. approximation)."""
    keep = m.after(warmup_s)
    n = int(keep.sum())
    p = float((keep & m.rejected).sum()) / n
    half = 1.96 * float(np.sqrt(max(p * (1 - p), 1.0 / n) / n))
    return Interval(p, max(0.0, p - half), min(1.0, p + half))


NEAR_ZERO = 0.05
"""Below capacity "almost nothing" is refused: at most this share."""
CLOSE = 0.05
"""Measured and predicted refusal shares "agree" within this many (5 points)."""


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What experiment 3's figures show, each with its condition checked."""
    points = sorted((p for p in data.get("points") or [] if finite(est(p.get("measured")))),
                    key=lambda p: p["load"])
    shares = [est(p["measured"]) for p in points]
    out: list[Claim] = []
    text = "the refused share rises with the offered load"
    out.append(Claim(text, rising(shares, tolerance=0.01),
                     f"{pct(shares[0])} at {points[0]['load']:g}x to {pct(shares[-1])} at"
                     f" {points[-1]['load']:g}x") if len(points) >= 2
               else missing(text, "two loads to compare"))
    text = "below capacity almost nothing is refused"
    under = [p for p in points if p["load"] < 1.0]
    out.append(Claim(text, max(est(p["measured"]) for p in under) <= NEAR_ZERO,
                     "at most " + pct(max(est(p["measured"]) for p in under))) if under
               else missing(text, "load below capacity"))
    text = "above capacity the refused share is close to the fluid bound 1 - 1/rho"
    over = [p for p in points if p["load"] > 1.0]
    if over:
        gap = max(abs(est(p["measured"]) - (1 - 1 / p["load"])) for p in over)
        out.append(Claim(text, gap <= CLOSE, f"within {gap * 100:.1f} points"))
    else:
        out.append(missing(text, "load above capacity"))
    text = "the rule refuses what M/D/c with balking predicts for the same arrivals"
    same = [p for p in points if finite(p.get("same_arrivals"))]
    if same:
        err = max(abs(est(p["measured"]) - p["same_arrivals"]) for p in same)
        out.append(Claim(text, err <= CLOSE, f"largest gap {err * 100:.1f} points"))
    else:
        out.append(missing(text, "prediction"))
    return out


def summarize(data: Mapping[str, Any]) -> str:
    """Experiment 3's summary: :func:`claims` and how to read the interval."""
    return paragraph([sentences(claims(data)),
                      "The interval shown is the binomial one (it treats refusals as"
                      " independent, which bursts make optimistic)."])


def _plot(cfg: SweepConfig, points: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = np.array([p["load"] for p in points])
    est = np.array([p["measured"][0] for p in points]) * 100
    lo = np.array([p["measured"][1] for p in points]) * 100
    hi = np.array([p["measured"][2] for p in points]) * 100
    ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="o", capsize=3, label="measured (95% CI)")
    ax.plot(x, [p["same_arrivals"] * 100 for p in points], "kx", ms=8,
            label="predicted, same arrivals")
    ax.plot(x, [p["stationary"] * 100 for p in points], "C1-", label="predicted, stationary")
    grid = np.linspace(min(x), max(x), 50)
    ax.plot(grid, np.maximum(0.0, 1 - 1 / grid) * 100, "grey", ls=":", label="fluid 1 - 1/rho")
    ax.set_xlabel("offered load (x capacity)")
    ax.set_ylabel("rejected (% of offered)")
    ax.set_title(f"c = {SLOTS}, D = {cfg.service_s * 1e3:.0f} ms, TTFT SLO"
                 f" {cfg.ttft_slo_s * 1e3:.0f} ms")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    t0 = time.perf_counter()
    loads = (1.0, 1.5) if quick else (0.6, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0)
    duration_s, warmup_s = (1.2, 0.2) if quick else (8.0, 1.0)
    points: list[dict[str, Any]] = []
    async with policy_stack(cfg, "timeline", SLOTS) as url:
        for load in loads:
            m = await load_point(cfg, url, "timeline", SLOTS, load, duration_s, cfg.seed + 100)
            margin = float((await bucket_snapshot(url, "main"))["margin"]["seconds"])
            sent = np.sort(m.arrivals)
            same = predicted_rejection(sent[sent >= warmup_s], cfg, SLOTS, margin)
            rate = load * cfg.capacity_rps(SLOTS)
            rng = np.random.default_rng(round(load * 1000))
            long_run = simulate.poisson_arrivals(rate, 200_000, rng)
            points.append({"load": load, "measured": _measured(m, warmup_s).as_list(),
                           "same_arrivals": same,
                           "stationary": predicted_rejection(long_run, cfg, SLOTS, margin),
                           "margin_s": margin,
                           "requests": int(m.after(warmup_s).sum()), "failed": m.failed})
    rows = [[f"{p['load']:.1f}", p["requests"], fmt_ms(p["margin_s"]),
             f"{fmt_pct(p['measured'][0])} [{fmt_pct(p['measured'][1])},"
             f" {fmt_pct(p['measured'][2])}]",
             fmt_pct(p["same_arrivals"]), fmt_pct(p["stationary"]),
             fmt_pct(max(0.0, 1 - 1 / p["load"]))] for p in points]
    table = md_table(["load", "n", "margin at end (ms)", "measured [95% CI]",
                      "predicted (same arrivals)", "predicted (stationary)", "fluid bound"], rows)
    intro = (
        f"Router in mode `timeline` (adaptive margin, floor {MARGIN_S * 1e3:.0f} ms,"
        f" worst-case lengths), one emulator with c = {SLOTS}, Poisson arrivals for"
        f" {duration_s:g} s per point (first {warmup_s:g} s not counted). Predicted: M/D/c with"
        " balking at a wait of SLO - prefill - margin (with the floor:"
        f" {(cfg.ttft_slo_s - cfg.prefill_s - MARGIN_S) * 1e3:.0f} ms), the margin being the"
        " one in force at the end of the point, computed exactly by the simulator."
    )
    data = {"config": {"slots": SLOTS, "service_s": cfg.service_s, "slo_s": cfg.ttft_slo_s,
                       "margin_floor_s": MARGIN_S, "duration_s": duration_s, "warmup_s": warmup_s,
                       "isolate": cfg.isolate},
            "points": points}
    summary = summarize(data)
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(cfg, points), data=data,
                            elapsed_s=time.perf_counter() - t0)
