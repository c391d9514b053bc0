"""The admission policies the experiments compare, and how load is sent through each.

One emulator replica behind the router, configured for one of :data:`POLICIES`:

* ``none``: router mode ``off``, no caps - everything is admitted and queues at the backend;
* ``cap``: mode ``off`` with the bucket's ``max_concurrency`` = :func:`static_cap`, the
  in-flight count at which a newcomer's FIFO wait would reach the SLO;
* ``token_bucket``: a rate limiter at the capacity rate (burst ``c``). The router's own
  per-tenant limiter holds a whole minute's allowance as its burst, so it cannot express
  this; the bucket is emulated in the load generator as a pre-filter (a refused request is
  recorded as rejected and never sent, :func:`load_point`), in front of mode ``off``;
* ``timeline``: mode ``timeline`` with the SLO, the utilization guard disabled (target 1.0,
  the standard class never shed on utilization) so that only the predicted TTFT decides, and
  the default adaptive margin.

Experiments 2 (admission under load), 3 (rejection rate) and 6 (step overload) use these;
none of them imports another.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.experiments import SweepConfig
from benchmarks.experiments.drive import Measured, drive, plan
from benchmarks.experiments.rig import Pool, serve
from benchmarks.records import ClientOutcome, RequestRecord
from benchmarks.workload import PlannedRequest

__all__ = ["POLICIES", "load_point", "policy_stack", "static_cap", "timeline_admission",
           "token_bucket_passes"]

POLICIES = ("none", "cap", "token_bucket", "timeline")

_NO_UTILIZATION_GUARD: dict[str, Any] = {"standard": {"utilization_factor": "never"}}
"""``[admission.priorities]`` that never sheds the standard class on utilization."""


def static_cap(cfg: SweepConfig, slots: int, service_s: float | None = None) -> int:
    """In-flight cap at which a newcomer's FIFO wait reaches the TTFT SLO, when every request
    holds a slot for ``service_s`` (default ``cfg.service_s``):
    ``c * (1 + floor((SLO - prefill) / D))``."""
    d = cfg.service_s if service_s is None else service_s
    return slots * (1 + math.floor((cfg.ttft_slo_s - cfg.prefill_s) / d))


def token_bucket_passes(times: npt.NDArray[np.float64], rate: float,
                        burst: float) -> npt.NDArray[np.bool_]:
    """Which arrivals a token bucket (``rate`` per s, ``burst`` deep, full at 0) lets through."""
    passes = np.zeros(times.size, dtype=np.bool_)
    level, last = burst, 0.0
    for i, t in enumerate(times.tolist()):
        level = min(burst, level + (t - last) * rate)
        last = t
        if level >= 1.0:
            level -= 1.0
            passes[i] = True
    return passes


def timeline_admission(**extra: Any) -> dict[str, Any]:
    """The ``[admission]`` table of the timeline rule without the utilization guard;
    ``extra`` keys (e.g. ``prediction``) are added to it."""
    return {"mode": "timeline", **extra, "priorities": _NO_UTILIZATION_GUARD}


@contextlib.asynccontextmanager
async def policy_stack(cfg: SweepConfig, policy: str, slots: int) -> AsyncIterator[str]:
    """The router (and its emulator) configured for ``policy``; yields the router URL."""
    options: dict[str, Any] = {"ttft_slo_s": cfg.ttft_slo_s, "target_utilization": 1.0}
    admission: dict[str, Any] = {"mode": "off"}
    if policy == "cap":
        options["max_concurrency"] = static_cap(cfg, slots)
    elif policy == "timeline":
        admission = timeline_admission()
    elif policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    async with serve(cfg, [Pool("main", cfg.artifact(slots), 1, options)], admission) as stack:
        yield stack.url


async def load_point(cfg: SweepConfig, url: str, policy: str, slots: int, load: float,
                     duration_s: float, seed: int) -> Measured:
    """One open-loop Poisson run at ``load`` x capacity through ``url`` under ``policy``
    (``token_bucket``: the client-side bucket decides which planned requests are sent)."""
    rate = load * cfg.capacity_rps(slots)
    planned = plan(cfg, np.random.default_rng([seed, round(load * 1000)]), rate=rate,
                   duration_s=duration_s)
    if policy != "token_bucket":
        return Measured.of(await drive(url, planned, cfg, seed=seed))
    times = np.array([p.at_s for p in planned])
    passes = token_bucket_passes(times, cfg.capacity_rps(slots), float(slots))
    sent: list[PlannedRequest] = [p for p, ok in zip(planned, passes, strict=True) if ok]
    records = iter(await drive(url, sent, cfg, seed=seed))
    merged: list[RequestRecord] = []
    for p, ok in zip(planned, passes, strict=True):
        if ok:
            merged.append(next(records))
        else:
            merged.append(RequestRecord(p.index, p.at_s, p.prompt_tokens, p.max_tokens,
                                        outcome=ClientOutcome.REJECTED.value,
                                        error="token bucket (client-side)"))
    return Measured.of(merged)
