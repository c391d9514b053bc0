"""Experiment 1, one point: the router (admission off) in front of one emulator replica with
``c`` slots, Poisson arrivals at ``rho * c / D``, measured until the p99 TTFT is known to
within +-10% (or a time cap), with the warm-up cut off.

Below capacity a point is one long run (:func:`benchmarks.experiments.long_run.run_until`):
the warm-up is the later of :data:`WARMUP_SERVICE_TIMES` service times and the MSER-5 cut of
the number in system each arrival found (:func:`~benchmarks.experiments.stationary.warmup_index`);
after it, the p99's 95% batch-means interval
(:func:`~benchmarks.experiments.stationary.batch_quantile_ci`) is checked whenever a
segment has drained, and the run stops once it is within +-:data:`TARGET` of the estimate
and at least :data:`MIN_MEASURED_S` have been counted. Beyond capacity there is no
stationary state: such a point is a fixed run from empty, its first seconds not counted.

The exact FIFO schedule a point is compared with is that of its *intended* arrival times
(the M/D/c sample path of this run's Poisson draws), so measured minus exact is everything
the rig adds, the load generator's own send lateness included. A point below capacity
also carries where that time goes (:mod:`benchmarks.experiments.exp1_overhead`), from the
emulator's recorded schedule of the run's last requests and its first-token lateness
histogram, read once the arrivals have ended.

Each point starts its own stack, so a full run can take the measurement lock point by
point: ``python3 -m benchmarks.experiments.exp1_point --rho 0.9 --cache DIR`` measures one,
``python3 -m benchmarks.experiments.exp1_point --write --cache DIR`` writes experiment 1's
files from the points in ``DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from benchmarks import theory
from benchmarks.experiments import SweepConfig
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.exp1_overhead import decompose, first_token_lateness
from benchmarks.experiments.exp1_realtime import realtime
from benchmarks.experiments.long_run import LongRun, run_until
from benchmarks.experiments.rig import Pool, serve
from benchmarks.experiments.schedule import fifo_starts, mean_wait_band
from benchmarks.experiments.stationary import batch_quantile_ci, run_warmup_index
from benchmarks.schedule_polling import read_schedule

__all__ = ["FULL", "QUICK", "TARGET", "Design", "exact_intended_ttft", "measure_point",
           "point_config", "predictions"]

TARGET = 0.10
"""Stop once the p99's interval is within this share of its estimate."""
WARMUP_SERVICE_TIMES = 200
"""The warm-up floor, in service times D."""
MIN_MEASURED_S = 60.0
SEGMENT_S = 30.0
COVERAGE = 0.99
"""The share of simulated runs' mean waits that M/D/c's range for a point holds."""


@dataclass(frozen=True, slots=True)
class Design:
    """What experiment 1 measures: the slot count(s), the utilizations, the request shape
    and how long each point may run."""

    slot_counts: tuple[int, ...]
    rhos: tuple[float, ...]
    prefill_s: float | None
    """None keeps the sweep's shape; a number makes every request one token whose whole
    service time is this prefill."""
    cap_s: float
    """Seconds of arrivals at most per point below capacity (warm-up included)."""
    overload_s: float
    """Length of a point beyond capacity (from empty)."""
    overload_warmup_s: float
    stationary: bool = True
    """False (quick runs): every point one fixed run of ``cap_s`` with a warm-up floor of
    ``overload_warmup_s`` and no stopping rule."""


FULL = Design(slot_counts=(16,), rhos=(0.3, 0.5, 0.7, 0.8, 0.9, 1.2, 1.5), prefill_s=0.120,
              cap_s=720.0, overload_s=20.0, overload_warmup_s=2.0)
"""c = 16 and D = 120 ms, one token. The requests a +-10% p99 interval at rho 0.9 needs do
not shrink with c or D (the queue's relaxation time holds about rho^2 / (1 - rho)^2
arrivals); simulated, about 3.5 x 10^5 at c = 4, D = 30 ms (50 minutes at 120 req/s) and
1.9 x 10^5 here, where TTFT = W + D. 120 req/s at rho 0.9 is the rate the earlier c = 4 runs
had: the rig's overhead grows with the rate on 2 shared cores, and a one-token request is the
cheapest to proxy and stream. At rho 0.9 the cap ends the run first (about +-15% expected)."""
QUICK = Design(slot_counts=(2,), rhos=(0.6, 1.2), prefill_s=None, cap_s=1.2, overload_s=1.2,
               overload_warmup_s=0.2, stationary=False)


def point_config(cfg: SweepConfig, design: Design) -> SweepConfig:
    """The sweep's config with this design's request shape."""
    if design.prefill_s is None:
        return cfg
    return replace(cfg, prefill_s=design.prefill_s, output_tokens=1)


