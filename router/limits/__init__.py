"""Limits that hold across worker processes and router replicas: the shared store's contract.

With ``[limits] store = "memory"`` (the default) nothing here is used: each process counts its
tenants in :mod:`router.admission.ratelimit` and its caps in the admission rule. With
``store = "redis"`` every admitted request asks one shared count (:mod:`.redis_store`) once,
after the local decision (:mod:`.shared`):

* :class:`Ask`: what one admitted request charges: its tenant's request and token windows
  (sliding 60 s windows, the rule of :mod:`router.admission.ratelimit`), a lease on its
  bucket's pod-wide concurrency and, when it is predicted to wait, a place in the bucket's
  pod-wide queue;
* :class:`Verdict`: charged, or which limit is over and when to retry, with the tenant's
  numbers for the ``x-ratelimit-*`` headers;
* :class:`StoreError`: the store did not answer (a timeout, a lost connection, a script
  error), named by its ``kind`` (the metric label).

The check and the charge are one atomic step in the store; the end of a request (the lease
given back, unused tokens refunded, or the whole charge refunded when the request was refused
later) is sent without the request waiting for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from router.outcomes import RejectReason

__all__ = ["Ask", "StoreError", "StoreErrorKind", "Verdict"]

StoreErrorKind = Literal["timeout", "connection", "script"]


@dataclass(frozen=True, slots=True)
class Ask:
    """One admitted request's charge. A limit or cap of None is not checked."""

    member: str
    """The request's id in the store, unique across every process sharing it."""
    tenant: str | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    cost_tokens: int
    """``prompt_tokens + max_tokens``: the worst case, refunded down when the request ends."""
    bucket: str
    max_concurrency: int | None
    """The bucket's cap for the request's class (``floor(share * max_concurrency)``)."""
    max_queue: int | None
    wait_s: float
    """Predicted wait for a slot (seconds): > 0 puts the request in the queue until then."""
    lease_s: float
    """How long the lease holds without a finish (seconds): the predicted end bound plus a
    grace, so a crashed process's leases expire on their own."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The store's answer. ``over`` None: admitted and charged."""

    over: RejectReason | None
    retry_after_s: float
    """Seconds until the request would fit (0 when admitted)."""
    requests_used: int
    """Requests in the tenant's window after this call (0 without a request limit)."""
    requests_reset_s: float
    """Seconds until every request in the window has left it."""
    tokens_used: int
    tokens_reset_s: float
    in_flight: int = 0
    """The bucket's pod-wide leases when over ``concurrency``; else 0."""
    queued: int = 0
    """The bucket's pod-wide queue when over ``queue_full``; else 0."""


class StoreError(Exception):
    """The store gave no answer; ``kind`` says why."""

    def __init__(self, kind: StoreErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: StoreErrorKind = kind
