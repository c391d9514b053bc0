"""Experiment 7: head-of-line blocking - short and long prompts sharing one pool against
separate buckets, same hardware.

A compiled schedule pads every prompt to its shape, so a pool compiled at the long shape
charges a 200-token prompt the long prefill and occupancy. Two layouts of two replicas
(4 slots each) behind the router (mode ``off``), one public model:

* ``shared``: one bucket, both replicas compiled at the long shape (8K): every request pays
  the long prefill (60 ms) and holds a slot for the long service time;
* ``separate``: a short bucket (2K, 12 ms prefill) on one replica and a long bucket (8K) on
  the other; the router places each request by its prompt length.

Traffic: 80% short prompts (100-1000 tokens) and 20% long ones (3000-6000), Poisson, at a
share of the shared pool's capacity. Reported: p50/p99 TTFT of short and long requests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import ExperimentResult, SweepConfig
from benchmarks.experiments.claims import Claim, finite, missing, ms, paragraph, sentences
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.output import fmt_ms, md_table, plt, write_experiment
from benchmarks.experiments.rig import Pool, serve
from lpu_protocol.artifact import Artifact

__all__ = ["NAME", "TITLE", "claims", "run", "summarize"]

NAME = "exp7_hol"
TITLE = "7. Head-of-line blocking: short and long prompts, one pool against separate buckets"
SLOTS = 4
LONG_PREFILL_S = 0.060
SHORT_SHARE = 0.8
PROMPTS = "0.8*uniform:100:1000|0.2*uniform:3000:6000"
SHORT_MAX = 2000
"""Prompts below this are 'short' (the 2K bucket's)."""


def _long_artifact(cfg: SweepConfig) -> Artifact:
    return cfg.artifact(SLOTS, name="bench-8k", prefill_s=LONG_PREFILL_S, max_seq_len=8192)


def _pools(cfg: SweepConfig, layout: str) -> list[Pool]:
    long_art = _long_artifact(cfg)
    if layout == "shared":
        return [Pool("long", long_art, 2)]
    short_art = cfg.artifact(SLOTS, name="bench-2k", max_seq_len=2048)
    return [Pool("short", short_art, 1), Pool("long", long_art, 1)]


def _long_service(cfg: SweepConfig) -> float:
    return _long_artifact(cfg).service_time(cfg.output_tokens)


def claims(data: Mapping[str, Any]) -> list[Claim]:
    """What experiment 7's figures show at every load, each with its condition checked."""
    points: list[dict[str, Any]] = list(data.get("points") or [])
    pairs = []
    for load in sorted({p["load"] for p in points}):
        sh = next((p for p in points if p["layout"] == "shared" and p["load"] == load), None)
        sep = next((p for p in points if p["layout"] == "separate" and p["load"] == load), None)
        if sh is not None and sep is not None:
            pairs.append((load, sh, sep))
    out: list[Claim] = []
    for key, text in (
        ("short_p99", "a bucket per shape lowers the short prompts' p99 TTFT"),
        ("long_p99", "a bucket per shape does not raise the long prompts' p99 TTFT"),
    ):
        ok = [(load, sh, sep) for load, sh, sep in pairs
              if finite(sh.get(key)) and finite(sep.get(key))]
        if not ok:
            out.append(missing(text, "load run with both layouts"))
            continue
        strict = key == "short_p99"
        holds = all(sep[key] < sh[key] if strict else sep[key] <= sh[key] for _, sh, sep in ok)
        out.append(Claim(text, holds, "; ".join(
            f"at {load:g}: {ms(sh[key])} ms shared, {ms(sep[key])} ms separate"
            for load, sh, sep in ok)))
    return out


def summarize(data: Mapping[str, Any]) -> str:
    """Experiment 7's summary: :func:`claims` (their evidence holds the figures) and why."""
    found = claims(data)
    why = ("In one pool compiled at the long shape every short request pays the long prefill"
           " and holds a slot for the long service time; the router places each request by"
           " its prompt length." if found[0].holds else "")
    unit = "Load in units of the shared pool's capacity." if data.get("points") else ""
    return paragraph([unit, sentences(found), why])


def _plot(points: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    labels = [f"{p['layout']}\nload {p['load']:g}" for p in points]
    x = np.arange(len(points))
    ax.bar(x - 0.2, [p["short_p99"] * 1e3 for p in points], 0.4, label="short prompts p99")
    ax.bar(x + 0.2, [p["long_p99"] * 1e3 for p in points], 0.4, label="long prompts p99")
    ax.plot(x - 0.2, [p["short_p50"] * 1e3 for p in points], "k_", ms=18, mew=2,
            label="p50 (short)")
    ax.set_xticks(x, labels)
    ax.set_ylabel("TTFT (ms)")
    ax.set_title("80% short / 20% long prompts, 2 replicas x 4 slots")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


async def run(cfg: SweepConfig, out_dir: Path, quick: bool) -> ExperimentResult:
    t0 = time.perf_counter()
    loads = (0.6,) if quick else (0.6, 0.9)
    duration_s, warmup_s = (1.2, 0.2) if quick else (10.0, 1.0)
    shared_capacity = 2 * SLOTS / _long_service(cfg)
    points: list[dict[str, Any]] = []
    for layout in ("shared", "separate"):
        async with serve(cfg, _pools(cfg, layout), {"mode": "off"}) as stack:
            for load in loads:
                rate = load * shared_capacity
                planned = plan(cfg, np.random.default_rng([cfg.seed, 7, round(load * 100)]),
                               rate=rate, duration_s=duration_s, prompt_tokens=PROMPTS)
                m = Measured.of(await drive(stack.url, planned, cfg, seed=cfg.seed))
                keep = m.after(warmup_s) & m.completed
                short = m.ttft[keep & (m.prompt_tokens < SHORT_MAX)]
                long_ = m.ttft[keep & (m.prompt_tokens >= SHORT_MAX)]
                points.append({
                    "layout": layout, "load": load, "rate_rps": rate, "failed": m.failed,
                    "short_n": int(short.size), "long_n": int(long_.size),
                    "short_p50": float(np.percentile(short, 50)),
                    "short_p99": float(np.percentile(short, 99)),
                    "long_p50": float(np.percentile(long_, 50)),
                    "long_p99": float(np.percentile(long_, 99)),
                })
    rows = [[p["layout"], f"{p['load']:g}", f"{p['rate_rps']:.0f}", p["short_n"],
             fmt_ms(p["short_p50"]), fmt_ms(p["short_p99"]), p["long_n"], fmt_ms(p["long_p50"]),
             fmt_ms(p["long_p99"])] for p in points]
    table = md_table(["layout", "load (x shared capacity)", "rate (req/s)", "short n",
                      "short p50 (ms)", "short p99 (ms)", "long n", "long p50 (ms)",
                      "long p99 (ms)"], rows)
    intro = (
        f"Two replicas of {SLOTS} slots behind the router (mode `off`), prompts {PROMPTS}"
        f" tokens, {cfg.output_tokens} output tokens; long shape prefill"
        f" {LONG_PREFILL_S * 1e3:.0f} ms (service {_long_service(cfg) * 1e3:.0f} ms), short"
        f" shape {cfg.prefill_s * 1e3:.0f} ms (service {cfg.service_s * 1e3:.0f} ms);"
        f" {duration_s:g} s per point (first {warmup_s:g} s not counted)."
    )
    data = {"config": {"slots": SLOTS, "prompts": PROMPTS, "short_share": SHORT_SHARE,
                       "long_prefill_s": LONG_PREFILL_S, "short_prefill_s": cfg.prefill_s,
                       "duration_s": duration_s, "warmup_s": warmup_s, "isolate": cfg.isolate},
            "points": points}
    summary = summarize(data)
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(points), data=data, elapsed_s=time.perf_counter() - t0)
