"""The pure rule (router.admission.decision.judge): each check, retry-after, degraded mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from lpu_protocol.artifact import Timings
from router.admission import Priority, Refused, Terms
from router.admission.decision import Inputs, judge
from router.admission.settings import BucketPolicy, PriorityRule, ReplicaShape
from router.outcomes import RejectReason


def _reason(v: Terms | Refused) -> RejectReason | None:
    """The refusal's reason; None for the terms of an admission."""
    return v.reason if isinstance(v, Refused) else None

SHAPE = ReplicaShape("http://r0", slots=4, prefill_s=0.1, per_token_s=0.01)
POLICY = BucketPolicy("short", (SHAPE,), ttft_slo_s=0.5)
FULL = PriorityRule(Priority.INTERACTIVE, share=1.0, utilization_factor=None)
BATCH = PriorityRule(Priority.BATCH, share=0.5, utilization_factor=1.0)
QUEUE_STARTS = (0.05, 0.07, 0.09, 0.1)
"""Seconds until the 1st, 2nd, ... queued request starts."""
SLOT_ENDS = (0.2, 0.25, 0.3, 0.35, 0.4)
"""Seconds until the 1st, 2nd, ... in-flight request ends."""


def _kth(times: tuple[float, ...]) -> Callable[[int], float | None]:
    return lambda k: times[k - 1] if k <= len(times) else None


def _inputs(**kw: object) -> Inputs:
    base = Inputs(
        policy=POLICY, rule=FULL, wait_s=0.0, timings=Timings(0.1, 0.01), max_tokens=101,
        reserve_tokens=101, wait_budget_s=0.0, queued=0, in_flight=0, utilization=0.0,
        next_queue_exit_s=_kth(QUEUE_STARTS), next_slot_exit_s=_kth(SLOT_ENDS), margin_s=0.0,
        window_s=10.0, min_retry_after_s=0.01,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "reason", "retry"),
    [
        ({}, None, None),
        ({"wait_s": 0.4}, None, None),  # 0.4 + 0.1 == 0.5: fits exactly
        ({"wait_s": 0.4, "margin_s": 0.005}, RejectReason.SLO_TTFT, 0.005 * 2),  # + margin
        ({"wait_s": 1.3}, RejectReason.SLO_TTFT, 0.9),
        ({"wait_s": 0.3, "rule": BATCH}, RejectReason.SLO_TTFT, 0.15),  # batch gets 0.25 s
        ({"wait_s": 0.15, "rule": BATCH}, None, None),
        ({"wait_s": 1.3, "wait_budget_s": 1.0}, None, None),  # on_demand may wait
        ({"timings": Timings(0.6, 0.01)}, RejectReason.SLO_TTFT, None),  # waiting cannot help
        # The guard sheds only requests that would queue: a free slot now is taken, however
        # busy the window was; one that would wait retries when its slot frees (the slots
        # stay busy till then, so utilization cannot fall before).
        ({"utilization": 0.9, "rule": BATCH}, None, None),
        ({"utilization": 0.9, "rule": BATCH, "wait_s": 0.004, "margin_s": 0.005}, None, None),
        ({"utilization": 0.9, "rule": BATCH, "wait_s": 0.1}, RejectReason.UTILIZATION, 0.1),
        ({"utilization": 0.99, "wait_s": 0.1}, None, None),  # interactive ignores utilization
        # Retried when the wait fits, a batch request meets the guard: 0.05 s later the
        # utilization is at most 0.005 higher, under 0.85 from 0.84, maybe not from 0.848.
        ({"utilization": 0.84, "rule": BATCH, "wait_s": 0.2}, RejectReason.SLO_TTFT, 0.05),
        ({"utilization": 0.848, "rule": BATCH, "wait_s": 0.2}, RejectReason.SLO_TTFT, 0.2),
        # 0.05 s already spent at the router: 0.35 + 0.1 no longer fits the 0.5 s SLO, and a
        # request sent again (elapsed 0) would fit: the floor.
        ({"wait_s": 0.35, "elapsed_s": 0.05}, None, None),  # exactly the remaining 0.45 s
        ({"wait_s": 0.36, "elapsed_s": 0.05}, RejectReason.SLO_TTFT, 0.01),
        ({"wait_s": 0.6, "elapsed_s": 0.05}, RejectReason.SLO_TTFT, 0.2),  # not 0.25
    ],
    ids=["idle", "exact-fit", "margin", "late", "batch-share", "batch-fits", "wait-budget",
         "hopeless", "utilization-free-slot", "utilization-wait-within-margin",
         "utilization-queues", "utilization-interactive", "ttft-then-guard-clear",
         "ttft-then-guard-may-shut", "elapsed-fits", "elapsed-late", "elapsed-retry"],
)
def test_ttft_and_utilization(kw: dict[str, object], reason: RejectReason | None,
                              retry: float | None) -> None:
    v = judge(_inputs(**kw))
    assert _reason(v) == reason
    if reason is None:
        assert isinstance(v, Terms)
        return
    assert isinstance(v, Refused)
    assert v.retry_after_s == (None if retry is None else pytest.approx(retry))
    assert v.message.startswith("bucket 'short' is at capacity: ")


