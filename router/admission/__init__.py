"""Admission control: the contract between the HTTP handler and the decision rule.

The handler never computes anything here; it builds an :class:`AdmissionRequest`,
asks an :class:`Admitter` for a :class:`Decision`, and obeys it:

* refused -> 429 (or the status of ``reason``) at once, with ``Retry-After``;
* admitted -> forward to ``decision.backend`` with ``decision.max_tokens``,
  report the first token to the ticket, and end the ticket exactly once with
  one :class:`~router.outcomes.Outcome` (the ticket corrects the timeline: a
  request that ends early frees its slot early).

The decision itself is pure and synchronous: it never awaits, so a refusal never
waits for anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from router.outcomes import Outcome, RejectReason

__all__ = [
    "AdmissionRequest",
    "Admitter",
    "Decision",
    "Priority",
    "RateLimitState",
    "Ticket",
]


class Priority(StrEnum):
    """Traffic classes, highest first. ``batch`` is sheddable."""

    INTERACTIVE = "interactive"
    STANDARD = "standard"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    bucket: str
    prompt_tokens: int
    max_tokens: int
    """Output allowance after the bucket cap; the worst-case output length."""
    priority: Priority = Priority.STANDARD
    tenant: str | None = None
    wait_budget_s: float = 0.0
    """Extra wait beyond the SLO a caller accepts (Groq ``on_demand``); 0 fails fast."""
    elapsed_s: float = 0.0
    """Seconds the request already spent at the router before this decision (body read,
    parsing, counting, earlier replicas): the SLOs count from its arrival, so this much of
    them is already used."""


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """A tenant's limits for the ``x-ratelimit-*`` response headers."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0


class Ticket(Protocol):
    """One admitted request's hold on a backend slot. Ends exactly once."""

    @property
    def backend(self) -> str: ...

    def first_token(self) -> None:
        """The first token reached the client (feeds the prediction-error metric)."""

    def reassign(self, backend: str) -> None:
        """Move the reservation to another replica (retry before any byte was sent)."""

    def finish(self, outcome: Outcome, completion_tokens: int | None = None) -> None:
        """End the request; idempotent. Frees the slot in the timeline now."""


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    reason: RejectReason | None = None
    message: str = ""
    """Human-readable reason for a refusal (goes into the OpenAI error message)."""
    backend: str | None = None
    ticket: Ticket | None = None
    max_tokens: int = 0
    """Allowance to forward (lower than asked when degraded mode clamped it)."""
    degraded: bool = False
    predicted_wait_s: float = 0.0
    predicted_ttft_s: float = 0.0
    retry_after_s: float | None = None
    deadline_s: float | None = None
    """Seconds from now by which the first token must come; sent to the backend."""
    ratelimit: RateLimitState | None = field(default=None)


class Admitter(Protocol):
    """What the handler asks. Implementations: ``off`` (admit all, least-loaded pick)
    and the timeline controller."""

    def decide(self, req: AdmissionRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        """Admit or refuse now; ``exclude`` names replicas that already refused this request."""
        ...

    def set_backend_health(self, bucket: str, backend: str, healthy: bool) -> None: ...
