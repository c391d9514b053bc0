"""Spill: the rule for sending a request its smallest fitting bucket refuses to a larger shape.

A request goes to the smallest compiled shape of its model that fits it (:mod:`router.buckets`).
When that bucket (the *origin*) would refuse it for capacity -- a reason in :data:`SPILLABLE`:
its SLO, its utilization guard, its queue or concurrency cap; never a tenant limit, a missing
replica or a malformed request -- the controller tries the larger buckets of the same model in
order, smallest first (the *candidates*, :func:`spill_targets`), and admits the request to the
first one that takes it. A candidate takes it iff, in this order (the first failing check names
the reason, a :class:`Skip`):

1. the origin lets its requests spill (``spill = true``)                   (``spill_off``)
2. the candidate serves the same model                                    (``other_model``)
3. the request fits the candidate's shape: ``need + allowance <= max_seq_len`` and
   ``allowance <= max_output_tokens``                                     (``does_not_fit``)
4. the candidate has headroom: its utilization ``u < target_utilization``  (``over_target``)
5. spilled work there holds fewer than ``floor(spill_share * slots)`` slots (``share_full``)
6. :func:`router.admission.decision.judge` admits it on the candidate's best replica against
   :attr:`SpillPair.policy`: the candidate's caps and margin, the *request's* SLOs (the
   origin's ``ttft_slo_s`` and ``e2e_slo_s``, plus its wait budget, counted from its arrival),
   the request's own class rule. The refusal reason is then the judge's.

Why a bucket's own traffic keeps its share (the invariant, checked by the property test
``test_spill_rule.py::test_own_goodput_keeps_its_share``): spilled work is the first shed in
the bucket it spills into. It enters only while that bucket is under its target utilization
(check 4 holds with or without a queue, where even the ``batch`` class is shed only while a
queue forms), it never holds more than ``spill_share`` of the bucket's slots (check 5), so at
least ``1 - spill_share`` of them are always free of it, and it must meet its own SLO on the
exact schedule (check 6), so it is never admitted into a wait that breaks that SLO. A request
of the bucket's own traffic that is refused while spilled work runs there was refused on a
schedule in which at most ``spill_share`` of the slots held spilled work.

Refused everywhere, the request gets the origin's refusal with ``Retry-After`` the soonest
over the origin and every candidate the judge refused (:func:`soonest`): a retry then meets a
bucket that could take it. A candidate skipped by checks 1-5 gives no time (when utilization
falls or a spilled request ends is not predicted by the rule).

The rule is pure (numbers in, a verdict out); :class:`router.admission.controller.TimelineAdmitter`
gathers the state. Each worker process decides locally on its own timelines: that stays exact
because every answer of every bucket's replicas carries the replica's whole schedule
(``x-lpu-schedule``), which each worker merges, the target's like the origin's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from router.admission.settings import BucketPolicy
from router.outcomes import RejectReason

__all__ = ["SPILLABLE", "Skip", "SpillPair", "consider", "soonest", "spill_targets"]

SPILLABLE = frozenset({RejectReason.SLO_TTFT, RejectReason.SLO_E2E, RejectReason.UTILIZATION,
                       RejectReason.QUEUE_FULL, RejectReason.CONCURRENCY})
"""The origin's refusals a larger shape may rescue: capacity, nothing else."""


class Skip(StrEnum):
    """Why a candidate bucket did not take a spilled request before the judge was asked."""

    SPILL_OFF = "spill_off"
    OTHER_MODEL = "other_model"
    DOES_NOT_FIT = "does_not_fit"
    OVER_TARGET = "over_target"
    SHARE_FULL = "share_full"


@dataclass(frozen=True, slots=True)
class SpillPair:
    """One (origin, candidate) pair, built once per configuration (never per request)."""

    origin: BucketPolicy
    target: BucketPolicy
    policy: BucketPolicy
    """What the judge checks a spilled request against: the target's caps, utilization target
    and name, with the origin's SLOs and degraded-mode floor (the request's own)."""
    spill_cap: int
    """Slots of the target that spilled work may hold at once: ``floor(spill_share * slots)``."""

    @classmethod
    def of(cls, origin: BucketPolicy, target: BucketPolicy) -> SpillPair:
        slots = sum(r.slots for r in target.replicas)
        policy = replace(target, ttft_slo_s=origin.ttft_slo_s, e2e_slo_s=origin.e2e_slo_s,
                         degraded_min_tokens=origin.degraded_min_tokens)
        return cls(origin, target, policy, math.floor(target.spill_share * slots + 1e-9))


def _shape_key(b: BucketPolicy) -> tuple[int, int]:
    return (b.max_seq_len, b.max_output_tokens)


def spill_targets(origin: BucketPolicy, buckets: Sequence[BucketPolicy]) -> tuple[SpillPair, ...]:
    """The candidates of ``origin``, in the order they are tried: the buckets of its model with
    a larger shape (``(max_seq_len, max_output_tokens)`` after the origin's, the order
    :class:`router.buckets.BucketTable` places in), smallest first. Empty for a bucket with
    ``spill = false`` or without a model (the rule's check 1 then never runs)."""
    if not origin.spill or not origin.model:
        return ()
    key = _shape_key(origin)
    larger = [b for b in buckets if b.name != origin.name and b.model == origin.model
              and _shape_key(b) > key]
    larger.sort(key=_shape_key)
    return tuple(SpillPair.of(origin, b) for b in larger)


def consider(pair: SpillPair, need_tokens: int, max_tokens: int, utilization: float,
             spilled_in_flight: int) -> Skip | None:
    """Checks 1-5 of the module docstring for one candidate: the first that fails, or None
    (then ask the judge). ``need_tokens``: the shape the prompt takes; ``max_tokens``: its
    allowance; ``utilization``: the target's, in [0, 1]; ``spilled_in_flight``: spilled
    requests holding the target's slots now."""
    o, t = pair.origin, pair.target
    if not o.spill:
        return Skip.SPILL_OFF
    if not o.model or t.model != o.model:
        return Skip.OTHER_MODEL
    if max_tokens > t.max_output_tokens or need_tokens + max_tokens > t.max_seq_len:
        return Skip.DOES_NOT_FIT
    if utilization >= t.target_utilization:
        return Skip.OVER_TARGET
    if spilled_in_flight >= pair.spill_cap:
        return Skip.SHARE_FULL
    return None


def soonest(a: float | None, b: float | None) -> float | None:
    """The sooner of two retry times; None (waiting cannot help there) gives way to a time."""
    if a is None:
        return b
    if b is None or a <= b:
        return a
    return b