def _cut(m: Measured, cfg: SweepConfig, floor_s: float, stationary: bool) -> int:
    if not stationary:
        return int(np.searchsorted(m.intended, floor_s, side="left"))
    return run_warmup_index(m.intended, m.ttft, prefill_s=cfg.prefill_s,
                            service_s=cfg.service_s, floor_s=floor_s)


def predictions(cfg: SweepConfig, slots: int, rho: float) -> dict[str, float]:
    """Stationary M/D/c p50 and p99 TTFT, p99 wait, and M/M/c p99 TTFT (NaN at or beyond
    capacity)."""
    if rho >= 0.995:
        return {"mdc_p50": math.nan, "mdc_p99": math.nan, "mmc_p99": math.nan,
                "mdc_wait_p99": math.nan}
    lam, d, pre = rho * cfg.capacity_rps(slots), cfg.service_s, cfg.prefill_s
    return {
        "mdc_p50": theory.mdc_ttft_percentile(0.5, lam, slots, d, pre),
        "mdc_p99": theory.mdc_ttft_percentile(0.99, lam, slots, d, pre),
        "mdc_wait_p99": theory.mdc_wait_percentile(0.99, lam, slots, d),
        "mmc_p99": theory.mmc_wait_percentile(0.99, lam, slots, d) + pre,
    }


def exact_intended_ttft(m: Measured, slots: int, service_s: float, prefill_s: float
                        ) -> npt.NDArray[np.float64]:
    """Each request's TTFT under the exact FIFO schedule of the run's intended arrival
    times (not the times the load generator managed to send them: its lateness is part of
    what the rig adds)."""
    return np.asarray(fifo_starts(m.intended, slots, service_s) - m.intended + prefill_s)


def _figures(m: Measured, cfg: SweepConfig, slots: int, rho: float, cut: int) -> dict[str, Any]:
    keep = np.zeros(m.intended.size, dtype=bool)
    keep[cut:] = True
    done = keep & m.completed
    ttft = m.ttft[done]
    exact_all = exact_intended_ttft(m, slots, cfg.service_s, cfg.prefill_s)
    err = np.abs(ttft - exact_all[done])
    lag = (m.sent - m.intended)[keep & np.isfinite(m.sent)]  # the load generator's lateness
    p99 = batch_quantile_ci(ttft, 0.99)
    warmup_s = float(m.intended[cut]) if cut < m.intended.size else math.nan
    measured_s = float(m.intended[-1] - m.intended[cut]) if cut < m.intended.size else 0.0
    out: dict[str, Any] = {
        "slots": slots, "rho": rho, "rate_rps": rho * cfg.capacity_rps(slots),
        "n": int(ttft.size), "failed": int((keep & ~m.completed & ~m.rejected).sum()),
        "warmup_s": warmup_s, "measured_s": measured_s,
        "p50": batch_quantile_ci(ttft, 0.5).as_list(), "p99": p99.as_list(),
        "p99_ci": p99.to_dict(),
        "exact_p50": float(np.percentile(exact_all[done], 50)),
        "exact_p99": float(np.percentile(exact_all[done], 99)),
        "err_p50": float(np.percentile(err, 50)), "err_p90": float(np.percentile(err, 90)),
        "send_lag_p99": float(np.percentile(lag, 99)) if lag.size else math.nan,
        "send_lag_max": float(lag.max()) if lag.size else math.nan,
        "mean_wait": float(ttft.mean()) - cfg.prefill_s,
        **predictions(cfg, slots, rho),
    }
    if math.isfinite(out["mdc_p99"]):
        out["p99_vs_mdc"] = p99.estimate / out["mdc_p99"] - 1.0
        wait = p99.estimate - cfg.prefill_s
        out["wait_p99_vs_mdc"] = (wait / out["mdc_wait_p99"] - 1.0
                                  if out["mdc_wait_p99"] > 0 else math.nan)
    if rho < 1.0 and measured_s > 0:
        band = mean_wait_band(out["rate_rps"], slots, cfg.service_s, duration_s=measured_s,
                              warmup_s=warmup_s, runs=1, coverage=COVERAGE, groups=400,
                              rng=np.random.default_rng([cfg.seed, slots, round(rho * 1000), 99]))
        out["mdc_mean_wait_band"] = list(band)
    return out


