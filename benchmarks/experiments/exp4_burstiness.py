"""Experiment 4: burstiness - p99 TTFT against the squared coefficient of variation of the
arrival gaps at a fixed utilization.

The router (mode ``off``) in front of one emulator with 4 slots at rho = 0.7; arrivals are a
gamma renewal process whose gaps have mean ``1 / rate`` and squared coefficient of variation
B (B = 1 is Poisson; B < 1 smoother, B > 1 burstier; the ``constant`` control has B = 0 and
never queues on a deterministic server below capacity). Next to each measurement: the exact
FIFO schedule of the same arrivals, and a stationary prediction from a long simulated gamma
stream (the M/D/c formula only covers B = 1). The interval is the 95% batch-means one over
the sequence of TTFTs in arrival order
(:func:`benchmarks.experiments.stationary.batch_quantile_ci`), after the warm-up rule of
experiment 1 (the later of a floor of service times and the
MSER-5 cut of the number in system).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import arrivals, simulate, theory
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
from benchmarks.experiments.schedule import exact_ttft
from benchmarks.experiments.stationary import (
    batch_quantile_ci,
    run_warmup_index,
    table_note,
)

__all__ = ["NAME", "TITLE", "claims", "run", "summarize"]

NAME = "exp4_burstiness"
TITLE = "4. Burstiness: p99 TTFT against the gamma burstiness B at fixed utilization"
SLOTS = 4
RHO = 0.7
WARMUP_SERVICE_TIMES = 100
"""The warm-up floor of a full run, in service times D (3 s at D = 30 ms)."""


def _stationary_p99(cfg: SweepConfig, rate: float, b: float) -> float:
    rng = np.random.default_rng([cfg.seed, round(b * 1000)])
    n = 200_000
    t = (np.arange(n) / rate if b == 0 else
         arrivals.gamma_times(rate, b, n / rate * 1.2, rng)[:n])
    wait = simulate.fifo_starts_deterministic(t, SLOTS, cfg.service_s) - t
    return float(np.percentile(wait[n // 10:], 99)) + cfg.prefill_s


def _label(b: float) -> str:
    return "constant arrivals" if b == 0 else f"B = {b:g}"


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What experiment 4's figures show, each with its condition checked."""
    points = sorted((p for p in data.get("points") or [] if finite(est(p.get("p99")))),
                    key=lambda p: p["burstiness"])
    p99 = [est(p["p99"]) for p in points]
    out: list[Claim] = []
    text = "at the same utilization the p99 TTFT grows with the burstiness of the arrivals"
    out.append(Claim(text, rising(p99), f"{ms(p99[0])} ms with {_label(points[0]['burstiness'])}"
                     f" to {ms(p99[-1])} ms at {_label(points[-1]['burstiness'])}")
               if len(points) >= 2 else missing(text, "two burstiness levels to compare"))
    text = "a capacity plan made for Poisson traffic under-provisions burstier traffic"
    poisson = next((p for p in points if p["burstiness"] == 1.0), None)
    bursty = [p for p in points if p["burstiness"] > 1.0]
    if poisson is not None and bursty:
        top = bursty[-1]
        out.append(Claim(text, est(top["p99"]) > est(poisson["p99"]),
                         f"p99 {ms(est(top['p99']))} ms at B = {top['burstiness']:g} against"
                         f" {ms(est(poisson['p99']))} ms for Poisson"))
    else:
        out.append(missing(text, "Poisson point and burstier one"))
    return out


def summarize(data: Mapping[str, Any]) -> str:
    """Experiment 4's summary: p99 at each level and :func:`claims`."""
    rho = config(data).get("rho", "?")
    figures = listing(f"p99 TTFT at utilization {rho}", [
        f"{ms(est(p['p99']))} ms with {_label(p['burstiness'])}"
        for p in sorted(data.get("points") or [], key=lambda p: p["burstiness"])], sep=", ")
    return paragraph([figures, sentences(claims(data))])


