"""Experiment 6: step overload - the time series of admitted and rejected rates and of p99
TTFT around a step from 0.6 to 1.4 of capacity and back.

The same Poisson step schedule is sent twice through the router in front of one emulator
with 4 slots: once with admission ``off`` (no control) and once with the ``timeline`` rule
(utilization guard off). Per second (by intended send time): offered, admitted (HTTP 200)
and rejected (429) counts and the p99 TTFT of the requests sent in that second
(:func:`benchmarks.metrics.timeseries`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import ExperimentResult, SweepConfig
from benchmarks.experiments.claims import Claim, config, finite, missing, ms, pct, sentences
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.output import fmt_ms, fmt_pct, md_table, plt, write_experiment
from benchmarks.experiments.policies import policy_stack
from benchmarks.metrics import timeseries

__all__ = ["NAME", "TITLE", "claims", "run", "summarize"]

NAME = "exp6_step"
TITLE = "6. Step overload: admitted and rejected rates and p99 TTFT over time"
SLOTS = 4
MODES = ("none", "timeline")
LEVELS = (0.6, 1.4, 0.6)


def _phase_rows(m: Measured, mode: str, bounds: list[tuple[float, float, float]],
                cfg: SweepConfig) -> list[dict[str, Any]]:
    out = []
    for start, end, level in bounds:
        sel = (m.intended >= start) & (m.intended < end)
        n = int(sel.sum())
        ttft = m.ttft[sel & m.completed]
        out.append({
            "mode": mode, "from_s": start, "to_s": end, "load": level, "requests": n,
            "offered_rps": n / (end - start),
            "admitted_rps": float((sel & ~m.rejected).sum()) / (end - start),
            "rejected_share": float((sel & m.rejected).sum()) / n if n else float("nan"),
            "goodput_rps": float((ttft <= cfg.ttft_slo_s).sum()) / (end - start),
            "p99": float(np.percentile(ttft, 99)) if ttft.size else float("nan"),
        })
    return out


def _phase(phases: list[dict[str, Any]], mode: str, which: str) -> dict[str, Any] | None:
    """``mode``'s overload phase (``which="over"``: the first at the highest load, if the
    load steps up at all) or its last phase (if there is more than one)."""
    mine = sorted((p for p in phases if p["mode"] == mode), key=lambda p: p["from_s"])
    if len(mine) < 2:
        return None
    if which == "last":
        return mine[-1]
    top = max(p["load"] for p in mine)
    return next(p for p in mine if p["load"] == top) if top > mine[0]["load"] else None


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What experiment 6's figures show, each with its condition checked."""
    phases: list[dict[str, Any]] = list(data.get("phases") or [])
    slo = config(data).get("slo_s")
    out: list[Claim] = []
    cases = (
        ("none", "over", True, "without control the overload step pushes the p99 TTFT past"
         " the SLO"),
        ("timeline", "over", False, "the timeline rule keeps the p99 TTFT within the SLO"
         " during the overload step"),
        ("none", "last", True, "after the step, without control the backlog still holds the"
         " p99 TTFT past the SLO"),
        ("timeline", "last", False, "after the step the timeline rule is back within the SLO"
         " at once, with no backlog to drain"),
    )
    for mode, which, past, text in cases:
        p = _phase(phases, mode, which)
        if p is None or not finite(p.get("p99")) or not finite(slo):
            out.append(missing(text, f"{'overload' if which == 'over' else 'later'} phase"
                               f" of mode {mode}"))
            continue
        holds = p["p99"] > slo if past else p["p99"] <= slo
        out.append(Claim(text, holds, f"p99 {ms(p['p99'])} ms against {ms(slo, 0)} ms,"
                         f" {pct(p['rejected_share'])} rejected, goodput"
                         f" {p['goodput_rps']:.0f} req/s"))
    return out


def summarize(data: Mapping[str, Any]) -> str:
    """Experiment 6's summary: :func:`claims` (their evidence holds the figures)."""
    return sentences(claims(data))


