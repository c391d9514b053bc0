"""Admission from observed timings: which timing a replica's timeline schedules with.

A replica's timeline schedules with the timings the replica declares (its ``/load`` report;
the bucket's config until the first report). Deterministic hardware runs exactly those, so a
persistent gap between them and what the router observes (:mod:`router.drift`: the median of
the replica's recent streams) means the declaration is wrong: a mislabelled artifact, a fault,
a replica mid-rollout serving something else. Scheduling with the declared times then predicts
every queued request too early, and admission packs the queue past the SLO.

:func:`timing_in_use` is the one rule: once ``min_samples`` samples back an observed timing
that differs from the declared one by more than ``tolerance`` (relative, the drift alert's
bound), the timeline uses the observed timing for every later reservation; within the
tolerance, or with fewer samples, it uses the declared one. The observed timing errs high by
the router's own and the network's time (never low), so switching errs on the safe side.
"""

from __future__ import annotations

__all__ = ["timing_in_use"]


def timing_in_use(declared: float, observed: float, samples: int, *, tolerance: float,
                  min_samples: int) -> float | None:
    """The observed timing (seconds) when it should replace ``declared`` in the replica's
    timeline, else None (schedule with ``declared``)."""
    if samples < min_samples or declared <= 0.0 or observed <= 0.0:
        return None
    return observed if abs(observed / declared - 1.0) > tolerance else None