def _plot(cfg: SweepConfig, points: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = np.array([max(p["burstiness"], 0.1) for p in points])
    est = np.array([p["p99"][0] for p in points]) * 1e3
    lo = np.array([p["p99"][1] for p in points]) * 1e3
    hi = np.array([p["p99"][2] for p in points]) * 1e3
    ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="o", capsize=3,
                label="measured p99 (95% batch-means CI)")
    ax.plot(x, [p["exact_p99"] * 1e3 for p in points], "kx", ms=8,
            label="exact schedule, same arrivals")
    ax.plot(x, [p["stationary_p99"] * 1e3 for p in points], "C1-",
            label="stationary (simulated)")
    ax.plot(x, [p["p50"] * 1e3 for p in points], "s", color="C2", label="measured p50")
    lam = RHO * cfg.capacity_rps(SLOTS)
    ax.axhline(theory.mdc_ttft_percentile(0.99, lam, SLOTS, cfg.service_s, cfg.prefill_s) * 1e3,
               color="C0", ls=":", label="M/D/c p99 (B = 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("burstiness B (squared CV of gaps; constant arrivals drawn at 0.1)")
    ax.set_ylabel("TTFT (ms)")
    ax.set_title(f"c = {SLOTS}, rho = {RHO}, D = {cfg.service_s * 1e3:.0f} ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    t0 = time.perf_counter()
    levels = (0.0, 1.0, 4.0) if quick else (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    duration_s, floor_s = ((1.2, 0.2) if quick else
                           (30.0, WARMUP_SERVICE_TIMES * cfg.service_s))
    rate = RHO * cfg.capacity_rps(SLOTS)
    points: list[dict[str, Any]] = []
    pool = Pool("main", cfg.artifact(SLOTS), 1, {"ttft_slo_s": 10.0})
    async with serve(cfg, [pool], {"mode": "off"}) as stack:
        for b in levels:
            rng = np.random.default_rng([cfg.seed, 4, round(b * 1000)])
            planned = plan(cfg, rng, arrivals="constant" if b == 0 else "gamma", rate=rate,
                           burstiness=b or 1.0, duration_s=duration_s)
            m = Measured.of(await drive(stack.url, planned, cfg, seed=cfg.seed))
            cut = run_warmup_index(m.intended, m.ttft, prefill_s=cfg.prefill_s,
                                   service_s=cfg.service_s, floor_s=floor_s)
            keep = np.arange(m.intended.size) >= cut
            ttft = m.ttft[keep & m.completed]
            exact = exact_ttft(m, SLOTS, cfg.service_s, cfg.prefill_s)[keep]
            p99 = batch_quantile_ci(ttft, 0.99)
            points.append({
                "burstiness": b, "n": int(ttft.size), "failed": m.failed,
                "warmup_s": float(m.intended[cut]) if cut < m.intended.size else None,
                "p50": float(np.percentile(ttft, 50)),
                "p99": p99.as_list(), "p99_ci": p99.to_dict(),
                "exact_p99": float(np.percentile(exact, 99)),
                "stationary_p99": _stationary_p99(cfg, rate, b),
            })
    rows = [["constant" if p["burstiness"] == 0 else f"{p['burstiness']:g}", p["n"],
             f"{p['warmup_s']:.1f}" if p["warmup_s"] is not None else "-", fmt_ms(p["p50"]),
             f"{fmt_ms(p['p99'][0])} [{fmt_ms(p['p99'][1])}, {fmt_ms(p['p99'][2])}]",
             table_note(p["p99_ci"]), fmt_ms(p["exact_p99"]), fmt_ms(p["stationary_p99"])]
            for p in points]
    table = md_table(["B", "n", "warm-up (s)", "p50 (ms)", "p99 measured [95% CI] (ms)",
                      "CI +- / batches / lag-1", "p99 exact schedule", "p99 stationary (sim)"],
                     rows)
    intro = (
        f"Router in mode `off`, one emulator with c = {SLOTS}, rho = {RHO} ({rate:.0f} req/s),"
        f" {duration_s:g} s per point; the warm-up is the later of {floor_s:g} s and the MSER-5"
        " cut of the number in system. Intervals: 95% batch means over the TTFTs in arrival"
        " order (`benchmarks/experiments/stationary.py`)."
    )
    data = {"config": {"slots": SLOTS, "rho": RHO, "rate_rps": rate, "service_s": cfg.service_s,
                       "duration_s": duration_s, "warmup_floor_s": floor_s,
                       "isolate": cfg.isolate},
            "points": points}
    summary = summarize(data)
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(cfg, points), data=data,
                            elapsed_s=time.perf_counter() - t0)
