"""The headline check through the real router: Poisson load sent through the router
(admission off) to one emulator with c = 2 slots queues exactly as M/D/c.

Per request, the measured wait (TTFT - prefill) equals the exact FIFO schedule of the same
send times, within the router's and loopback's few milliseconds. In aggregate, the mean
wait, the share that barely waits (W <= D/4) and the 80th percentile of the wait each fall
within the 0.5%-99.5% band of their sampling distribution for this sample size (4000
simulated replications of n requests, each starting empty), widened by a 10 ms measurement
offset; and the stationary M/D/c values sit in the same bands.
"""

from __future__ import annotations

import numpy as np

from benchmarks import simulate, theory
from benchmarks.experiments import SweepConfig
from benchmarks.experiments.drive import Measured, drive
from benchmarks.experiments.rig import Pool, serve
from benchmarks.workload import PlannedRequest

SLOTS, RHO, N = 2, 0.6, 360
OFFSET_S = 0.010
"""Measurement offset: router, loopback and client on one busy 2-core machine (one event loop)."""


async def test_router_queueing_is_exact_mdc() -> None:
    cfg = SweepConfig(isolate=False)
    d, prefill = cfg.service_s, cfg.prefill_s
    lam = RHO * SLOTS / d
    times = simulate.poisson_arrivals(lam, N, np.random.default_rng(11))
    planned = [PlannedRequest(i, float(t), cfg.prompt_tokens, cfg.output_tokens)
               for i, t in enumerate(times)]
    pool = Pool("main", cfg.artifact(SLOTS), 1, {"ttft_slo_s": 10.0})
    async with serve(cfg, [pool], {"mode": "off"}) as stack:
        m = Measured.of(await drive(stack.url, planned, cfg, seed=3, drain_timeout_s=10.0))
    assert m.completed.all()
    wait = m.ttft - prefill
    exact = simulate.fifo_starts_deterministic(m.sent, SLOTS, d) - m.intended
    err = np.abs(wait - exact)
    # Per request: the exact schedule of the same send times, within the measurement offset.
    assert np.median(err) < OFFSET_S and np.percentile(err, 90) < 3 * OFFSET_S

    rng = np.random.default_rng(5)
    reps = simulate.poisson_arrivals(lam, 4000 * N, rng).reshape(4000, N)
    reps = reps - reps[:, :1]
    sim = np.stack([simulate.fifo_starts_deterministic(r, SLOTS, d) - r for r in reps])

    def band(stat: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(stat, [0.5, 99.5])
        return float(lo), float(hi)

    lo, hi = band(sim.mean(axis=1))
    assert lo - OFFSET_S <= wait.mean() <= hi + OFFSET_S
    assert lo <= theory.mdc_mean_wait(lam, SLOTS, d) <= hi * 1.2  # samples start empty

    x = d / 4
    lo_x = np.percentile((sim <= x - OFFSET_S).mean(axis=1), 0.5)
    hi_x = np.percentile((sim <= x + OFFSET_S).mean(axis=1), 99.5)
    assert lo_x <= float((wait <= x).mean()) <= hi_x
    p0 = float(theory.mdc_wait_cdf(0.0, lam, SLOTS, d)[0])
    assert band((sim <= 0).mean(axis=1))[0] <= p0 <= band((sim <= 0).mean(axis=1))[1]

    lo80, hi80 = band(np.percentile(sim, 80, axis=1))
    assert lo80 - OFFSET_S <= float(np.percentile(wait, 80)) <= hi80 + OFFSET_S
    assert lo80 <= theory.mdc_wait_percentile(0.8, lam, SLOTS, d) <= hi80 * 1.2
