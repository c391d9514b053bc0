"""The admission rule, as a pure function of numbers: no clock, no state, no HTTP.

Inputs (all seconds from now unless said): the best replica's predicted wait
``w`` (its earliest slot free time minus now, >= 0), its ``prefill`` and
``per_token``, the request's allowance ``a`` and the tokens reserved for it
``r <= a`` (see :mod:`router.admission.prediction`), the class's rule (share
``s``, utilization threshold ``u*``), the bucket's counts and utilization ``u``, and
the bucket's ``margin`` in force (fixed, or learned from the prediction errors: see
:mod:`router.admission.margin`).

With ``B = s * ttft_slo + wait_budget - elapsed`` and ``E = e2e_slo + wait_budget - elapsed``
(``elapsed``: the time the request already spent at the router, since the SLOs count
from its arrival),
a request is admitted iff, in this order (the first failing check names the
reason):

1. ``in_flight < floor(s * max_concurrency)``                      (``concurrency``)
2. ``w == 0`` or ``queued < floor(s * max_queue)``                  (``queue_full``)
3. ``w + prefill + margin <= B``                                    (``slo_ttft``)
4. ``w + service_time(r) + margin <= E`` -- or, in degraded mode, with the
   allowance clamped to the largest ``a' >= degraded_min_tokens`` that fits
   (``w + prefill + (a' - 1) * per_token + margin <= E``)          (``slo_e2e``)
5. ``u < u*``                                                       (``utilization``)

A request's own allowance never changes its own wait (FIFO: only the work
ahead does), so clamping it can only rescue the end-to-end check, never the
TTFT one; degraded mode applies there only.

``Retry-After`` is the time until the failing check would pass if nothing else
arrived: for (3) the wait must shrink to ``B - margin - prefill``, so retry in
``w + prefill + margin - B``; for (4) likewise with ``E``; for (2) until the
first queued request starts; for (1) until the first in-flight one ends; for
(5) an estimate, ``(u - u*) * window`` (the time for the excess to leave the
window if the slots were idle). For (3) and (4) the retry is for the request sent
again, so it is computed without ``elapsed``. None when waiting cannot help (a request
whose prefill alone exceeds the bound). Every finite value is at least
``min_retry_after_s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from router.admission.priority import scaled_cap, utilization_threshold
from router.admission.settings import BucketPolicy, PriorityRule
from router.outcomes import RejectReason

__all__ = ["Inputs", "Verdict", "judge"]


@dataclass(slots=True)
class Inputs:
    """Everything the rule reads, for one request on its best replica. Not mutated
    (not frozen only because a frozen dataclass costs microseconds to build)."""

    policy: BucketPolicy
    rule: PriorityRule
    wait_s: float
    prefill_s: float
    per_token_s: float
    max_tokens: int
    reserve_tokens: int
    wait_budget_s: float
    queued: int
    in_flight: int
    utilization: float
    next_queue_exit_s: Callable[[], float | None]
    """Seconds until the first queued request starts (None: none queued); asked on refusal."""
    next_slot_exit_s: Callable[[], float | None]
    """Seconds until the first in-flight request ends (None: none); asked on refusal."""
    margin_s: float
    """The bucket's margin in force (seconds), added to the predicted TTFT and e2e."""
    window_s: float
    min_retry_after_s: float
    elapsed_s: float = 0.0
    """Time the request already spent at the router; it shortens both bounds."""


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: RejectReason | None
    message: str = ""
    max_tokens: int = 0
    reserve_tokens: int = 0
    degraded: bool = False
    predicted_ttft_s: float = 0.0
    retry_after_s: float | None = None
    deadline_s: float = 0.0
    """The full TTFT bound for the backend's own check: ``ttft_slo + wait_budget``."""


