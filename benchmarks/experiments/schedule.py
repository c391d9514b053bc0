"""What the exact FIFO schedule says about a run: for the run's own arrivals, and for
simulated runs of the same shape.

Every experiment backend has ``c`` slots and, with a fixed output length, every request holds
one for the same ``D``: the FIFO M/D/c queue, whose schedule for given arrival times is exact
(:func:`benchmarks.simulate.fifo_starts_deterministic`). Two uses:

* :func:`exact_ttft`: each request's TTFT under that schedule of the arrivals the run
  actually had - the tightest prediction of a measured run (it holds the start-up transient
  and the overload growth of a finite run, which the stationary formulas do not);
* :func:`mean_wait_band`: the range the mean wait of a run of this shape falls in under
  M/D/c (sampling variation of a finite run included), from simulated runs.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from benchmarks import simulate
from benchmarks.experiments.drive import Measured

__all__ = ["exact_ttft", "fifo_starts", "mean_wait_band"]

FloatArray = npt.NDArray[np.float64]


def fifo_starts(arrivals: FloatArray, slots: int, service_s: float) -> FloatArray:
    """Start of each arrival (in any order; ties keep their order) in the FIFO ``slots``-slot
    queue where every request holds a slot for ``service_s``; in the order given."""
    order = np.argsort(arrivals, kind="stable")
    start = np.empty_like(arrivals)
    start[order] = simulate.fifo_starts_deterministic(arrivals[order], slots, service_s)
    return start


def exact_ttft(m: Measured, slots: int, service_s: float, prefill_s: float) -> FloatArray:
    """TTFT of every request under the exact FIFO schedule of the run's arrivals, measured
    from its intended time like the client's figure."""
    return np.asarray(fifo_starts(m.arrivals, slots, service_s) - m.intended + prefill_s)


def _run_mean_wait(rate: float, slots: int, service_s: float, warmup_s: float,
                   horizon_s: float, rng: np.random.Generator) -> float:
    expected = rate * horizon_s
    n = int(expected + 8 * math.sqrt(expected) + 16)  # more arrivals than the horizon holds
    t = simulate.poisson_arrivals(rate, n, rng)
    t = t[t < horizon_s]
    wait = simulate.fifo_starts_deterministic(t, slots, service_s) - t
    counted = wait[t >= warmup_s]
    return float(counted.mean()) if counted.size else math.nan


def mean_wait_band(rate: float, slots: int, service_s: float, *, duration_s: float,
                   warmup_s: float, runs: int, rng: np.random.Generator, groups: int = 1000,
                   coverage: float = 0.99) -> tuple[float, float]:
    """The central ``coverage`` range of the mean wait (seconds) that M/D/c gives a point of
    ``runs`` runs, each Poisson at ``rate`` for ``warmup_s + duration_s`` from an empty
    queue with the first ``warmup_s`` of arrivals not counted, averaged over the runs - the
    way an experiment measures it. From ``groups`` simulated points."""
    horizon = warmup_s + duration_s
    means = np.array([
        np.nanmean([_run_mean_wait(rate, slots, service_s, warmup_s, horizon, rng)
                    for _ in range(runs)])
        for _ in range(groups)])
    tail = (1.0 - coverage) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)
