"""Per-tenant (API key) limits in requests and tokens per minute.

Each limit is a token bucket holding at most one minute's allowance and
refilling continuously at ``limit / 60`` per second: a tenant may burst its
whole minute at once, then proceeds at the sustained rate. A request costs one
request and ``prompt_tokens + max_tokens`` tokens (the worst case it may use);
when it ends, the allowance it did not use is given back, so the tokens limit
tracks tokens actually produced.

The numbers map onto the headers OpenAI and Groq clients read:
``x-ratelimit-limit-*`` (the per-minute limit), ``x-ratelimit-remaining-*``
(whole units left now) and ``x-ratelimit-reset-*`` (seconds until the bucket is
full again).
"""

from __future__ import annotations

import math

from router.admission import RateLimitState
from router.admission.settings import TenantPolicy
from router.outcomes import RejectReason

__all__ = ["TenantLimiter", "TokenBucket"]


class TokenBucket:
    """A per-minute limit as a continuously refilled bucket (router clock, seconds)."""

    def __init__(self, per_minute: int, now: float) -> None:
        if per_minute < 1:
            raise ValueError(f"a per-minute limit must be >= 1, got {per_minute}")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._level = self.capacity
        self._at = now

    def level(self, now: float) -> float:
        if now > self._at:
            self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
            self._at = now
        return self._level

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` is available; inf if it exceeds the capacity."""
        if amount > self.capacity:
            return math.inf
        missing = amount - self.level(now)
        return missing / self.rate if missing > 0 else 0.0

    def take(self, amount: float, now: float) -> None:
        self._level = self.level(now) - amount

    def give(self, amount: float, now: float) -> None:
        self._level = min(self.capacity, self.level(now) + amount)

    def reset_s(self, now: float) -> float:
        return (self.capacity - self.level(now)) / self.rate


class TenantLimiter:
    """The request and token limits of one tenant; either may be absent."""

    def __init__(self, policy: TenantPolicy, now: float) -> None:
        self.policy = policy
        rpm, tpm = policy.requests_per_minute, policy.tokens_per_minute
        self.requests = TokenBucket(rpm, now) if rpm is not None else None
        self.tokens = TokenBucket(tpm, now) if tpm is not None else None

    def check(self, cost_tokens: int, now: float) -> tuple[RejectReason, float, str] | None:
        """None if a request costing ``cost_tokens`` fits now, else (reason, retry_after_s,
        message). Consumes nothing."""
        name = self.policy.name
        if self.requests is not None:
            wait = self.requests.wait_for(1, now)
            if wait > 0:
                return (
                    RejectReason.TENANT_RPM,
                    wait,
                    f"Rate limit reached for requests: tenant '{name}' is limited to"
                    f" {self.policy.requests_per_minute} requests per minute;"
                    f" retry in {wait:.2f} s",
                )
        if self.tokens is not None:
            wait = self.tokens.wait_for(cost_tokens, now)
            if wait > 0:
                limit = self.policy.tokens_per_minute
                if math.isinf(wait):
                    message = (
                        f"Request too large for tenant '{name}': it needs {cost_tokens} tokens"
                        f" (prompt + max_tokens) and the limit is {limit} tokens per minute;"
                        " lower max_tokens or shorten the prompt"
                    )
                    return RejectReason.TENANT_TPM, 60.0, message
                return (
                    RejectReason.TENANT_TPM,
                    wait,
                    f"Rate limit reached for tokens: tenant '{name}' is limited to {limit}"
                    f" tokens per minute and this request needs {cost_tokens};"
                    f" retry in {wait:.2f} s",
                )
        return None

    def consume(self, cost_tokens: int, now: float) -> None:
        if self.requests is not None:
            self.requests.take(1, now)
        if self.tokens is not None:
            self.tokens.take(cost_tokens, now)

    def refund(self, tokens: int, now: float, *, request: bool = False) -> None:
        """Give back unused tokens (and the request itself when it never ran)."""
        if self.tokens is not None and tokens > 0:
            self.tokens.give(tokens, now)
        if request and self.requests is not None:
            self.requests.give(1, now)

    def state(self, now: float) -> RateLimitState:
        rq, tk = self.requests, self.tokens
        return RateLimitState(
            limit_requests=self.policy.requests_per_minute,
            remaining_requests=max(0, math.floor(rq.level(now))) if rq is not None else None,
            reset_requests_s=rq.reset_s(now) if rq is not None else 0.0,
            limit_tokens=self.policy.tokens_per_minute,
            remaining_tokens=max(0, math.floor(tk.level(now))) if tk is not None else None,
            reset_tokens_s=tk.reset_s(now) if tk is not None else 0.0,
        )
