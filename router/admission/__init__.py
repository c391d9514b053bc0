"""Admission control: the contract between the HTTP handler and the decision rule.

The handler never computes anything here; it builds an :class:`AdmissionRequest`,
asks an :class:`Admitter` for a :class:`Decision`, and obeys it:

* :class:`Refused` -> 429 (or the status of ``reason``) at once, with ``Retry-After``;
* :class:`Admitted` -> forward to ``decision.backend`` with ``decision.terms.max_tokens``,
  report the first token to the ticket, and end the ticket exactly once with
  one :class:`~router.outcomes.Outcome` (the ticket corrects the timeline: a
  request that ends early frees its slot early).

The decision itself is pure and synchronous: it never awaits, so a refusal never
waits for anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from router.outcomes import Outcome, RejectReason

__all__ = [
    "AdmissionRequest",
    "Admitted",
    "Admitter",
    "Decision",
    "Health",
    "Priority",
    "RateLimitState",
    "Refused",
    "Terms",
    "Ticket",
    "Up",
    "always_up",
]


class Priority(StrEnum):
    """Traffic classes, highest first. ``batch`` is sheddable."""

    INTERACTIVE = "interactive"
    STANDARD = "standard"
    BATCH = "batch"


@dataclass(slots=True)
class AdmissionRequest:
    """One request's shape and class, as admission sees it. Not frozen: the attempt loop sets
    ``elapsed_s`` before each decision (a copy per attempt costs more than the decision's
    arithmetic); an admitter reads it during ``decide`` and keeps no reference."""

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
    need_tokens: int = 0
    """Tokens of compiled shape the prompt may take (:meth:`router.buckets.BucketTable.need`:
    the count grown by the estimate's margin); 0: ``prompt_tokens``. A larger bucket is a spill
    candidate only when ``need + max_tokens`` fits its shape."""


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """A tenant's limits for the ``x-ratelimit-*`` response headers."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0


class Up(Protocol):
    """One replica's health as its owner (:class:`router.pool.BackendPool`) keeps it:
    admission reads it, never keeps a copy."""

    @property
    def up(self) -> bool: ...


Health = Callable[[str, str], Up]
"""The health of a ``(bucket, url)`` replica: :meth:`router.pool.BackendPool.replica`."""


@dataclass(frozen=True, slots=True)
class _AlwaysUp:
    up: bool = True


def always_up(bucket: str, url: str) -> Up:
    """Health without a pool (benchmarks, unit tests): every replica is up."""
    return _ALWAYS_UP


_ALWAYS_UP = _AlwaysUp()


class Ticket(Protocol):
    """One admitted request's hold on a backend slot. Ends exactly once: by ``finish``, or by
    ``refused`` when the backend refused the request's deadline."""

    @property
    def backend(self) -> str: ...

    def first_token(self) -> None:
        """The first token reached the client (feeds the prediction-error metric)."""

    def schedule(self, value: str) -> None:
        """The backend's answer (admitted or refused) carried its whole schedule, the
        ``x-lpu-schedule`` header's ``value``: the admitter may learn it. Any time, ended or
        not; a malformed value is ignored."""

    def finish(self, outcome: Outcome, completion_tokens: int | None = None) -> None:
        """End the request; idempotent. Frees the slot in the timeline now."""

    def refused(self, predicted_ttft_s: float) -> None:
        """End the request as refused by its backend, which predicted that TTFT (seconds) for
        it: the schedule learns the figure, and the request does not count as admitted.
        Idempotent, and a no-op after ``finish``."""

    def withdraw(self, reason: RejectReason) -> None:
        """End the request as never admitted, refused for ``reason`` after the decision (the
        shared limits store, :mod:`router.limits`, said over): its hold is dropped and nothing
        is learned. Idempotent, and a no-op after ``finish``."""


@dataclass(slots=True)
class Terms:
    """What the rule grants an admitted request (pure numbers, no state). Not mutated (not
    frozen only because a frozen dataclass costs a microsecond per decision to build)."""

    max_tokens: int
    """Allowance to forward (lower than asked when degraded mode clamped it)."""
    reserve_tokens: int
    """Output tokens the schedule reserves a slot for (``<= max_tokens``)."""
    predicted_ttft_s: float | None
    """Predicted time to first token from now; None when nothing is predicted (``off``)."""
    deadline_s: float | None
    """The full TTFT bound the backend checks (``ttft_slo + wait_budget``, seconds from the
    request's arrival); None: the backend gets no deadline."""
    degraded: bool = False


@dataclass(slots=True)
class Admitted:
    """Send the request to ``backend``; ``ticket`` holds its slot until it ends. Not mutated
    (not frozen: see :class:`Terms`)."""

    backend: str
    ticket: Ticket
    terms: Terms
    predicted_wait_s: float = 0.0
    ratelimit: RateLimitState | None = None
    bucket: str = ""
    """The bucket ``backend`` belongs to: the one to forward with (its upstream model, its
    caps), to report health to and to name in ``x-lpu-bucket``. The request's own bucket
    unless it spilled; empty only from an admitter that does not set it (read it as the
    request's own)."""
    spilled_from: str | None = None
    """The request's own (smallest fitting) bucket when it spilled to ``bucket``, a larger
    shape of the same model (:mod:`router.admission.spill`); None when it did not."""
    admitted: ClassVar[bool] = True


@dataclass(slots=True)
class Refused:
    """Refuse the request now, with the reason's status and ``Retry-After``. Not mutated
    (not frozen: see :class:`Terms`; under overload refusing is the hot path)."""

    reason: RejectReason
    message: str
    """Human-readable reason (goes into the OpenAI error message)."""
    retry_after_s: float | None = None
    """None when waiting cannot help."""
    predicted_wait_s: float = 0.0
    predicted_ttft_s: float | None = None
    admitted: ClassVar[bool] = False


Decision = Admitted | Refused


class Admitter(Protocol):
    """What the handler asks, and all it needs from admission. Implementations: ``off``
    (admit all within the cap, least-loaded pick) and the timeline controller."""

    def decide(self, req: AdmissionRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        """Admit or refuse now; ``exclude`` names replicas that already refused this request."""
        ...

    def ratelimit(self, tenant: str | None) -> RateLimitState | None:
        """The tenant's ``x-ratelimit-*`` numbers now (None without limits)."""
        ...

    def in_flight(self, bucket: str, backend: str) -> int:
        """Admitted requests on that replica whose ticket has not ended: the one count of
        them (the ``lpu_router_in_flight`` gauge reads it at each scrape)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Plain data for ``GET /admin/buckets``."""
        ...
