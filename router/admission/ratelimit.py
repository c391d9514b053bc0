"""Per-tenant (API key) limits in requests and tokens per minute: the in-process store.

A limit of ``n`` per minute means at most ``n`` units admitted in any :data:`WINDOW_S`
seconds: each admitted request is a charge at the time it was admitted, counted until it
is :data:`WINDOW_S` old (a charge made at ``t`` leaves the window at ``t + 60`` exactly).
A request charges one request and ``prompt_tokens + max_tokens`` tokens (the worst case it
may use); when it ends, the tokens it did not use are taken off its charge, and a request
that never ran (a backend refused its deadline) is taken off whole. The Redis store
(:mod:`router.limits.redis_store`) keeps the same windows with the same rule, so the two
stores agree on every schedule.

Unlike a token bucket (a burst of ``n``, then ``n / 60`` per second: ``n + n * t / 60`` in
the first ``t`` seconds), the window never admits more than ``n`` in a minute.

The numbers map onto the headers OpenAI and Groq clients read:
``x-ratelimit-limit-*`` (the per-minute limit), ``x-ratelimit-remaining-*``
(whole units left now) and ``x-ratelimit-reset-*`` (seconds until every charge in the
window has left it: the limit is whole again). A refusal's ``Retry-After`` is the time
until enough has left the window for that request.
"""

from __future__ import annotations

import math
from collections import deque

from router.admission import RateLimitState
from router.admission.settings import TenantPolicy
from router.outcomes import RejectReason

__all__ = ["WINDOW_S", "Charge", "Entry", "SlidingWindow", "TenantLimiter", "over_message"]

WINDOW_S = 60.0
"""The length of every per-minute window (seconds), in both stores."""


class Entry:
    """One charge in a window: when it was made and how much it still counts."""

    __slots__ = ("amount", "at")

    def __init__(self, at: float, amount: float) -> None:
        self.at = at
        self.amount = amount


class SlidingWindow:
    """The charges of the last :data:`WINDOW_S` seconds against a per-minute ``limit``.

    Charges are appended in time order (router clock, seconds); the running sum covers the
    charges still in the window. Adjusting a charge that already left changes nothing.
    """

    __slots__ = ("_entries", "_sum", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a per-minute limit must be >= 1, got {limit}")
        self.limit = limit
        self._entries: deque[Entry] = deque()
        self._sum = 0.0

    def used(self, now: float) -> float:
        """The sum of the charges still in the window at ``now``."""
        entries, horizon = self._entries, now - WINDOW_S
        while entries and entries[0].at <= horizon:
            self._sum -= entries.popleft().amount
        if not entries:
            self._sum = 0.0  # no float drift survives an empty window
        return self._sum

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until a charge of ``amount`` fits; 0 if it fits now, inf if never."""
        if amount > self.limit:
            return math.inf
        excess = self.used(now) + amount - self.limit
        if excess <= 0:
            return 0.0
        for e in self._entries:  # oldest first: they leave first
            excess -= e.amount
            if excess <= 0:
                return e.at + WINDOW_S - now
        return WINDOW_S  # unreachable while amount <= limit

    def take(self, amount: float, now: float) -> Entry:
        self.used(now)
        e = Entry(now, amount)
        self._entries.append(e)
        self._sum += amount
        return e

    def adjust(self, e: Entry, amount: float, now: float) -> None:
        """Make the charge ``e`` count ``amount`` (a refund: less); no-op once it left."""
        if e.at > now - WINDOW_S and amount != e.amount:
            self.used(now)
            self._sum += amount - e.amount
            e.amount = amount

    def reset_s(self, now: float) -> float:
        """Seconds until every charge now in the window has left it (0 when none has)."""
        self.used(now)
        for e in reversed(self._entries):
            if e.amount > 0:
                return e.at + WINDOW_S - now
        return 0.0


class Charge:
    """What one admitted request holds in its tenant's windows (for its refund)."""

    __slots__ = ("requests", "tokens")

    def __init__(self, requests: Entry | None, tokens: Entry | None) -> None:
        self.requests = requests
        self.tokens = tokens


def over_message(policy: TenantPolicy, reason: RejectReason, wait: float, cost: int) -> str:
    """The refusal message of an exceeded limit (both stores word it the same)."""
    name = policy.name
    if reason is RejectReason.TENANT_RPM:
        return (f"Rate limit reached for requests: tenant '{name}' is limited to"
                f" {policy.requests_per_minute} requests per minute; retry in {wait:.2f} s")
    limit = policy.tokens_per_minute
    if math.isinf(wait):
        return (f"Request too large for tenant '{name}': it needs {cost} tokens"
                f" (prompt + max_tokens) and the limit is {limit} tokens per minute;"
                " lower max_tokens or shorten the prompt")
    return (f"Rate limit reached for tokens: tenant '{name}' is limited to {limit}"
            f" tokens per minute and this request needs {cost}; retry in {wait:.2f} s")


class TenantLimiter:
    """The request and token windows of one tenant; either may be absent."""

    def __init__(self, policy: TenantPolicy) -> None:
        self.policy = policy
        rpm, tpm = policy.requests_per_minute, policy.tokens_per_minute
        self.requests = SlidingWindow(rpm) if rpm is not None else None
        self.tokens = SlidingWindow(tpm) if tpm is not None else None

    def check(self, cost_tokens: int, now: float) -> tuple[RejectReason, float, str] | None:
        """None if a request costing ``cost_tokens`` fits now, else (reason, retry_after_s,
        message); a request that can never fit waits 60 s. Consumes nothing."""
        if self.requests is not None:
            wait = self.requests.wait_for(1, now)
            if wait > 0:
                reason = RejectReason.TENANT_RPM
                return reason, wait, over_message(self.policy, reason, wait, cost_tokens)
        if self.tokens is not None:
            wait = self.tokens.wait_for(cost_tokens, now)
            if wait > 0:
                reason = RejectReason.TENANT_TPM
                message = over_message(self.policy, reason, wait, cost_tokens)
                return reason, WINDOW_S if math.isinf(wait) else wait, message
        return None

    def consume(self, cost_tokens: int, now: float) -> Charge:
        rq, tk = self.requests, self.tokens
        return Charge(rq.take(1, now) if rq is not None else None,
                      tk.take(cost_tokens, now) if tk is not None else None)

    def refund(self, charge: Charge, tokens: int, now: float, *, request: bool = False) -> None:
        """Take ``tokens`` unused tokens off the charge (and the request itself when it never
        ran); nothing once the charge has left the window."""
        if self.tokens is not None and charge.tokens is not None and tokens > 0:
            e = charge.tokens
            self.tokens.adjust(e, max(0.0, e.amount - tokens), now)
        if request and self.requests is not None and charge.requests is not None:
            self.requests.adjust(charge.requests, 0.0, now)

    def state(self, now: float) -> RateLimitState:
        rq, tk = self.requests, self.tokens
        return RateLimitState(
            limit_requests=self.policy.requests_per_minute,
            remaining_requests=_remaining(rq, now),
            reset_requests_s=rq.reset_s(now) if rq is not None else 0.0,
            limit_tokens=self.policy.tokens_per_minute,
            remaining_tokens=_remaining(tk, now),
            reset_tokens_s=tk.reset_s(now) if tk is not None else 0.0,
        )


def _remaining(w: SlidingWindow | None, now: float) -> int | None:
    return None if w is None else max(0, math.floor(w.limit - w.used(now) + 1e-9))
