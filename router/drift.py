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
low. Cost per completed request: two deque appends and a median of at most ``window`` floats.
"""

from __future__ import annotations

import statistics
from collections import deque
from enum import StrEnum

from router.metrics import RouterMetrics

__all__ = ["MIN_TOKENS", "DriftEstimator", "Timing"]

MIN_TOKENS = 16
"""Fewest tokens a stream must have to give a per-token sample."""


class Timing(StrEnum):
    """The two durations of a compiled schedule, as the ``timing`` label."""

    PREFILL = "prefill"
    PER_TOKEN = "per_token"


class DriftEstimator:
    """Medians of recent observed timings per (bucket, backend, timing); see the module doc."""

    def __init__(self, metrics: RouterMetrics, *, tolerance: float, window: int = 64) -> None:
        self._metrics = metrics
        self._window = window
        self._samples: dict[tuple[str, str, Timing], deque[float]] = {}
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
        return statistics.median(samples) if samples else None

    def _add(self, bucket: str, backend: str, timing: Timing, value: float) -> None:
        key = (bucket, backend, timing)
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=self._window)
        samples.append(value)
        self._metrics.backend_observed_seconds.labels(bucket, backend, timing.value).set(
            statistics.median(samples))
