"""Variable output lengths, where a static cap must be tuned to a length it cannot know: the
second part of experiment 2 (:mod:`exp2_admission` runs :func:`run_points`). Not an
experiment of its own: no experiment module imports another.

The same replica (c = 4 slots, TTFT SLO ``cfg.ttft_slo_s``), but every request asks for
``MAX_TOKENS`` and the emulator stops it after a seeded geometric number of tokens with mean
``MEAN_TOKENS`` (clipped to the allowance), so the mean service time equals the fixed one of
the first part while single requests hold a slot up to ``service_time(MAX_TOKENS)``. Four
policies:

* ``cap_mean``: mode ``off`` with the concurrency cap of the first part computed from the
  *mean* service time - tuned for the average request;
* ``cap_worst``: the same formula with the worst-case service time (``MAX_TOKENS``);
* ``timeline_worst``: mode ``timeline``, ``prediction = "worst_case"`` (reserve the whole
  allowance);
* ``timeline_learned``: mode ``timeline``, ``prediction = "learned"`` (reserve the learned
  95th percentile of the completion lengths).

Both timeline policies run with the default (adaptive) margin and the utilization guard off.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from benchmarks.experiments import SweepConfig
from benchmarks.experiments.claims import Claim, listing, missing, ms, paragraph, pct, sentences
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.output import fmt_ms, fmt_pct, md_table
from benchmarks.experiments.policies import static_cap, timeline_admission
from benchmarks.experiments.rig import Pool, serve
from lpu_emulator.lengths import OutputLength

__all__ = ["LENGTH_POLICIES", "MAX_TOKENS", "MEAN_TOKENS", "claims", "intro", "mean_service_s",
           "run_points", "summary", "table", "worst_service_s"]

LENGTH_POLICIES = ("cap_mean", "cap_worst", "timeline_worst", "timeline_learned")
MAX_TOKENS = 100
MEAN_TOKENS = 10.0
_PREDICTION = {"timeline_worst": "worst_case", "timeline_learned": "learned"}


def mean_service_s(cfg: SweepConfig) -> float:
    """Mean slot time of a geometric(mean ``MEAN_TOKENS``) length clipped to ``MAX_TOKENS``:
    ``sum_k P(N = k) service_time(k)``, with ``P(N = k) = p (1 - p)^(k - 1)`` below the clip,
    the rest of the mass ``(1 - p)^(M - 1)`` at ``M``, and ``p = 1 / MEAN_TOKENS``."""
    art, p = cfg.artifact(1), 1.0 / MEAN_TOKENS
    below = sum(p * (1.0 - p) ** (k - 1) * art.service_time(k) for k in range(1, MAX_TOKENS))
    return below + (1.0 - p) ** (MAX_TOKENS - 1) * art.service_time(MAX_TOKENS)


def worst_service_s(cfg: SweepConfig) -> float:
    """The slot time of a request that makes its whole allowance ``MAX_TOKENS``."""
    return cfg.artifact(1).service_time(MAX_TOKENS)


@contextlib.asynccontextmanager
async def _stack(cfg: SweepConfig, policy: str, slots: int) -> AsyncIterator[str]:
    options: dict[str, Any] = {"ttft_slo_s": cfg.ttft_slo_s, "target_utilization": 1.0}
    admission: dict[str, Any] = {"mode": "off"}
    if policy == "cap_mean":
        options["max_concurrency"] = static_cap(cfg, slots, mean_service_s(cfg))
    elif policy == "cap_worst":
        options["max_concurrency"] = static_cap(cfg, slots, worst_service_s(cfg))
    elif policy in ("timeline_worst", "timeline_learned"):
        admission = timeline_admission(prediction=_PREDICTION[policy])
    else:
        raise ValueError(f"unknown policy {policy!r}")
    pool = Pool("main", cfg.artifact(slots), 1, options,
                output_length=OutputLength("geometric", mean=MEAN_TOKENS), seed=cfg.seed)
    async with serve(cfg, [pool], admission) as stack:
        yield stack.url


async def run_points(cfg: SweepConfig, slots: int, loads: tuple[float, ...], duration_s: float,
                     warmup_s: float) -> list[dict[str, Any]]:
    """Every policy at every load; one dict of :meth:`Measured.slo_figures` per point."""
    capacity = slots / mean_service_s(cfg)
    points: list[dict[str, Any]] = []
    for policy in LENGTH_POLICIES:
        async with _stack(cfg, policy, slots) as url:
            for load in loads:
                planned = plan(cfg, np.random.default_rng([cfg.seed, round(load * 1000), 7]),
                               rate=load * capacity, duration_s=duration_s,
                               max_tokens=MAX_TOKENS)
                m = Measured.of(await drive(url, planned, cfg, seed=cfg.seed))
                points.append({"policy": policy, "load": load,
                               **m.slo_figures(cfg.ttft_slo_s, warmup_s, duration_s - warmup_s)})
    return points


def table(points: list[dict[str, Any]]) -> str:
    rows = [[p["policy"], f"{p['load']:.1f}", f"{p['offered_rps']:.1f}",
             fmt_pct(p["rejected_share"]), f"{p['goodput_rps']:.1f}",
             f"{p['throughput_rps']:.1f}", fmt_ms(p["p99_admitted"]),
             f"{int(p['violations'])} ({fmt_pct(p['violation_share'])})", int(p["failed"])]
            for p in points]
    return md_table(["policy", "load", "offered (req/s)", "rejected", "goodput (req/s)",
                     "completed (req/s)", "p99 TTFT admitted (ms)",
                     "SLO violations (share of admitted)", "failed"], rows)


def intro(cfg: SweepConfig, slots: int, duration_s: float) -> str:
    worst = worst_service_s(cfg)
    return (
        f"Variable output lengths: max_tokens = {MAX_TOKENS}, the emulator stops after a"
        f" seeded geometric length of mean {MEAN_TOKENS:g} tokens (mean service time"
        f" {mean_service_s(cfg) * 1e3:.0f} ms, worst case {worst * 1e3:.0f} ms; load is relative"
        f" to the mean capacity {slots / mean_service_s(cfg):.0f} req/s), {duration_s:g} s per"
        f" point. cap_mean = {static_cap(cfg, slots, mean_service_s(cfg))} in flight,"
        f" cap_worst = {static_cap(cfg, slots, worst)}."
    )


def claims(points: list[dict[str, Any]]) -> list[Claim]:
    """What the variable-length part shows at its highest load, each condition checked."""
    top = max((p["load"] for p in points), default=None)
    at = {p["policy"]: p for p in points if p["load"] == top}
    mean, worst, learned = at.get("cap_mean"), at.get("cap_worst"), at.get("timeline_learned")
    out: list[Claim] = []
    text = "a cap tuned to the mean length lets some admitted requests miss the SLO"
    out.append(missing(text, "cap_mean run") if mean is None else Claim(
        text, mean["violations"] > 0,
        f"{int(mean['violations'])} ({pct(mean['violation_share'])}) at {top:g}x"))
    text = "a cap tuned to the worst-case length gives up goodput"
    if mean is not None and worst is not None and mean["goodput_rps"] > 0:
        lost = 1.0 - worst["goodput_rps"] / mean["goodput_rps"]
        out.append(Claim(text, lost >= 0.1, f"{pct(lost)} less than cap_mean at {top:g}x"))
    else:
        out.append(missing(text, "cap_mean and cap_worst runs"))
    text = ("the timeline rule with learned lengths keeps the SLO at the goodput of the cap"
            " tuned to the mean")
    if mean is not None and learned is not None:
        out.append(Claim(text, learned["violations"] == 0
                         and learned["goodput_rps"] >= 0.95 * mean["goodput_rps"],
                         f"{int(learned['violations'])} violations, goodput"
                         f" {learned['goodput_rps']:.1f} against {mean['goodput_rps']:.1f}"
                         " req/s"))
    else:
        out.append(missing(text, "cap_mean and timeline_learned runs"))
    return out


def summary(points: list[dict[str, Any]]) -> str:
    """The second part's figures at its highest load and :func:`claims`; ``""`` without
    points."""
    if not points:
        return ""
    top = max(p["load"] for p in points)
    figures = listing(f"With variable lengths at {top:g}x", [
        f"**{p['policy']}** goodput {p['goodput_rps']:.1f} req/s, {int(p['violations'])}"
        f" violations ({pct(p['violation_share'])}), p99 admitted"
        f" {ms(p['p99_admitted'])} ms" for p in points if p["load"] == top])
    return paragraph([figures, sentences(claims(points))])
