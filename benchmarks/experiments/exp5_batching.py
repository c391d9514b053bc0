"""Experiment 5: the batching-window trap - a dynamic batching window in front of a
fixed-schedule backend, p50 and p99 TTFT against the window length.

Dynamic batching pays on a GPU because a bigger batch is served in about the time of a
small one. On a compiler-scheduled backend every request holds one slot for the same fixed
time whatever arrives with it, so holding requests to form batches buys nothing: it adds up
to a window of delay to every request and turns smooth arrivals into bursts of up to
``max_batch`` (= the slot count), which then queue. The window front end
(:mod:`benchmarks.experiments.batching_proxy`) sits between the load generator and one
emulator (no router). Prediction: the batching rule applied to the same send times, then the
exact FIFO schedule of the release times.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import simulate
from benchmarks.experiments import ExperimentResult, SweepConfig
from benchmarks.experiments.batching_proxy import release_times, serve_batching_proxy
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.output import fmt_ms, md_table, plt, write_experiment
from benchmarks.experiments.rig import Pool, serve
from benchmarks.experiments.stats import quantile_ci

__all__ = ["NAME", "TITLE", "predicted_ttft", "run"]

NAME = "exp5_batching"
TITLE = "5. The batching-window trap: TTFT against the batching window"
SLOTS = 4
RHO = 0.6


def predicted_ttft(m: Measured, cfg: SweepConfig, window_s: float) -> np.ndarray:
    """TTFT of each request (from its intended time) under the window rule and the exact
    FIFO schedule, for the run's actual send times."""
    sent = np.where(np.isnan(m.sent), m.intended, m.sent)
    order = np.argsort(sent, kind="stable")
    released = release_times(sent[order], window_s, SLOTS)
    start = np.empty_like(sent)
    start[order] = simulate.fifo_starts_deterministic(released, SLOTS, cfg.service_s)
    return np.asarray(start - m.intended + cfg.prefill_s)


def _plot(cfg: SweepConfig, points: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = np.array([p["window_s"] for p in points]) * 1e3
    for key, color in (("p50", "C1"), ("p99", "C0")):
        est = np.array([p[key][0] for p in points]) * 1e3
        lo = np.array([p[key][1] for p in points]) * 1e3
        hi = np.array([p[key][2] for p in points]) * 1e3
        ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="o", color=color, capsize=3,
                    label=f"measured {key}")
        ax.plot(x, [p[f"pred_{key}"] * 1e3 for p in points], "-", color=color,
                label=f"predicted {key} (window rule + exact schedule)")
    ax.set_xlabel("batching window (ms)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title(f"c = {SLOTS}, rho = {RHO}, D = {cfg.service_s * 1e3:.0f} ms,"
                 f" batches of up to {SLOTS}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    t0 = time.perf_counter()
    windows = (0.0, 0.02) if quick else (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)
    duration_s, warmup_s = (1.2, 0.2) if quick else (8.0, 1.0)
    rate = RHO * cfg.capacity_rps(SLOTS)
    points: list[dict[str, Any]] = []
    async with serve(cfg, [Pool("main", cfg.artifact(SLOTS))]) as stack:
        for w in windows:
            planned = plan(cfg, np.random.default_rng([cfg.seed, 5]), rate=rate,
                           duration_s=duration_s)
            async with serve_batching_proxy(stack.url, w, SLOTS) as url:
                m = Measured.of(await drive(url, planned, cfg, seed=cfg.seed))
            keep = m.after(warmup_s)
            ttft = m.ttft[keep & m.completed]
            pred = predicted_ttft(m, cfg, w)[keep]
            points.append({
                "window_s": w, "n": int(ttft.size), "failed": m.failed,
                "p50": quantile_ci(ttft, 0.5).as_list(), "p99": quantile_ci(ttft, 0.99).as_list(),
                "pred_p50": float(np.percentile(pred, 50)),
                "pred_p99": float(np.percentile(pred, 99)),
            })
    rows = [[fmt_ms(p["window_s"], 0), p["n"],
             f"{fmt_ms(p['p50'][0])} [{fmt_ms(p['p50'][1])}, {fmt_ms(p['p50'][2])}]",
             fmt_ms(p["pred_p50"]),
             f"{fmt_ms(p['p99'][0])} [{fmt_ms(p['p99'][1])}, {fmt_ms(p['p99'][2])}]",
             fmt_ms(p["pred_p99"])] for p in points]
    table = md_table(["window (ms)", "n", "p50 measured [CI] (ms)", "p50 predicted",
                      "p99 measured [CI] (ms)", "p99 predicted"], rows)
    first, last = points[0], points[-1]
    better = [p for p in points[1:] if p["p99"][0] < first["p99"][0]]
    verdict = ("no window length does better than none" if not better else
               "windows of " + ", ".join(fmt_ms(p["window_s"], 0) for p in better)
               + " ms beat no window on p99 only by noise")
    summary = (
        f"With no window p50/p99 TTFT are {fmt_ms(first['p50'][0])}/{fmt_ms(first['p99'][0])}"
        f" ms; with a window of {fmt_ms(last['window_s'], 0)} ms they are"
        f" {fmt_ms(last['p50'][0])}/{fmt_ms(last['p99'][0])} ms, and {verdict}: the"
        " backend serves each request in the same fixed time however it"
        " arrives, so the wait for the window is pure added latency, and the released bursts"
        " queue behind each other. Same offered load and the same arrival sequence at every"
        " window. Intervals: order statistics (i.i.d. assumption, optimistic)."
    )
    intro = (
        f"Batching front end -> one emulator (c = {SLOTS}), Poisson at rho = {RHO}"
        f" ({rate:.0f} req/s), {duration_s:g} s per window (first {warmup_s:g} s not counted);"
        f" a batch is released when its window closes or when it holds {SLOTS} requests."
    )
    data = {"config": {"slots": SLOTS, "rho": RHO, "rate_rps": rate, "max_batch": SLOTS,
                       "service_s": cfg.service_s, "duration_s": duration_s,
                       "warmup_s": warmup_s, "isolate": cfg.isolate},
            "points": points}
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(cfg, points), data=data,
                            elapsed_s=time.perf_counter() - t0)