def test_refusal_message_reads_as_a_sentence() -> None:
    v = judge(_inputs(wait_s=1.32))
    assert v.message == (
        "bucket 'short' is at capacity: predicted time to first token 1.420 s (+0.000 s margin)"
        " exceeds the SLO 0.500 s; retry in 0.920 s"
    )


CAPPED = dataclasses.replace(POLICY, max_queue=4, max_concurrency=10)


@pytest.mark.parametrize(
    ("kw", "reason", "retry"),
    [
        ({"in_flight": 9, "queued": 3, "wait_s": 0.1}, None, None),
        ({"in_flight": 10}, RejectReason.CONCURRENCY, 0.2),
        ({"in_flight": 5, "rule": BATCH}, RejectReason.CONCURRENCY, 0.2),  # half of 10
        ({"in_flight": 7, "rule": BATCH}, RejectReason.CONCURRENCY, 0.3),  # 3 must end
        ({"in_flight": 10, "wait_s": 1.3}, RejectReason.CONCURRENCY, 0.9),  # then slo_ttft
        ({"queued": 4, "wait_s": 0.1}, RejectReason.QUEUE_FULL, 0.05),
        ({"queued": 4, "wait_s": 0.0}, None, None),  # it would not queue
        ({"queued": 2, "wait_s": 0.1, "rule": BATCH}, RejectReason.QUEUE_FULL, 0.05),
        ({"queued": 4, "wait_s": 0.1, "rule": BATCH}, RejectReason.QUEUE_FULL, 0.09),
        ({"queued": 4, "wait_s": 0.06, "rule": BATCH}, RejectReason.QUEUE_FULL, 0.06),
    ],
    ids=["room", "concurrency", "concurrency-batch", "concurrency-batch-3-over",
         "concurrency-then-ttft", "queue", "no-wait", "queue-batch", "queue-batch-3-over",
         "queue-until-no-wait"],
)
def test_caps(kw: dict[str, object], reason: RejectReason | None, retry: float | None) -> None:
    v = judge(_inputs(policy=CAPPED, **kw))
    assert _reason(v) == reason
    if isinstance(v, Refused):
        assert v.retry_after_s == (None if retry is None else pytest.approx(retry))


E2E = dataclasses.replace(POLICY, e2e_slo_s=1.0)


@pytest.mark.parametrize(
    ("policy", "kw", "reason", "max_tokens", "degraded"),
    [
        (E2E, {"max_tokens": 91, "reserve_tokens": 91}, None, 91, False),  # 1.0 exactly
        (dataclasses.replace(E2E, degraded_min_tokens=50), {"wait_s": 0.2}, None, 71, True),
        (dataclasses.replace(E2E, degraded_min_tokens=80), {"wait_s": 0.2},
         RejectReason.SLO_E2E, 101, False),
        (dataclasses.replace(E2E, degraded_min_tokens=50),
         {"max_tokens": 200, "reserve_tokens": 60, "wait_s": 0.2}, None, 200, False),
    ],
    ids=["exact-fit", "degraded", "degraded-too-small", "learned-fits"],
)
def test_end_to_end_and_degraded_mode(
    policy: BucketPolicy, kw: dict[str, object], reason: RejectReason | None, max_tokens: int,
    degraded: bool,
) -> None:
    v = judge(_inputs(policy=policy, **kw))
    assert _reason(v) == reason
    if isinstance(v, Terms):
        assert (v.max_tokens, v.degraded) == (max_tokens, degraded)
        assert v.reserve_tokens <= v.max_tokens


def test_e2e_refusal_that_waiting_fixes_has_a_retry() -> None:
    v = judge(_inputs(policy=E2E, max_tokens=71, reserve_tokens=71, wait_s=0.3))
    assert _reason(v) == RejectReason.SLO_E2E
    assert v.retry_after_s == pytest.approx(0.1)  # 0.3 + 0.8 - 1.0


def test_e2e_refusal_that_only_a_smaller_allowance_fixes() -> None:
    v = judge(_inputs(policy=E2E))  # 0.1 + 100 * 0.01 = 1.1 s > 1.0 s with no wait
    assert _reason(v) == RejectReason.SLO_E2E
    assert v.retry_after_s is None
    assert v.message.endswith("lower max_tokens")


def test_deadline_is_the_full_slo_plus_wait_budget() -> None:
    assert judge(_inputs(rule=BATCH)).deadline_s == 0.5
    assert judge(_inputs(wait_budget_s=2.0)).deadline_s == 2.5