def _plot(cfg: SweepConfig, series: dict[str, list[dict[str, Any]]],
          bounds: list[tuple[float, float, float]]) -> Any:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for i, mode in enumerate(MODES):
        rows = series[mode]
        t = np.array([r["second"] for r in rows]) + 0.5
        if i == 0:
            top.plot(t, [r["offered"] for r in rows], "k-", lw=1, label="offered")
        top.plot(t, [r["admitted"] for r in rows], "-", color=f"C{i}",
                 label=f"admitted ({mode})")
        if mode == "timeline":
            top.plot(t, [r["rejected"] for r in rows], "--", color=f"C{i}",
                     label=f"rejected ({mode})")
        p99 = [np.nan if r["ttft_p99_s"] is None else r["ttft_p99_s"] * 1e3 for r in rows]
        bottom.plot(t, p99, "o-", color=f"C{i}", ms=3, label=f"p99 TTFT ({mode})")
    top.axhline(cfg.capacity_rps(SLOTS), color="grey", ls=":", label="capacity")
    bottom.axhline(cfg.ttft_slo_s * 1e3, color="red", ls="--", label="TTFT SLO")
    for start, _, _ in bounds[1:]:
        top.axvline(start, color="grey", lw=0.8)
        bottom.axvline(start, color="grey", lw=0.8)
    top.set_ylabel("requests per second")
    bottom.set_ylabel("p99 TTFT of the second's requests (ms)")
    bottom.set_yscale("log")
    bottom.set_xlabel("time (s, by intended send time)")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    top.set_title(f"load {' -> '.join(f'{x:g}' for x in LEVELS)} x capacity, c = {SLOTS},"
                  f" D = {cfg.service_s * 1e3:.0f} ms")
    return fig


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    t0 = time.perf_counter()
    seg = 1.0 if quick else 8.0
    cap = cfg.capacity_rps(SLOTS)
    steps = tuple((seg, level * cap) for level in LEVELS)
    bounds = [(i * seg, (i + 1) * seg, level) for i, level in enumerate(LEVELS)]
    planned = plan(cfg, np.random.default_rng([cfg.seed, 6]), arrivals="step", steps=steps,
                   duration_s=seg * len(LEVELS))
    series: dict[str, list[dict[str, Any]]] = {}
    phases: list[dict[str, Any]] = []
    for mode in MODES:
        async with policy_stack(cfg, mode, SLOTS) as url:
            records = await drive(url, planned, cfg, seed=cfg.seed)
        series[mode] = timeseries(records, seg * len(LEVELS))
        phases += _phase_rows(Measured.of(records), mode, bounds, cfg)
    rows = [[p["mode"], f"{p['from_s']:g}-{p['to_s']:g}", f"{p['load']:g}",
             f"{p['offered_rps']:.0f}", f"{p['admitted_rps']:.0f}", fmt_pct(p["rejected_share"]),
             f"{p['goodput_rps']:.0f}", fmt_ms(p["p99"])] for p in phases]
    table = md_table(["mode", "phase (s)", "load", "offered (req/s)", "admitted (req/s)",
                      "rejected", "goodput (req/s)", "p99 TTFT (ms)"], rows)
    intro = (
        f"The same step schedule ({' -> '.join(f'{x:g}' for x in LEVELS)} x capacity,"
        f" {seg:g} s each, Poisson) through the router with admission off and with the timeline"
        f" rule (TTFT SLO {cfg.ttft_slo_s * 1e3:.0f} ms), one emulator with c = {SLOTS}."
    )
    data = {"config": {"slots": SLOTS, "levels": LEVELS, "segment_s": seg,
                       "service_s": cfg.service_s, "slo_s": cfg.ttft_slo_s,
                       "isolate": cfg.isolate},
            "phases": phases, "series": series}
    summary = summarize(data)
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(cfg, series, bounds), data=data,
                            elapsed_s=time.perf_counter() - t0)