async def measure_point(cfg: SweepConfig, design: Design, slots: int, rho: float
                        ) -> dict[str, Any]:
    """Start a stack, measure one point and return its figures (seconds), and under
    ``"_measured"`` the run's records as arrays (not JSON: the caller takes them out)."""
    pcfg = point_config(cfg, design)
    lam = rho * pcfg.capacity_rps(slots)
    rng = np.random.default_rng([cfg.seed, slots, round(rho * 1000)])
    pool = Pool("main", pcfg.artifact(slots), 1, {"ttft_slo_s": 60.0})
    stationary = design.stationary and rho < 1.0
    async with serve(pcfg, [pool], {"mode": "off"}) as stack, contextlib.AsyncExitStack() as ex:
        # Isolated (the full run): the stack and this loop ahead of other sessions' work.
        scheduling = ex.enter_context(realtime(stack.pids)) if pcfg.isolate else "in-process"
        if not stationary:
            length = design.cap_s if rho < 1.0 else design.overload_s
            m = Measured.of(await drive(stack.url, plan(pcfg, rng, rate=lam, duration_s=length),
                                        pcfg, seed=cfg.seed))
            out = _figures(m, pcfg, slots, rho, _cut(m, pcfg, design.overload_warmup_s, False))
            return out | {"stopped_by": "fixed", "scheduling": scheduling, "_measured": m}
        floor_s = WARMUP_SERVICE_TIMES * pcfg.service_s
        times = np.array([p.at_s for p in plan(pcfg, rng, rate=lam, duration_s=design.cap_s)])

        def enough(m: Measured) -> bool:
            cut = _cut(m, pcfg, floor_s, True)
            if cut >= m.intended.size or m.intended[-1] - m.intended[cut] < MIN_MEASURED_S:
                return False
            ttft = m.ttft[cut:][m.completed[cut:]]
            return batch_quantile_ci(ttft, 0.99).relative_half_width <= TARGET

        run = await run_until(stack.url, pcfg, times, segment_s=SEGMENT_S, enough=enough,
                              seed=cfg.seed, max_tokens=pcfg.output_tokens, request_ids=True)
        emulator = stack.backends[pool.name][0]
        async with aiohttp.ClientSession() as session:
            entries = await read_schedule(session, emulator)
            async with session.get(emulator + "/metrics") as r:
                metrics_text = await r.text()
    m = run.measured
    cut = _cut(m, pcfg, floor_s, True)
    out = _figures(m, pcfg, slots, rho, cut)
    return out | {"stopped_by": run.stopped_by, "sent_s": run.sent_s, "scheduling": scheduling,
                  "rig": _rig(run, pcfg, slots, cut, entries),
                  "emulator_first_token": first_token_lateness(metrics_text), "_measured": m}


def _rig(run: LongRun, cfg: SweepConfig, slots: int, cut: int,
         entries: list[Any]) -> dict[str, Any]:
    """Where the rig's time went (:func:`~benchmarks.experiments.exp1_overhead.decompose`)
    over the counted, completed requests still on the emulator's recorded schedule."""
    m = run.measured
    keep = np.zeros(m.intended.size, dtype=bool)
    keep[cut:] = True
    return decompose(intended=m.intended, sent=m.sent, ttft=m.ttft,
                     exact_ttft=exact_intended_ttft(m, slots, cfg.service_s, cfg.prefill_s),
                     request_ids=run.request_ids or [], keep=keep & m.completed,
                     origin_mono=run.origin_mono, entries=entries)


def _point_file(cache: Path, slots: int, rho: float) -> Path:
    return cache / f"c{slots}-rho{rho:g}.json"


def main(argv: list[str] | None = None) -> int:
    """Measure one point into ``--cache``, or write experiment 1 from the cached points."""
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.experiments.exp1_point")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--rho", type=float, default=None)
    p.add_argument("--slots", type=int, default=FULL.slot_counts[0])
    p.add_argument("--write", action="store_true", help="write the experiment's files")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--load-note", default=None,
                   help="what else ran on the machine, for the report (with --write)")
    args = p.parse_args(argv)
    from benchmarks.run_command import run_async

    cfg = SweepConfig()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.write:
        from benchmarks.experiments import exp1_queueing

        # The points measured so far, in the design's order (a missing one is left out
        # and its claims say so).
        files = [_point_file(args.cache, c, r) for c in FULL.slot_counts for r in FULL.rhos]
        points = [json.loads(f.read_text("utf-8")) for f in files if f.is_file()]
        elapsed = sum(float(pt.get("elapsed_s") or 0.0) for pt in points)
        exp1_queueing.write(cfg, args.out, points, FULL, elapsed, args.load_note)
        return 0
    if args.rho is None:
        print("--rho or --write is needed", file=sys.stderr)
        return 2
    import time

    t0 = time.perf_counter()
    point = run_async(measure_point(cfg, FULL, args.slots, args.rho))
    point["elapsed_s"] = time.perf_counter() - t0
    m: Measured = point.pop("_measured")
    path = _point_file(args.cache, args.slots, args.rho)
    path.write_text(json.dumps(point, indent=1))
    np.savez_compressed(path.with_suffix(".npz"), intended=m.intended, sent=m.sent,
                        ttft=m.ttft, completed=m.completed)
    print(json.dumps({k: v for k, v in point.items() if k != "p99_ci"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
