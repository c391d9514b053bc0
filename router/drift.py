"""Observed timings per replica, beside the declared ones: drift of a compiled artifact.

Deterministic hardware runs a compiled schedule at the durations the artifact declares, so a
persistent gap between declared and observed timings is a fault or a mislabelled artifact.
From its own streamed requests the router measures, per (bucket, replica):

* **prefill**: first byte minus the moment the request was sent, for requests admitted onto
  an idle slot (predicted wait 0: no queueing inside the time);
* **per token**: end of stream minus first byte, over ``tokens - 1``, for completed streams of
  at least :data:`MIN_TOKENS` tokens (the emulator writes tokens in delivery quanta, so short
  streams would read the quantum, not the schedule).

Each estimate is the median of the last ``window`` samples (robust to a stray slow network
hop), exported as ``lpu_router_backend_observed_seconds{bucket,backend,timing}`` beside
``lpu_router_backend_declared_seconds`` (set by the pool from ``/load``). The alert
``LpuRouterArtifactDrift`` compares the two against ``[admission] drift_tolerance``
(``lpu_router_drift_tolerance``). Network time makes both estimates err slightly high, never
low. Cost per completed request: per sample an insertion into a sorted window of at most
``window`` floats (the median is its middle), a gauge set and the ``on_estimate`` call.

Each new estimate also goes to ``on_estimate(bucket, backend, timing, median, samples)``: the
timeline admitter, which schedules the replica with it once it drifts beyond the tolerance
(:mod:`router.admission.observed`).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from prometheus_client import Gauge

from router.admission.settings import DRIFT_WINDOW
from router.metrics import RouterMetrics

__all__ = ["MIN_TOKENS", "WINDOW", "DriftEstimator", "OnEstimate", "Timing"]

MIN_TOKENS = 16
"""Fewest tokens a stream must have to give a per-token sample."""
WINDOW = DRIFT_WINDOW
"""Recent samples the median is taken over, per (bucket, backend, timing)."""

OnEstimate = Callable[[str, str, str, float, int], None]
"""``(bucket, backend, timing, estimate_s, samples)``, after every sample."""


class Timing(StrEnum):
    """The two durations of a compiled schedule, as the ``timing`` label."""

    PREFILL = "prefill"
    PER_TOKEN = "per_token"


class _Window:
    """The last ``size`` samples, kept in arrival order and in sorted order, so the median is
    read off the middle instead of sorting per sample; with its gauge child, looked up once."""

    __slots__ = ("gauge", "order", "size", "sorted")

    def __init__(self, size: int, gauge: Gauge) -> None:
        self.size = size
        self.gauge = gauge
        self.order: deque[float] = deque()
        self.sorted: list[float] = []

    def add(self, value: float) -> None:
        if len(self.order) == self.size:
            del self.sorted[bisect_left(self.sorted, self.order.popleft())]
        self.order.append(value)
        insort(self.sorted, value)

    def median(self) -> float:
        """As :func:`statistics.median`: the middle sample, or the mean of the two middle."""
        xs, n = self.sorted, len(self.sorted)
        mid = n // 2
        return xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2


class DriftEstimator:
    """Medians of recent observed timings per (bucket, backend, timing); see the module doc."""

    def __init__(self, metrics: RouterMetrics, *, tolerance: float, window: int = WINDOW,
                 on_estimate: OnEstimate | None = None) -> None:
        self._metrics = metrics
        self._window = window
        self._on_estimate = on_estimate
        self._samples: dict[tuple[str, str, Timing], _Window] = {}
        metrics.drift_tolerance.set(tolerance)

    def observe(self, bucket: str, backend: str, *, sent_at: float, first_at: float,
                end_at: float, tokens: int, idle: bool) -> None:
        """One completed stream: sent, first byte and end on the router's clock (seconds)."""
        if idle and first_at >= sent_at:
            self._add(bucket, backend, Timing.PREFILL, first_at - sent_at)
        if tokens >= MIN_TOKENS and end_at >= first_at:
            self._add(bucket, backend, Timing.PER_TOKEN, (end_at - first_at) / (tokens - 1))

    def observed(self, bucket: str, backend: str, timing: Timing) -> float | None:
        """The current estimate (None before any sample)."""
        samples = self._samples.get((bucket, backend, timing))
        return samples.median() if samples else None

    def _add(self, bucket: str, backend: str, timing: Timing, value: float) -> None:
        key = (bucket, backend, timing)
        samples = self._samples.get(key)
        if samples is None:
            gauge = self._metrics.backend_observed_seconds.labels(bucket, backend, timing.value)
            samples = self._samples[key] = _Window(self._window, gauge)
        samples.add(value)
        median = samples.median()
        samples.gauge.set(median)
        if self._on_estimate is not None:
            self._on_estimate(bucket, backend, timing, median, len(samples.order))
