"""Experiment 2: admission control under rising load - goodput and p99 TTFT of admitted
requests, the timeline rule against no control, a static concurrency cap and a token bucket.

One emulator replica with 4 slots behind the router; Poisson arrivals at 0.5 to 1.5 of
capacity; TTFT SLO ``cfg.ttft_slo_s``. The four policies (``none``, ``cap``, ``token_bucket``,
``timeline``) are those of :mod:`benchmarks.experiments.policies`; for ``timeline`` the
adaptive margin is recorded per point from ``/admin/buckets``.

A second part (:mod:`benchmarks.experiments.variable_lengths`) repeats the comparison with
variable output lengths, where a static cap must be tuned to a length it cannot know.

Goodput: completions meeting the TTFT SLO per second of the measured window. SLO
violations: admitted requests that completed late, as a share of the admitted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.experiments import ExperimentResult, SweepConfig, variable_lengths
from benchmarks.experiments.claims import (
    Claim,
    config,
    finite,
    listing,
    missing,
    ms,
    paragraph,
    pct,
    sentences,
)
from benchmarks.experiments.output import fmt_ms, fmt_pct, md_table, plt, write_experiment
from benchmarks.experiments.policies import POLICIES, load_point, policy_stack, static_cap
from benchmarks.experiments.rig import bucket_snapshot

__all__ = ["NAME", "TITLE", "claims", "run", "summarize"]

NAME = "exp2_admission"
TITLE = "2. Admission control under load: goodput and p99 of admitted requests"
SLOTS = 4

NEAR_CAPACITY = 0.9
"""Goodput "near capacity" means at least this share of it."""
COLLAPSED = 0.5
"""Goodput has "collapsed" below this share of capacity."""


def _at(points: list[dict[str, Any]], load: float) -> dict[str, dict[str, Any]]:
    return {p["policy"]: p for p in points if p["load"] == load}


def _capacity(data: Mapping[str, Any]) -> float:
    c = config(data)
    if finite(c.get("slots")) and finite(c.get("service_s")) and c["service_s"] > 0:
        return float(c["slots"]) / float(c["service_s"])
    return math.nan


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What the first part of experiment 2 shows (fixed lengths), each condition checked."""
    points: list[dict[str, Any]] = list(data.get("points") or [])
    cap, slo = _capacity(data), config(data).get("slo_s")
    loads = sorted({p["load"] for p in points})
    over = [x for x in loads if x > 1.0]
    under = [x for x in loads if x < 1.0]
    top = _at(points, max(over)) if over else {}
    out: list[Claim] = []
    text = "without admission control nothing is refused and goodput past capacity collapses"
    none = top.get("none")
    if none is not None and finite(cap):
        refused = max(p["rejected_share"] for p in points if p["policy"] == "none")
        out.append(Claim(text, refused == 0 and none["goodput_rps"] < COLLAPSED * cap,
                         f"at {none['load']:g}x: goodput {none['goodput_rps']:.1f} req/s of a"
                         f" capacity of {cap:.0f}, {pct(refused)} refused at most"))
    else:
        out.append(missing(text, "run of policy none past capacity"))
    tl = [p for p in points if p["policy"] == "timeline" and finite(p.get("p99_admitted"))]
    text = "the timeline rule keeps the p99 TTFT of the requests it admits within the SLO"
    if tl and finite(slo):
        worst = max(tl, key=lambda p: p["p99_admitted"])
        out.append(Claim(text, worst["p99_admitted"] <= slo,
                         f"at most {ms(worst['p99_admitted'])} ms, at {worst['load']:g}x,"
                         f" against {ms(slo, 0)} ms"))
    else:
        out.append(missing(text, "timeline run"))
    text = "past capacity the timeline rule keeps goodput near capacity"
    t = top.get("timeline")
    if t is not None and finite(cap):
        out.append(Claim(text, t["goodput_rps"] >= NEAR_CAPACITY * cap,
                         f"{t['goodput_rps']:.1f} req/s at {t['load']:g}x, capacity"
                         f" {cap:.0f} req/s"))
    else:
        out.append(missing(text, "timeline run past capacity"))
    text = ("below capacity the timeline rule refuses no more than the limiters that do not"
            " read the schedule (cap, token bucket)")
    low = _at(points, min(under)) if under else {}
    others = [low[k] for k in ("cap", "token_bucket") if k in low]
    if "timeline" in low and others:
        mine = low["timeline"]["rejected_share"]
        out.append(Claim(text, all(mine <= o["rejected_share"] for o in others),
                         f"at {min(under):g}x: timeline {pct(mine)}, " + ", ".join(
                             f"{o['policy']} {pct(o['rejected_share'])}" for o in others)))
    else:
        out.append(missing(text, "run below capacity of these policies"))
    return out


