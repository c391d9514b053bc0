"""Arrival schedules, computed in advance from a seeded generator.

Every function returns sorted send offsets in seconds from the start of the run,
all in ``[0, duration)``. An open-loop run sends request ``i`` at ``times[i]``
whatever the server does, so the schedule is the whole experiment design.

* ``poisson``: exponential gaps of mean ``1 / rate``;
* ``gamma``: gamma gaps of mean ``1 / rate`` and squared coefficient of variation
  ``burstiness`` (1 is Poisson, above 1 bursty, below 1 smoother);
* ``constant``: one request every ``1 / rate`` seconds - the control: a
  deterministic server below capacity has no queueing under it;
* ``step``: Poisson with a piecewise-constant rate, ``[(duration_s, rate), ...]``
  (exact, the process being memoryless).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "constant_times",
    "gamma_times",
    "parse_steps",
    "poisson_times",
    "step_times",
]

FloatArray = npt.NDArray[np.float64]


def _check(rate: float, duration: float) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be finite and > 0, got {rate!r}")
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be finite and > 0, got {duration!r}")


def _enough(rate: float, duration: float, cv2: float = 1.0) -> int:
    """Gaps to draw so that their sum passes ``duration`` with near certainty."""
    mean = rate * duration
    return int(mean + 10.0 * math.sqrt(max(mean, 1.0) * max(cv2, 1.0)) + 20)


def poisson_times(rate: float, duration: float, rng: np.random.Generator) -> FloatArray:
    _check(rate, duration)
    n = _enough(rate, duration)
    t = np.cumsum(rng.exponential(1.0 / rate, size=n))
    while t[-1] < duration:  # a 10-sigma shortfall: extend the same process
        t = np.concatenate((t, np.cumsum(rng.exponential(1.0 / rate, size=n)) + t[-1]))
    return t[t < duration]


def gamma_times(
    rate: float, burstiness: float, duration: float, rng: np.random.Generator
) -> FloatArray:
    """Gamma renewal process: gaps ~ Gamma(shape = 1 / cv2, scale = cv2 / rate)."""
    _check(rate, duration)
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness (cv^2 of gaps) must be > 0, got {burstiness!r}")
    shape, scale = 1.0 / burstiness, burstiness / rate
    n = _enough(rate, duration, burstiness)
    t = np.cumsum(rng.gamma(shape, scale, size=n))
    while t[-1] < duration:
        more = np.cumsum(rng.gamma(shape, scale, size=n)) + t[-1]
        t = np.concatenate((t, more))
    return t[t < duration]


def constant_times(rate: float, duration: float) -> FloatArray:
    _check(rate, duration)
    t = np.arange(math.ceil(rate * duration) + 1, dtype=np.float64) / rate
    return t[t < duration]


def step_times(segments: Sequence[tuple[float, float]], rng: np.random.Generator) -> FloatArray:
    """Poisson arrivals whose rate is ``rate_i`` for ``duration_i`` seconds, in order."""
    if not segments:
        raise ValueError("step arrivals need at least one (duration, rate) segment")
    parts: list[FloatArray] = []
    offset = 0.0
    for dur, rate in segments:
        if rate == 0:
            _check(1.0, dur)
        else:
            parts.append(poisson_times(rate, dur, rng) + offset)
        offset += dur
    return np.concatenate(parts) if parts else np.zeros(0)


def parse_steps(spec: str, capacity: float | None = None) -> list[tuple[float, float]]:
    """Parse ``"10:0.6,10:1.4,10:0.6"`` into ``[(10.0, r1), ...]``.

    With ``capacity`` (requests/s) each rate is a fraction of it; without, rates
    are requests per second.
    """
    out: list[tuple[float, float]] = []
    for part in spec.split(","):
        try:
            dur_s, rate_s = part.strip().split(":")
            dur, rate = float(dur_s), float(rate_s)
        except ValueError:
            raise ValueError(f"step {part!r}: expected DURATION_S:RATE") from None
        if dur <= 0 or rate < 0 or not (math.isfinite(dur) and math.isfinite(rate)):
            raise ValueError(f"step {part!r}: duration must be > 0 and rate >= 0")
        out.append((dur, rate * capacity if capacity is not None else rate))
    return out
