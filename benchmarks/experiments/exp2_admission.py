"""Experiment 2: admission control under rising load - goodput and p99 TTFT of admitted
requests, the timeline rule against no control, a static concurrency cap and a token bucket.

One emulator replica with 4 slots behind the router; Poisson arrivals at 0.5 to 1.5 of
capacity; TTFT SLO ``cfg.ttft_slo_s``. The four policies:

* ``none``: router mode ``off``, no caps - everything is admitted and queues at the backend;
* ``cap``: mode ``off`` with the bucket's ``max_concurrency = c * (1 + floor((SLO - prefill)
  / D))``, the in-flight count at which a newcomer's FIFO wait would reach the SLO;
* ``token_bucket``: a rate limiter at the capacity rate (burst ``c``). The router's own
  per-tenant limiter holds a whole minute's allowance as its burst, so it cannot express
  this; the bucket is emulated in the load generator as a pre-filter (a refused request is
  recorded as rejected and never sent), in front of mode ``off``;
* ``timeline``: mode ``timeline`` with the SLO, the utilization guard disabled (target 1.0,
  the standard class never shed on utilization) so that only the predicted TTFT decides, and
  the default adaptive margin (recorded per point from ``/admin/buckets``).

A second part (:mod:`benchmarks.experiments.exp2_lengths`) repeats the comparison with
variable output lengths, where a static cap must be tuned to a length it cannot know.

Goodput: completions meeting the TTFT SLO per second of the measured window. SLO
violations: admitted requests that completed late, as a share of the admitted.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import ExperimentResult, SweepConfig, exp2_lengths
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.output import fmt_ms, fmt_pct, md_table, plt, write_experiment
from benchmarks.experiments.rig import Pool, bucket_snapshot, serve
from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.workload import PlannedRequest

__all__ = ["NAME", "POLICIES", "SLOTS", "TITLE", "load_point", "policy_stack", "run",
           "token_bucket_passes"]

NAME = "exp2_admission"
TITLE = "2. Admission control under load: goodput and p99 of admitted requests"
POLICIES = ("none", "cap", "token_bucket", "timeline")
SLOTS = 4


def static_cap(cfg: SweepConfig, slots: int) -> int:
    """In-flight cap at which a newcomer's FIFO wait reaches the TTFT SLO."""
    return slots * (1 + math.floor((cfg.ttft_slo_s - cfg.prefill_s) / cfg.service_s))


def token_bucket_passes(times: np.ndarray, rate: float, burst: float) -> np.ndarray:
    """Which arrivals a token bucket (``rate`` per s, ``burst`` deep, full at 0) lets through."""
    passes = np.zeros(times.size, dtype=np.bool_)
    level, last = burst, 0.0
    for i, t in enumerate(times.tolist()):
        level = min(burst, level + (t - last) * rate)
        last = t
        if level >= 1.0:
            level -= 1.0
            passes[i] = True
    return passes


@contextlib.asynccontextmanager
async def policy_stack(cfg: SweepConfig, policy: str, slots: int) -> AsyncIterator[str]:
    """The router (and its emulator) configured for ``policy``; yields the router URL."""
    options: dict[str, Any] = {"ttft_slo_s": cfg.ttft_slo_s, "target_utilization": 1.0}
    admission: dict[str, Any] = {"mode": "off"}
    if policy == "cap":
        options["max_concurrency"] = static_cap(cfg, slots)
    elif policy == "timeline":
        admission = {"mode": "timeline",
                     "priorities": {"standard": {"utilization_factor": "never"}}}
    elif policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    async with serve(cfg, [Pool("main", cfg.artifact(slots), 1, options)], admission) as stack:
        yield stack.url


