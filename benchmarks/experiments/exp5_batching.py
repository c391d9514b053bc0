"""Experiment 5: the batching-window trap - a dynamic batching window in front of a
fixed-schedule backend, p50 and p99 TTFT against the window length.

Dynamic batching pays on a GPU because a bigger batch is served in about the time of a
small one. On a compiler-scheduled backend every request holds one slot for the same fixed
time whatever arrives with it, so holding requests to form batches buys nothing: it adds up
to a window of delay to every request and turns smooth arrivals into bursts of up to
``max_batch`` (= the slot count), which then queue. The window front end
(:mod:`benchmarks.experiments.batching_proxy`) sits between the load generator and one
emulator (no router). Prediction: the batching rule applied to the same send times, then the
exact FIFO schedule of the release times. Intervals: 95% batch means over the TTFTs in
arrival order (:func:`benchmarks.experiments.stationary.batch_quantile_ci`), after a
warm-up of a fixed number of service times.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import simulate
from benchmarks.experiments import ExperimentResult, SweepConfig
from benchmarks.experiments.batching_proxy import release_times, serve_batching_proxy
from benchmarks.experiments.claims import (
    Claim,
    est,
    finite,
    listing,
    missing,
    ms,
    paragraph,
    sentences,
)
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.output import fmt_ms, md_table, plt, write_experiment
from benchmarks.experiments.rig import Pool, serve
from benchmarks.experiments.stationary import batch_quantile_ci, table_note

__all__ = ["NAME", "TITLE", "claims", "predicted_ttft", "run", "summarize"]

NAME = "exp5_batching"
TITLE = "5. The batching-window trap: TTFT against the batching window"
SLOTS = 4
RHO = 0.6
WARMUP_SERVICE_TIMES = 100
"""The warm-up of a full run, in service times D (3 s at D = 30 ms). A fixed one: the
window front end holds requests before the backend sees them, so the number in system
that experiment 1's rule reads is not the backend's."""


def predicted_ttft(m: Measured, cfg: SweepConfig, window_s: float) -> np.ndarray:
    """TTFT of each request (from its intended time) under the window rule and the exact
    FIFO schedule, for the run's actual send times."""
    sent = m.arrivals
    order = np.argsort(sent, kind="stable")
    released = release_times(sent[order], window_s, SLOTS)
    start = np.empty_like(sent)
    start[order] = simulate.fifo_starts_deterministic(released, SLOTS, cfg.service_s)
    return np.asarray(start - m.intended + cfg.prefill_s)


PREDICTED_MS = 0.010
"""The window rule plus the exact schedule "predicts" the p99 within this (seconds)."""


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What experiment 5's figures show, each with its condition checked."""
    points = sorted((p for p in data.get("points") or [] if finite(est(p.get("p99")))),
                    key=lambda p: p["window_s"])
    none = next((p for p in points if p["window_s"] == 0), None)
    windows = [p for p in points if p["window_s"] > 0]
    out: list[Claim] = []
    text = "no batching window brings the p99 TTFT below the interval of the run without one"
    if none is not None and windows:
        floor = none["p99"][1] if isinstance(none["p99"], list) else est(none["p99"])
        lower = [p for p in windows if est(p["p99"]) < floor]
        out.append(Claim(text, not lower, (
            "windows of " + ", ".join(ms(p["window_s"], 0) for p in lower)
            + " ms measured below the no-window interval" if lower else
            f"no-window p99 {ms(est(none['p99']))} ms, with windows"
            f" {ms(min(est(p['p99']) for p in windows))} to"
            f" {ms(max(est(p['p99']) for p in windows))} ms")))
        text = "every batching window adds to the median TTFT"
        out.append(Claim(text, all(est(p["p50"]) > est(none["p50"]) for p in windows),
                         f"p50 {ms(est(none['p50']))} ms without a window,"
                         f" {ms(min(est(p['p50']) for p in windows))} to"
                         f" {ms(max(est(p['p50']) for p in windows))} ms with one"))
    else:
        out.append(missing(text, "runs both without and with a window"))
    text = "the window rule applied to the exact schedule predicts the measured p99"
    pred = [p for p in points if finite(p.get("pred_p99"))]
    if pred:
        gap = max(abs(est(p["p99"]) - p["pred_p99"]) for p in pred)
        out.append(Claim(text, gap <= PREDICTED_MS, f"within {ms(gap)} ms"))
    else:
        out.append(missing(text, "prediction"))
    return out


def summarize(data: Mapping[str, Any]) -> str:
    """Experiment 5's summary: p50/p99 per window and :func:`claims`."""
    points = sorted(data.get("points") or [], key=lambda p: p["window_s"])
    figures = listing("p50/p99 TTFT by batching window", [
        f"{ms(p['window_s'], 0)} ms: {ms(est(p['p50']))}/{ms(est(p['p99']))} ms"
        for p in points], sep=", ")
    return paragraph([figures, sentences(claims(data)),
                      "Same offered load and the same arrival sequence at every window."
                      " Intervals: 95% batch means over the TTFTs in arrival order."
                      if points else ""])


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
    duration_s, warmup_s = ((1.2, 0.2) if quick else
                            (30.0, WARMUP_SERVICE_TIMES * cfg.service_s))
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
            p99 = batch_quantile_ci(ttft, 0.99)
            points.append({
                "window_s": w, "n": int(ttft.size), "failed": m.failed,
                "p50": batch_quantile_ci(ttft, 0.5).as_list(), "p99": p99.as_list(),
                "p99_ci": p99.to_dict(),
                "pred_p50": float(np.percentile(pred, 50)),
                "pred_p99": float(np.percentile(pred, 99)),
            })
    rows = [[fmt_ms(p["window_s"], 0), p["n"],
             f"{fmt_ms(p['p50'][0])} [{fmt_ms(p['p50'][1])}, {fmt_ms(p['p50'][2])}]",
             fmt_ms(p["pred_p50"]),
             f"{fmt_ms(p['p99'][0])} [{fmt_ms(p['p99'][1])}, {fmt_ms(p['p99'][2])}]",
             table_note(p["p99_ci"]), fmt_ms(p["pred_p99"])] for p in points]
    table = md_table(["window (ms)", "n", "p50 measured [95% CI] (ms)", "p50 predicted",
                      "p99 measured [95% CI] (ms)", "CI +- / batches / lag-1",
                      "p99 predicted"], rows)
    intro = (
        f"Batching front end -> one emulator (c = {SLOTS}), Poisson at rho = {RHO}"
        f" ({rate:.0f} req/s), {duration_s:g} s per window (first {warmup_s:g} s not counted);"
        f" a batch is released when its window closes or when it holds {SLOTS} requests."
    )
    data = {"config": {"slots": SLOTS, "rho": RHO, "rate_rps": rate, "max_batch": SLOTS,
                       "service_s": cfg.service_s, "duration_s": duration_s,
                       "warmup_s": warmup_s, "isolate": cfg.isolate},
            "points": points}
    summary = summarize(data)
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(cfg, points), data=data,
                            elapsed_s=time.perf_counter() - t0)
