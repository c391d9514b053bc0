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
5. ``w <= margin`` or ``u < u*``                                    (``utilization``)

A request's own allowance never changes its own wait (FIFO: only the work
ahead does), so clamping it can only rescue the end-to-end check, never the
TTFT one; degraded mode applies there only.

The utilization guard (5) keeps the long-run load under the target while a queue
is forming. A request the timeline can start at once (a wait within the margin,
the timeline's own error: it cannot tell so short a wait from none) takes a slot
that is free now: it cannot lengthen the wait of anything admitted before it, so
it is never refused for utilization, however busy the window behind it was
(refusing it left the replicas idle for most of a window after every burst).

``Retry-After`` is the earliest time at which the same request, sent again with
no new load meanwhile, passes *every* check, plus the margin (the schedule errs
late by up to the margin -- that is what the margin measures -- so a client that
obeys it is admitted even when a slot frees that much later than predicted). Each
check, once passing, keeps passing as time goes by without new load, so that
time is the latest of the checks' own times (the request sent again has spent
nothing yet, so they are computed without ``elapsed``):

1. until the ``in_flight - cap + 1``-th in-flight request ends;
2. until the ``queued - cap + 1``-th queued request starts, or until the wait is 0;
3. until the wait shrinks to ``B - margin - prefill``: ``w + prefill + margin - B``;
4. likewise with ``E`` and the fewest tokens that pass (the reserve, or
   ``degraded_min_tokens`` in degraded mode);
5. a request retried after its wait starts at once and passes; one retried earlier
   meets the guard again. ``u`` grows by at most ``t / window`` in ``t`` seconds
   (``+ utilization_age`` for a cached figure): if that stays under ``u*`` the
   other checks' time stands, else the retry is the wait (when a slot frees). That
   is the earliest: until then every slot of the replica is busy (in a bucket of
   like replicas, every slot of the bucket), so ``u`` cannot fall.

None when waiting cannot help (a request whose prefill alone exceeds the bound, or
that only a lower ``max_tokens`` would fit). Every finite value is at least
``min_retry_after_s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from lpu_protocol.artifact import Timings
from router.admission import Refused, Terms
from router.admission.priority import scaled_cap, utilization_threshold
from router.admission.settings import BucketPolicy, PriorityRule
from router.outcomes import RejectReason

__all__ = ["Inputs", "judge", "retry_after"]


@dataclass(slots=True)
class Inputs:
    """Everything the rule reads, for one request on its best replica. Not mutated
    (not frozen only because a frozen dataclass costs microseconds to build). The
    controller builds it positionally (keywords cost more than the rule): the field order
    is part of the contract."""

    policy: BucketPolicy
    rule: PriorityRule
    wait_s: float
    timings: Timings
    """The replica's compiled schedule: prefill and per-token times."""
    max_tokens: int
    reserve_tokens: int
    wait_budget_s: float
    queued: int
    in_flight: int
    utilization: float
    """The bucket's utilization in [0, 1]. Read only while a queue forms (``wait_s >
    margin_s``: the guard, and a refusal's retry when sooner than the wait, which it then
    cannot be), so the controller may pass NaN otherwise and not measure it."""
    next_queue_exit_s: Callable[[int], float | None]
    """Seconds until the k-th queued request (earliest first) starts; None with fewer than
    k queued. Asked on refusal only."""
    next_slot_exit_s: Callable[[int], float | None]
    """Seconds until the k-th in-flight request (earliest first) ends; None with fewer than
    k in flight. Asked on refusal only."""
    margin_s: float
    """The bucket's margin in force (seconds), added to the predicted TTFT and e2e."""
    window_s: float
    min_retry_after_s: float
    elapsed_s: float = 0.0
    """Time the request already spent at the router; it shortens both bounds."""
    utilization_age_s: float = 0.0
    """How long ago ``utilization`` was measured (seconds; it is cached briefly)."""

    @property
    def prefill_s(self) -> float:
        return self.timings.prefill_s