async def load_point(cfg: SweepConfig, url: str, policy: str, slots: int, load: float,
                     duration_s: float, seed: int) -> Measured:
    """One open-loop run at ``load`` x capacity through ``url`` under ``policy``."""
    rate = load * cfg.capacity_rps(slots)
    planned = plan(cfg, np.random.default_rng([seed, round(load * 1000)]), rate=rate,
                   duration_s=duration_s)
    if policy != "token_bucket":
        return Measured.of(await drive(url, planned, cfg, seed=seed))
    times = np.array([p.at_s for p in planned])
    passes = token_bucket_passes(times, cfg.capacity_rps(slots), float(slots))
    sent: list[PlannedRequest] = [p for p, ok in zip(planned, passes, strict=True) if ok]
    records = iter(await drive(url, sent, cfg, seed=seed))
    merged: list[RequestRecord] = []
    for p, ok in zip(planned, passes, strict=True):
        if ok:
            merged.append(next(records))
        else:
            merged.append(RequestRecord(p.index, p.at_s, p.prompt_tokens, p.max_tokens,
                                        outcome=ClientOutcome.REJECTED.value,
                                        error="token bucket (client-side)"))
    return Measured.of(merged)


def _timeline_note(p: dict[str, Any], load: float) -> str:
    """What the timeline rule did at ``load`` with its adaptive margin, from the figures."""
    margin = fmt_ms(p["margin_s"]) if "margin_s" in p else "?"
    if p["violations"] == 0:
        return (f" At {load:g}x, with the adaptive margin at {margin} ms at the end of the run,"
                " every request the timeline rule admitted met the SLO.")
    return (f" At {load:g}x the timeline rule still let {int(p['violations'])} of the admitted"
            f" requests ({fmt_pct(p['violation_share'])}) miss the SLO, with the adaptive margin at"
            f" {margin} ms: the margin covers the 99th percentile of the delay the router sees"
            " between its decision and the first byte coming back; it cannot see the request"
            " waiting in the router's socket and event loop before the decision, the relay to"
            " the client, or the load generator sending late - all sharing the 2 busy cores"
            " here.")


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
    length_points = await exp2_lengths.run_points(cfg, SLOTS, length_loads, duration_s, warmup_s)
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
    table += ("\n" + exp2_lengths.intro(cfg, SLOTS, duration_s) + "\n\n"
              + exp2_lengths.table(length_points))
    top, low = max(loads), min((x for x in loads if x < 1.0), default=min(loads))
    at_top = {p["policy"]: p for p in points if p["load"] == top}
    at_low = {p["policy"]: p for p in points if p["load"] == low}
    summary = (
        f"At {top:g}x capacity ({at_top['none']['offered_rps']:.0f} req/s offered, capacity"
        f" {cfg.capacity_rps(SLOTS):.0f} req/s): " + "; ".join(
            f"**{name}**: goodput {p['goodput_rps']:.1f} req/s, p99 admitted"
            f" {fmt_ms(p['p99_admitted'])} ms, {int(p['violations'])} SLO violations"
            f" ({fmt_pct(p['violation_share'])} of admitted), {fmt_pct(p['rejected_share'])}"
            " rejected" for name, p in at_top.items())
        + f". Below capacity ({low:g}x) they reject " + ", ".join(
            f"{name} {fmt_pct(p['rejected_share'])}" for name, p in at_low.items())
        + ". Without control nothing is refused and every request queues at the backend; a"
        " limiter that does not know the schedule (cap, token bucket) must trade refusals"
        " below capacity against latency above it; the timeline rule refuses a request only"
        " when its predicted TTFT plus its margin would exceed the SLO."
        + _timeline_note(at_top["timeline"], top) + " " + exp2_lengths.summary(length_points)
    )
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
            "length_config": {"max_tokens": exp2_lengths.MAX_TOKENS,
                              "mean_tokens": exp2_lengths.MEAN_TOKENS,
                              "mean_service_s": exp2_lengths.mean_service_s(cfg)}}
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(cfg, points), data=data,
                            elapsed_s=time.perf_counter() - t0)