def judge(x: Inputs) -> Verdict:
    """Apply the rule of the module docstring."""
    p, rule = x.policy, x.rule
    ttft = x.wait_s + x.prefill_s
    deadline = p.ttft_slo_s + x.wait_budget_s
    klass = str(rule.priority)

    def refuse(reason: RejectReason, what: str, retry: float | None) -> Verdict:
        if retry is not None:
            retry = max(retry, x.min_retry_after_s)
        hint = f"; retry in {retry:.3f} s" if retry is not None else ""
        return Verdict(reason, f"bucket '{p.name}' is at capacity: {what}{hint}",
                       predicted_ttft_s=ttft, retry_after_s=retry, deadline_s=deadline)

    cap = scaled_cap(p.max_concurrency, rule.share)
    if cap is not None and x.in_flight >= cap:
        return refuse(RejectReason.CONCURRENCY,
                      f"{x.in_flight} requests in flight, the limit for {klass} requests"
                      f" is {cap}", x.next_slot_exit_s())
    cap = scaled_cap(p.max_queue, rule.share)
    if cap is not None and x.wait_s > 0 and x.queued >= cap:
        return refuse(RejectReason.QUEUE_FULL,
                      f"{x.queued} requests queued, the limit for {klass} requests is {cap}",
                      x.next_queue_exit_s())
    bound = rule.share * p.ttft_slo_s + x.wait_budget_s
    excess = ttft + x.margin_s - (bound - x.elapsed_s)
    if excess > 0:
        allowed = f"the SLO {p.ttft_slo_s:.3f} s"
        if rule.share < 1 or x.wait_budget_s > 0:
            allowed = f"the {bound:.3f} s allowed for {klass} requests (SLO {p.ttft_slo_s:.3f} s)"
        hopeless = x.prefill_s + x.margin_s > bound
        spent = f" after {x.elapsed_s:.3f} s spent" if x.elapsed_s >= 0.001 else ""
        return refuse(RejectReason.SLO_TTFT,
                      f"predicted time to first token {ttft:.3f} s (+{x.margin_s:.3f} s margin)"
                      f"{spent} exceeds {allowed}",
                      None if hopeless else excess - x.elapsed_s)
    max_tokens, reserve, degraded = x.max_tokens, x.reserve_tokens, False
    if p.e2e_slo_s is not None:
        e_bound = p.e2e_slo_s + x.wait_budget_s - x.elapsed_s
        service = x.prefill_s + (max(reserve, 1) - 1) * x.per_token_s
        e_excess = x.wait_s + service + x.margin_s - e_bound
        if e_excess > 0:
            fit = _largest_fitting(x, e_bound)
            floor = p.degraded_min_tokens
            if floor is not None and fit >= max(floor, 1):
                max_tokens = reserve = fit
                degraded = True
            else:
                # Waiting shortens only the wait; past that, only a smaller allowance helps.
                helps = e_excess - x.elapsed_s <= x.wait_s
                what = (f"predicted end-to-end time {x.wait_s + service:.3f} s exceeds"
                        f" the SLO {e_bound:.3f} s")
                if not helps:
                    what += "; lower max_tokens"
                return refuse(RejectReason.SLO_E2E, what,
                              e_excess - x.elapsed_s if helps else None)
    threshold = utilization_threshold(rule, p.target_utilization)
    if x.utilization >= threshold:
        return refuse(RejectReason.UTILIZATION,
                      f"utilization {x.utilization:.0%} is at or above the {threshold:.0%}"
                      f" where {klass} requests are shed",
                      (x.utilization - threshold) * x.window_s)
    return Verdict(None, max_tokens=max_tokens, reserve_tokens=reserve, degraded=degraded,
                   predicted_ttft_s=ttft, deadline_s=deadline)


def _largest_fitting(x: Inputs, e_bound: float) -> int:
    """Largest allowance <= max_tokens whose worst-case e2e fits ``e_bound`` (0 if none)."""
    room = e_bound - x.margin_s - x.wait_s - x.prefill_s
    if room < 0:
        return 0
    if x.per_token_s <= 0:
        return x.max_tokens
    # The tiny epsilon keeps an exact fit (room a whole number of tokens) from
    # being lost to float rounding.
    return min(x.max_tokens, 1 + math.floor(room / x.per_token_s + 1e-9))
