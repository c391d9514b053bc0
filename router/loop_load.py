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

A reload (SIGHUP, :mod:`router.server`) runs two app generations, so two samplers, on one
thread for a while: they share that thread's :class:`CpuLedger`, so its CPU is counted once, and
neither resets ``event_loops`` when it stops (the process is still one loop; a worker that ends
leaves the pod's sum through the multiprocess directory's clean-up).

Contract: :meth:`LoopLoad.tick` is pure bookkeeping on the two readings it is given (tested on a
virtual clock); :meth:`LoopLoad.run` is the task, cancelled when the app stops.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter, Gauge

__all__ = ["CpuLedger", "LoopLoad", "thread_ledger"]


class CpuLedger:
    """The CPU seconds of one thread already counted, shared by the samplers running on it."""

    __slots__ = ("active", "counted")

    def __init__(self) -> None:
        self.counted: float | None = None
        self.active = 0
        """Samplers running on the thread now (the first to start sets the baseline)."""

    def take(self, cpu_now: float) -> float:
        """CPU seconds used since the last reading taken (0 for the first, or a clock that
        did not move), and ``cpu_now`` becomes the last reading."""
        last = self.counted
        if last is not None and cpu_now <= last:
            return 0.0
        self.counted = cpu_now
        return 0.0 if last is None else cpu_now - last


_LEDGERS: dict[int, CpuLedger] = {}


def thread_ledger() -> CpuLedger:
    """The calling thread's ledger."""
    return _LEDGERS.setdefault(threading.get_ident(), CpuLedger())


class LoopLoad:
    """Samples the running loop: busy CPU time into a counter, the worst recent lag into a gauge.

    ``clock`` is wall time (monotonic seconds), ``cpu`` the loop thread's CPU seconds; both are
    read only on the loop's thread, by :meth:`run`. ``ledger``: the loop thread's CPU already
    counted (None: :func:`thread_ledger` of the thread :meth:`run` runs on).
    """

    __slots__ = ("_busy", "_clock", "_cpu", "_interval_s", "_lag", "_lags", "_ledger", "_loops")

    def __init__(self, busy: Counter, lag: Gauge, loops: Gauge, *, interval_s: float = 0.1,
                 window: int = 10, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.thread_time,
                 ledger: CpuLedger | None = None) -> None:
        if interval_s <= 0 or window < 1:
            raise ValueError("interval_s must be > 0 and window >= 1")
        self._busy = busy
        self._lag = lag
        self._loops = loops
        self._interval_s = interval_s
        self._lags: deque[float] = deque(maxlen=window)
        self._clock = clock
        self._cpu = cpu
        self._ledger = ledger

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
        if self._ledger is None:
            self._ledger = thread_ledger()
        used = self._ledger.take(cpu_now)
        if used:
            self._busy.inc(used)
        return lag

    async def run(self) -> None:
        """Sample until cancelled; busy time counts from the start of the first sampler
        running on this thread."""
        if self._ledger is None:
            self._ledger = thread_ledger()
        ledger = self._ledger
        if ledger.active == 0:
            ledger.counted = self._cpu()
        ledger.active += 1
        self._loops.set(1)
        try:
            while True:
                expected = self._clock() + self._interval_s
                await asyncio.sleep(self._interval_s)
                self.tick(expected, self._clock(), self._cpu())
        finally:
            ledger.active -= 1
