"""Admission ``off``: admit whatever the concurrency cap allows, least-loaded replica.

The baseline for benchmarks and the fallback while no timeline controller is configured. It
predicts nothing: every request within the bucket's ``max_concurrency`` (if set) is admitted with
the allowance it asked for, and goes to the healthy replica (not in ``exclude``) with the fewest
requests in flight, ties broken by rotating through the replicas. Tickets track in-flight counts
and release them exactly once.

Refusals: ``concurrency`` (429) when the bucket is at its cap, ``no_backend`` (503) when no
healthy replica is left. ``retry_after_s`` is the bucket's prefill time (a slot may free by then).
Nothing spills: without a prediction there is no exact way to tell a larger shape would do better.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.admission import (
    AdmissionRequest,
    Admitted,
    Decision,
    Health,
    RateLimitState,
    Refused,
    Terms,
    Up,
    always_up,
)
from router.admission.settings import AdmissionSettings, BucketPolicy, ReplicaShape
from router.outcomes import Outcome, RejectReason

__all__ = ["OffAdmitter", "OffTicket"]


@dataclass(slots=True)
class _Bucket:
    policy: BucketPolicy
    in_flight: dict[str, int]
    health: dict[str, Up]
    """Each replica's health, owned by the backend pool."""
    rotation: int = 0
    total: int = 0


@dataclass(slots=True)
class OffTicket:
    """A request's hold on one replica's in-flight count."""

    _bucket: _Bucket
    _backend: str
    finished: bool = field(default=False)

    @property
    def backend(self) -> str:
        return self._backend

    def first_token(self) -> None:
        """Nothing is predicted, so nothing to correct."""

    def schedule(self, value: str) -> None:
        """Nothing is predicted: a backend's schedule is not read."""

    def finish(self, outcome: Outcome, completion_tokens: int | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self._bucket.in_flight[self._backend] -= 1
        self._bucket.total -= 1

    def refused(self, predicted_ttft_s: float) -> None:
        """Nothing is predicted, so nothing to learn: the slot is released."""
        self.finish(Outcome.FAILED)

    def withdraw(self, reason: RejectReason) -> None:
        """Refused after the decision: the slot is released."""
        self.finish(Outcome.FAILED)


class OffAdmitter:
    """Implements :class:`router.admission.Admitter` without prediction."""

    def __init__(self, settings: AdmissionSettings, health: Health = always_up) -> None:
        self._buckets = {
            b.name: _Bucket(
                policy=b,
                in_flight={r.url: 0 for r in b.replicas},
                health={r.url: health(b.name, r.url) for r in b.replicas},
            )
            for b in settings.buckets
        }

    def in_flight(self, bucket: str, backend: str | None = None) -> int:
        """In flight on ``backend`` of ``bucket``, or in the whole bucket (None)."""
        b = self._buckets[bucket]
        return b.total if backend is None else b.in_flight[backend]

    def decide(self, req: AdmissionRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        b = self._buckets[req.bucket]
        replicas = b.policy.replicas
        hint = replicas[0].prefill_s if replicas else None
        cap = b.policy.max_concurrency
        if cap is not None and b.total >= cap:
            return Refused(RejectReason.CONCURRENCY,
                           f"Bucket {req.bucket} is at its concurrency cap ({cap}).", hint)
        n = len(replicas)
        best: ReplicaShape | None = None
        best_load = 0
        for i in range(n):
            rep = replicas[(b.rotation + i) % n]
            url = rep.url
            if url in exclude or not b.health[url].up:
                continue
            if best is None or b.in_flight[url] < best_load:
                best, best_load = rep, b.in_flight[url]
        if best is None:
            return Refused(RejectReason.NO_BACKEND, f"No healthy backend in bucket {req.bucket}.",
                           hint)
        b.rotation = (b.rotation + 1) % n
        b.in_flight[best.url] += 1
        b.total += 1
        return Admitted(best.url, OffTicket(b, best.url), Terms(
            req.max_tokens, req.max_tokens, predicted_ttft_s=None, deadline_s=None),
            bucket=req.bucket)

    def ratelimit(self, tenant: str | None) -> RateLimitState | None:
        """Tenant limits are the timeline controller's: none here."""
        return None

    def snapshot(self) -> dict[str, Any]:
        """``GET /admin/buckets``: the in-flight count per bucket."""
        return {"mode": "off",
                "buckets": {name: {"in_flight": b.total} for name, b in self._buckets.items()}}