def summarize(data: Mapping[str, Any]) -> str:
    """Experiment 2's summary: the figures past capacity, :func:`claims`, and the second
    part's (:func:`benchmarks.experiments.variable_lengths.summary`)."""
    points: list[dict[str, Any]] = list(data.get("points") or [])
    cap = _capacity(data)
    loads = sorted({p["load"] for p in points})
    headline = ""
    if loads:
        top = _at(points, loads[-1])
        offered = next(iter(top.values()))["offered_rps"]
        headline = listing(
            f"At {loads[-1]:g}x capacity ({offered:.0f} req/s offered, capacity {cap:.0f}"
            " req/s)", [
                f"**{name}**: goodput {p['goodput_rps']:.1f} req/s, p99 admitted"
                f" {ms(p['p99_admitted'])} ms, {int(p['violations'])} SLO violations"
                f" ({pct(p['violation_share'])} of admitted), {pct(p['rejected_share'])}"
                " rejected" for name, p in top.items()])
    misses = [p for p in points if p["policy"] == "timeline" and p["violations"] > 0]
    note = listing(
        "The timeline rule's admitted requests that missed the SLO (its margin covers the"
        " delay the router sees after its decision, not the time before it)", [
            f"{int(p['violations'])} ({pct(p['violation_share'])}) at {p['load']:g}x, margin"
            f" {ms(p.get('margin_s'))} ms" for p in misses], sep=", ")
    lengths = variable_lengths.summary(list(data.get("length_points") or []))
    return paragraph([headline, sentences(claims(data)), note, lengths])


def _plot(cfg: SweepConfig, points: list[dict[str, Any]]) -> Any:
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.4))
    cap = cfg.capacity_rps(SLOTS)
    for i, policy in enumerate(POLICIES):
        mine = [p for p in points if p["policy"] == policy]
        x = [p["load"] for p in mine]
        a.plot(x, [p["goodput_rps"] for p in mine], "o-", color=f"C{i}", label=policy)
        b.plot(x, [p["p99_admitted"] * 1e3 for p in mine], "o-", color=f"C{i}", label=policy)
        c.plot(x, [p["rejected_share"] * 100 for p in mine], "o-", color=f"C{i}", label=policy)
    a.axhline(cap, color="grey", ls=":", label="capacity")
    a.set_ylabel("goodput (SLO-meeting completions / s)")
    b.axhline(cfg.ttft_slo_s * 1e3, color="red", ls="--", label="TTFT SLO")
    b.set_yscale("log")
    b.set_ylabel("p99 TTFT of admitted requests (ms)")
    c.set_ylabel("rejected (% of offered)")
    for ax in (a, b, c):
        ax.set_xlabel("offered load (x capacity)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"c = {SLOTS} slots, D = {cfg.service_s * 1e3:.0f} ms,"
                 f" TTFT SLO {cfg.ttft_slo_s * 1e3:.0f} ms")
    return fig


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    t0 = time.perf_counter()
    loads = (0.8, 1.5) if quick else (0.5, 0.8, 1.0, 1.2, 1.5)
    duration_s, warmup_s = (1.2, 0.2) if quick else (9.0, 1.0)
    points: list[dict[str, Any]] = []
    for policy in POLICIES:
        async with policy_stack(cfg, policy, SLOTS) as url:
            for load in loads:
                m = await load_point(cfg, url, policy, SLOTS, load, duration_s, cfg.seed)
                point = {"policy": policy, "load": load,
                         **m.slo_figures(cfg.ttft_slo_s, warmup_s, duration_s - warmup_s)}
                if policy == "timeline":
                    point["margin_s"] = (await bucket_snapshot(url, "main"))["margin"]["seconds"]
                points.append(point)
    length_loads = (1.5,) if quick else (1.0, 1.5)
    length_points = await variable_lengths.run_points(cfg, SLOTS, length_loads, duration_s,
                                                      warmup_s)
    rows = [[p["policy"], f"{p['load']:.1f}", f"{p['offered_rps']:.1f}",
             fmt_pct(p["rejected_share"]), f"{p['goodput_rps']:.1f}",
             f"{p['throughput_rps']:.1f}", fmt_ms(p["p50_admitted"]), fmt_ms(p["p99_admitted"]),
             f"{int(p['violations'])} ({fmt_pct(p['violation_share'])})",
             fmt_pct(p["attainment"]), int(p["failed"]),
             fmt_ms(p["margin_s"]) if "margin_s" in p else "-"]
            for p in points]
    table = md_table(["policy", "load", "offered (req/s)", "rejected", "goodput (req/s)",
                      "completed (req/s)", "p50 TTFT admitted (ms)", "p99 TTFT admitted (ms)",
                      "SLO violations (share of admitted)", "SLO attainment (of offered)",
                      "failed", "margin at end (ms)"], rows)
    table += ("\n" + variable_lengths.intro(cfg, SLOTS, duration_s) + "\n\n"
              + variable_lengths.table(length_points))
    intro = (
        f"Router with one emulator replica (c = {SLOTS}), Poisson arrivals for"
        f" {duration_s:g} s per point (the first {warmup_s:g} s not counted), TTFT SLO"
        f" {cfg.ttft_slo_s * 1e3:.0f} ms. Static cap = {static_cap(cfg, SLOTS)} in flight;"
        " token bucket at the capacity rate with a burst of c, applied in the client."
    )
    data = {"config": {"slots": SLOTS, "service_s": cfg.service_s, "slo_s": cfg.ttft_slo_s,
                       "static_cap": static_cap(cfg, SLOTS), "duration_s": duration_s,
                       "warmup_s": warmup_s, "isolate": cfg.isolate},
            "points": points, "length_points": length_points,
            "length_config": {"max_tokens": variable_lengths.MAX_TOKENS,
                              "mean_tokens": variable_lengths.MEAN_TOKENS,
                              "mean_service_s": variable_lengths.mean_service_s(cfg)}}
    summary = summarize(data)
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(cfg, points), data=data,
                            elapsed_s=time.perf_counter() - t0)
