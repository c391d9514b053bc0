"""The router's own saturation: how busy and how late its event loop is.

One router worker is one event loop on one thread; everything it does for a request (parse,
admit, relay, finish) runs there. So its saturation is the loop's, measured two ways by one
task that wakes every ``interval_s`` (ten times a second by default; nothing per request):

* **busy time**: the CPU time of the loop's thread (``time.thread_time``) between two wakes,
  added to ``lpu_router_event_loop_busy_seconds_total``. ``rate()`` of it is the share of one
  core the loop used: 1.0 is a saturated worker. The log listener's thread is not counted (it
  does not delay requests); garbage collection on the loop's thread is.
* **lag**: how much later than asked the task woke, the wait a request arriving at that moment
  had before the loop looked at it. ``lpu_router_event_loop_lag_seconds`` holds the largest lag
  of the last ``window`` wakes (one second by default), so a scrape every few seconds sees
  spikes (a 4 MB body holds the loop 10-24 ms) and not only the last sample.

``lpu_router_event_loops`` is 1 in every worker that runs the task; summed over a pod's workers
it is how many loops the busy time is shared by, so ``sum(rate(busy)) / sum(loops)`` is the
average busy share per worker: the signal the HorizontalPodAutoscaler reads (deploy/k8s,
docs/deploy.md "Autoscaling on saturation"). Busy time is CPU actually used; a loop starved of
CPU by its neighbours shows as lag instead, which is why both are kept.

Contract: :meth:`LoopLoad.tick` is pure bookkeeping on the two readings it is given (tested on a
virtual clock); :meth:`LoopLoad.run` is the task, cancelled when the app stops.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter, Gauge

__all__ = ["LoopLoad"]


class LoopLoad:
    """Samples the running loop: busy CPU time into a counter, the worst recent lag into a gauge.

    ``clock`` is wall time (monotonic seconds), ``cpu`` the loop thread's CPU seconds; both are
    read only on the loop's thread, by :meth:`run`.
    """

    __slots__ = ("_busy", "_clock", "_cpu", "_interval_s", "_lag", "_lags", "_last_cpu",
                 "_loops")

    def __init__(self, busy: Counter, lag: Gauge, loops: Gauge, *, interval_s: float = 0.1,
                 window: int = 10, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        if interval_s <= 0 or window < 1:
            raise ValueError("interval_s must be > 0 and window >= 1")
        self._busy = busy
        self._lag = lag
        self._loops = loops
        self._interval_s = interval_s
        self._lags: deque[float] = deque(maxlen=window)
        self._clock = clock
        self._cpu = cpu
        self._last_cpu: float | None = None

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def tick(self, expected: float, now: float, cpu_now: float) -> float:
        """Record one wake: due at ``expected``, woke at ``now`` (wall seconds), the loop thread
        having used ``cpu_now`` CPU seconds so far. Returns the lag (never negative: a timer
        that fires a little early is on time)."""
        lag = max(0.0, now - expected)
        self._lags.append(lag)
        self._lag.set(max(self._lags))
        if self._last_cpu is not None and cpu_now > self._last_cpu:
            self._busy.inc(cpu_now - self._last_cpu)
        self._last_cpu = cpu_now
        return lag

    async def run(self) -> None:
        """Sample until cancelled; busy time counts from the start of this call."""
        self._loops.set(1)
        self._last_cpu = self._cpu()
        try:
            while True:
                expected = self._clock() + self._interval_s
                await asyncio.sleep(self._interval_s)
                self.tick(expected, self._clock(), self._cpu())
        finally:
            self._loops.set(0)
