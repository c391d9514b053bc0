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
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.experiments import ExperimentResult, SweepConfig
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.output import fmt_ms, md_table, plt, write_experiment
from benchmarks.experiments.rig import Pool, serve

__all__ = ["NAME", "TITLE", "run"]

NAME = "exp7_hol"
TITLE = "7. Head-of-line blocking: short and long prompts, one pool against separate buckets"
SLOTS = 4
LONG_PREFILL_S = 0.060
SHORT_SHARE = 0.8
PROMPTS = "0.8*uniform:100:1000|0.2*uniform:3000:6000"
SHORT_MAX = 2000
"""Prompts below this are 'short' (the 2K bucket's)."""


def _pools(cfg: SweepConfig, layout: str) -> list[Pool]:
    long_art = cfg.artifact(SLOTS, name="bench-8k", prefill_s=LONG_PREFILL_S, max_seq_len=8192)
    if layout == "shared":
        return [Pool("long", long_art, 2)]
    short_art = cfg.artifact(SLOTS, name="bench-2k", max_seq_len=2048)
    return [Pool("short", short_art, 1), Pool("long", long_art, 1)]


def _long_service(cfg: SweepConfig) -> float:
    return LONG_PREFILL_S + (cfg.output_tokens - 1) * cfg.per_token_s


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
    top = max(loads)
    sh = next(p for p in points if p["layout"] == "shared" and p["load"] == top)
    sep = next(p for p in points if p["layout"] == "separate" and p["load"] == top)
    summary = (
        f"At {top:g} of the shared pool's capacity ({sh['rate_rps']:.0f} req/s), short"
        f" requests see p99 TTFT {fmt_ms(sh['short_p99'])} ms in the shared pool and"
        f" {fmt_ms(sep['short_p99'])} ms in their own bucket; long requests"
        f" {fmt_ms(sh['long_p99'])} ms and {fmt_ms(sep['long_p99'])} ms. In one pool compiled"
        " at the long shape every short request pays the long prefill and occupies a slot for"
        " the long service time; a bucket per shape lets short traffic run at its own speed"
        " and the router's placement by prompt length is all it takes."
    )
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
    return write_experiment(out_dir, NAME, TITLE, intro=intro, table_md=table, summary=summary,
                            figure=_plot(points), data=data, elapsed_s=time.perf_counter() - t0)
