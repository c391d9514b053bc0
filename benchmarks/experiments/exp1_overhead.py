"""Experiment 1: where the rig's time goes, request by request, from the emulator's own record.

A request's TTFT measured by the client (from its intended send time) is the sum of five
parts, each read from a clock the two sides share (``time.monotonic``; the emulator's
recorded schedule, ``GET /admin/schedule``, gives its arrival, start and first-token due
time on it)::

    ttft = send          client: actual send minus intended time (its timer and loop)
         + to_emulator   client's request write, loopback, router, loopback, emulator's read
         + emulator_wait the emulator's queue: start minus arrival (the M/D/c wait)
         + prefill       exactly the artifact's (start to first-token due time)
         + from_emulator emulator's first-token write (its lateness), router relay, loopback,
                         the client's read

:func:`decompose` gives each part's mean and percentiles over the matched requests, and the
overhead against the exact FIFO schedule of the intended arrivals: ``ttft`` minus that
schedule's TTFT, i.e. ``send + to_emulator + (emulator_wait - exact wait) + from_emulator``
(the means add up; percentiles do not). :func:`first_token_lateness` reads the emulator's
own histogram of its first tokens' write time minus due time
(``lpu_emulator_token_lateness_seconds{token="first"}``), the part of ``from_emulator`` the
emulator is responsible for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks import fidelity_histogram

__all__ = ["FIRST_TOKEN_METRIC", "PARTS", "decompose", "first_token_lateness"]

FloatArray = npt.NDArray[np.float64]

PARTS = ("send", "to_emulator", "emulator_wait", "from_emulator", "overhead")
"""The figures of :func:`decompose`, in the order of a request's life (then the sum)."""
FIRST_TOKEN_METRIC = "lpu_emulator_token_lateness_seconds"


def _figures(x: FloatArray) -> dict[str, float]:
    if not x.size:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
    return {"mean": float(x.mean()), "p50": p50, "p90": p90, "p99": p99}


def decompose(*, intended: FloatArray, sent: FloatArray, ttft: FloatArray,
              exact_ttft: FloatArray, request_ids: Sequence[str], keep: npt.NDArray[np.bool_],
              origin_mono: float, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The parts of the module docstring over the requests with ``keep`` set that are on
    the emulator's recorded schedule ``entries`` (matched by ``request_id``; the schedule
    keeps a bounded window, so a long run's earlier requests are not there). ``intended``,
    ``sent`` and ``ttft`` are the client's (seconds on the run's axis; ``origin_mono`` puts
    it on the emulator's clock), ``exact_ttft`` each request's TTFT under the exact FIFO
    schedule of the intended arrivals. Seconds; ``{"requests": 0}`` when none matched."""
    by_id = {str(e.get("request_id")): e for e in entries}
    rows = [(i, by_id[rid]) for i, rid in enumerate(request_ids)
            if keep[i] and rid in by_id and math.isfinite(ttft[i]) and math.isfinite(sent[i])]
    if not rows:
        return {"requests": 0}
    idx = np.array([i for i, _ in rows])
    arrival = np.array([float(e["arrival"]) for _, e in rows]) - origin_mono
    start = np.array([float(e["start"]) for _, e in rows]) - origin_mono
    due = np.array([float(e["first_token"]) for _, e in rows]) - origin_mono
    t_intended, t_sent = intended[idx], sent[idx]
    first = t_intended + ttft[idx]
    prefill = due - start
    exact_wait = exact_ttft[idx] - prefill
    parts = {
        "send": t_sent - t_intended,
        "to_emulator": arrival - t_sent,
        "emulator_wait": start - arrival,
        "from_emulator": first - due,
        "overhead": ttft[idx] - exact_ttft[idx],
    }
    out: dict[str, Any] = {"requests": int(idx.size),
                           "emulator_wait_beyond_exact": _figures(start - arrival - exact_wait)}
    out |= {k: _figures(v) for k, v in parts.items()}
    return out


def first_token_lateness(metrics_text: str) -> dict[str, float]:
    """Count, mean and the smallest bucket bound holding 50% / 99% of the emulator's
    first-token lateness histogram (:data:`FIRST_TOKEN_METRIC`, label ``token="first"``,
    summed over models) in a ``/metrics`` text; ``{"count": 0}`` when it is not there."""
    b = fidelity_histogram.parse(metrics_text).get("first")
    if b is None or b.count <= 0:
        return {"count": 0.0}
    return {"count": b.count, "mean": b.total / b.count, "p50_at_most": b.quantile_bound(0.5),
            "p99_at_most": b.quantile_bound(0.99)}