def judge(x: Inputs) -> Terms | Refused:
    """Apply the rule of the module docstring: the terms of admission, or the refusal (its
    ``ratelimit`` unset: the caller knows the tenant)."""
    p, rule = x.policy, x.rule
    ttft = x.wait_s + x.timings.prefill_s
    if p.max_concurrency is not None:
        cap = scaled_cap(p.max_concurrency, rule.share)
        if cap is not None and x.in_flight >= cap:
            return _refuse(x, ttft, RejectReason.CONCURRENCY,
                           f"{x.in_flight} requests in flight, the limit for"
                           f" {rule.priority} requests is {cap}")
    if p.max_queue is not None:
        cap = scaled_cap(p.max_queue, rule.share)
        if cap is not None and x.wait_s > 0 and x.queued >= cap:
            return _refuse(x, ttft, RejectReason.QUEUE_FULL,
                           f"{x.queued} requests queued, the limit for {rule.priority} requests"
                           f" is {cap}")
    bound = rule.share * p.ttft_slo_s + x.wait_budget_s
    if ttft + x.margin_s > bound - x.elapsed_s:
        allowed = f"the SLO {p.ttft_slo_s:.3f} s"
        if rule.share < 1 or x.wait_budget_s > 0:
            allowed = (f"the {bound:.3f} s allowed for {rule.priority} requests"
                       f" (SLO {p.ttft_slo_s:.3f} s)")
        spent = f" after {x.elapsed_s:.3f} s spent" if x.elapsed_s >= 0.001 else ""
        return _refuse(x, ttft, RejectReason.SLO_TTFT,
                       f"predicted time to first token {ttft:.3f} s (+{x.margin_s:.3f} s margin)"
                       f"{spent} exceeds {allowed}")
    max_tokens, reserve, degraded = x.max_tokens, x.reserve_tokens, False
    if p.e2e_slo_s is not None:
        e_bound = p.e2e_slo_s + x.wait_budget_s - x.elapsed_s
        service = x.timings.service_s(reserve)
        if x.wait_s + service + x.margin_s > e_bound:
            fit = _largest_fitting(x, e_bound)
            floor = p.degraded_min_tokens
            if floor is not None and fit >= max(floor, 1):
                max_tokens = reserve = fit
                degraded = True
            else:
                what = (f"predicted end-to-end time {x.wait_s + service:.3f} s exceeds"
                        f" the SLO {e_bound:.3f} s")
                if _e2e_clears_in(x) is None:  # waiting cannot help, a smaller allowance can
                    what += "; lower max_tokens"
                return _refuse(x, ttft, RejectReason.SLO_E2E, what)
    # The guard's threshold is read only while a queue forms: a request that starts at once
    # is never refused for utilization.
    if x.wait_s > x.margin_s:
        threshold = utilization_threshold(rule, p.target_utilization)
        if x.utilization >= threshold:
            return _refuse(x, ttft, RejectReason.UTILIZATION,
                           f"utilization {x.utilization:.0%} is at or above the {threshold:.0%}"
                           f" where {rule.priority} requests are shed while a queue forms"
                           f" (predicted wait {x.wait_s:.3f} s)")
    return Terms(max_tokens, reserve, ttft, p.ttft_slo_s + x.wait_budget_s, degraded)


def _refuse(x: Inputs, ttft: float, reason: RejectReason, what: str) -> Refused:
    """The refusal for ``reason``, its message ending with the retry hint."""
    retry = retry_after(x)
    hint = f"; retry in {retry:.3f} s" if retry is not None else ""
    return Refused(reason, f"bucket '{x.policy.name}' is at capacity: {what}{hint}", retry,
                   predicted_wait_s=x.wait_s, predicted_ttft_s=ttft)


def retry_after(x: Inputs) -> float | None:
    """Seconds after which this request, sent again with no new load, is admitted (the
    module docstring); None when waiting cannot help."""
    times = (_concurrency_clears_in(x), _queue_clears_in(x), _ttft_clears_in(x),
             _e2e_clears_in(x))
    latest = 0.0
    for t in times:
        if t is None:
            return None
        if t > latest:
            latest = t
    # Comparisons, not max(): under overload the refusal is the path most requests take.
    retry = latest + x.margin_s
    if x.min_retry_after_s > retry:
        retry = x.min_retry_after_s
    if retry < x.wait_s:
        # Retried before a slot frees, the request meets the guard; every slot stays busy
        # till then, so utilization can only have grown, by at most this much.
        grown = x.utilization + (retry + x.utilization_age_s) / x.window_s
        if grown >= utilization_threshold(x.rule, x.policy.target_utilization):
            retry = x.wait_s
    return retry


def _concurrency_clears_in(x: Inputs) -> float | None:
    if x.policy.max_concurrency is None:
        return 0.0
    cap = scaled_cap(x.policy.max_concurrency, x.rule.share)
    if cap is None or x.in_flight < cap:
        return 0.0
    return x.next_slot_exit_s(x.in_flight - cap + 1)


def _queue_clears_in(x: Inputs) -> float | None:
    if x.policy.max_queue is None:
        return 0.0
    cap = scaled_cap(x.policy.max_queue, x.rule.share)
    if cap is None or x.wait_s <= 0 or x.queued < cap:
        return 0.0
    # Passing also when the request would not queue at all: at the latest when its wait ends.
    exit_s = x.next_queue_exit_s(x.queued - cap + 1)
    return x.wait_s if exit_s is None else min(exit_s, x.wait_s)


def _ttft_clears_in(x: Inputs) -> float | None:
    bound = x.rule.share * x.policy.ttft_slo_s + x.wait_budget_s
    if x.prefill_s + x.margin_s > bound:
        return None
    clears = x.wait_s + x.prefill_s + x.margin_s - bound
    return clears if clears > 0.0 else 0.0


def _e2e_clears_in(x: Inputs) -> float | None:
    p = x.policy
    if p.e2e_slo_s is None:
        return 0.0
    tokens = max(x.reserve_tokens, 1)
    floor = p.degraded_min_tokens
    if floor is not None and x.max_tokens >= max(floor, 1):
        tokens = min(tokens, max(floor, 1))  # degraded mode accepts this few
    allowed_wait = (p.e2e_slo_s + x.wait_budget_s - x.margin_s
                    - x.timings.service_s(tokens))
    if allowed_wait < 0:
        return None
    clears = x.wait_s - allowed_wait
    return clears if clears > 0.0 else 0.0


def _largest_fitting(x: Inputs, e_bound: float) -> int:
    """Largest allowance <= max_tokens whose worst-case e2e fits ``e_bound`` (0 if none)."""
    room = e_bound - x.margin_s - x.wait_s - x.prefill_s
    if room < 0:
        return 0
    if x.timings.per_token_s <= 0:
        return x.max_tokens
    # The tiny epsilon keeps an exact fit (room a whole number of tokens) from
    # being lost to float rounding.
    return min(x.max_tokens, 1 + math.floor(room / x.timings.per_token_s + 1e-9))
