"""Discrete-event simulation of a FIFO queue with ``c`` servers.

Two entry points with one contract (same arrivals and service times in, the same
start times out):

* :func:`simulate_fifo` - general service times and an optional admission
  ``policy`` that may refuse an arrival, one heap of server free times,
  O(n log c);
* :func:`fifo_starts_deterministic` - every service takes the same ``D``, no
  policy; vectorized. With equal service times customer ``n`` takes the slot that
  customer ``n - c`` frees, so ``start_n = max(t_n, start_{n-c} + D)``, whose
  solution per residue class is a running maximum.

A refused arrival never enters the queue; its start and departure are NaN.
Arrival times must be sorted; times are in any one unit (seconds here).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "Arrival",
    "Policy",
    "SimResult",
    "fifo_starts_deterministic",
    "poisson_arrivals",
    "simulate_fifo",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Arrival:
    """What an admission policy knows when customer ``index`` arrives."""

    index: int
    time: float
    service: float
    wait_if_admitted: float
    """Exact wait this customer would have (FIFO, known service times)."""
    in_system: int
    """Admitted customers still present (waiting or in service) just before ``time``."""
    servers: int


Policy = Callable[[Arrival], bool]
"""Returns True to admit the arrival, False to refuse it."""


@dataclass(frozen=True, slots=True)
class SimResult:
    arrivals: FloatArray
    start: FloatArray
    departure: FloatArray
    admitted: npt.NDArray[np.bool_]

    @property
    def waits(self) -> FloatArray:
        """Waits of the admitted customers, in arrival order."""
        return (self.start - self.arrivals)[self.admitted]

    @property
    def refused_fraction(self) -> float:
        return 1.0 - float(self.admitted.mean()) if self.admitted.size else 0.0


def poisson_arrivals(rate: float, n: int, rng: np.random.Generator) -> FloatArray:
    """``n`` arrival times of a Poisson process of ``rate`` starting at 0."""
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def _check(arrivals: FloatArray, servers: int) -> None:
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    if arrivals.size > 1 and np.any(np.diff(arrivals) < 0):
        raise ValueError("arrival times must be sorted")


def simulate_fifo(
    arrivals: npt.ArrayLike,
    service: npt.ArrayLike,
    servers: int,
    policy: Policy | None = None,
) -> SimResult:
    """Run the FIFO ``servers``-server queue; ``service`` is a scalar or one time per arrival."""
    t = np.asarray(arrivals, dtype=np.float64)
    _check(t, servers)
    s = np.broadcast_to(np.asarray(service, dtype=np.float64), t.shape)
    start = np.full(t.shape, np.nan)
    admitted = np.zeros(t.shape, dtype=np.bool_)
    free = [0.0] * servers  # min-heap of the times each server becomes free
    departures: list[float] = []  # min-heap, only kept when a policy needs in_system
    ts, ss = t.tolist(), s.tolist()
    for i in range(len(ts)):
        ti, si = ts[i], ss[i]
        begin = max(ti, free[0])  # FIFO: the earliest free server, never before arrival
        if policy is not None:
            while departures and departures[0] <= ti:
                heapq.heappop(departures)
            arrival = Arrival(i, ti, si, begin - ti, len(departures), servers)
            if not policy(arrival):
                continue
            heapq.heappush(departures, begin + si)
        heapq.heapreplace(free, begin + si)
        start[i] = begin
        admitted[i] = True
    return SimResult(t, start, start + s, admitted)


def fifo_starts_deterministic(arrivals: npt.ArrayLike, servers: int, service: float) -> FloatArray:
    """Start times in the FIFO ``servers``-server queue when every service takes ``service``."""
    t = np.asarray(arrivals, dtype=np.float64)
    _check(t, servers)
    n = t.size
    rows = -(-n // servers)
    padded = np.full(rows * servers, np.inf)
    padded[:n] = t
    grid = padded.reshape(rows, servers)  # column r holds customers r, r + c, r + 2c, ...
    j = np.arange(rows, dtype=np.float64)[:, None] * service
    # start_j = max_{i <= j} (t_i + (j - i) D) = j D + running max of (t_i - i D)
    starts = np.maximum.accumulate(grid - j, axis=0) + j
    return starts.reshape(-1)[:n]
