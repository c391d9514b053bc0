"""The HTTP face of admission: the response headers a client reads to obey a decision.

* Refused (429, or 503 ``no_backend``): ``Retry-After`` (integer seconds, rounded up, at least 1)
  and ``retry-after-ms`` (see :func:`router.errors.retry_after_headers`) when waiting can help;
  ``x-lpu-reject-reason`` (a :class:`~router.outcomes.RejectReason`); and, when the controller
  computed them, ``x-lpu-predicted-wait-ms`` and ``x-lpu-predicted-ttft-ms``.
* Admitted: ``x-lpu-bucket`` and ``x-lpu-spilled-from`` (set by :mod:`router.attempts`: the
  bucket that served it, and its own when it spilled to a larger shape);
  ``x-lpu-predicted-ttft-ms`` (the router's prediction, from its decision); when the
  output allowance was lowered, ``x-lpu-max-tokens-clamped`` (``bucket_cap`` or ``degraded``)
  and ``x-lpu-max-tokens-clamped-from`` (the client's allowance).
* Every completion response of a tenant with limits, refusals included:
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, the headers OpenAI's and Groq's
  clients read; resets are durations written like OpenAI's (``"20ms"``, ``"1s"``, ``"6m0s"``).
"""

from __future__ import annotations

import math

from lpu_protocol.headers import (
    X_LPU_MAX_TOKENS_CLAMPED,
    X_LPU_MAX_TOKENS_CLAMPED_FROM,
    X_LPU_PREDICTED_TTFT_MS,
    X_LPU_PREDICTED_WAIT_MS,
    X_LPU_REJECT_REASON,
)
from router.admission import RateLimitState
from router.errors import retry_after_headers
from router.outcomes import RejectReason

__all__ = ["admitted_headers", "format_reset", "ratelimit_headers", "refusal_headers"]


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI writes ``x-ratelimit-reset-*``: ``"20ms"``, ``"1.5s"``,
    ``"6m0s"``, ``"1h2m3s"``; ``"0s"`` when nothing is used.

    Rounded up to the millisecond: a client that waits that long finds the room there.
    """
    ms = math.ceil(max(0.0, seconds) * 1e3 - 1e-9)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1e3:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def ratelimit_headers(state: RateLimitState | None) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers of a tenant's limits (none for a limit it does not have)."""
    if state is None:
        return {}
    out: dict[str, str] = {}
    if state.limit_requests is not None:
        out["x-ratelimit-limit-requests"] = str(state.limit_requests)
        out["x-ratelimit-remaining-requests"] = str(state.remaining_requests or 0)
        out["x-ratelimit-reset-requests"] = format_reset(state.reset_requests_s)
    if state.limit_tokens is not None:
        out["x-ratelimit-limit-tokens"] = str(state.limit_tokens)
        out["x-ratelimit-remaining-tokens"] = str(state.remaining_tokens or 0)
        out["x-ratelimit-reset-tokens"] = format_reset(state.reset_tokens_s)
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def refusal_headers(reason: RejectReason, retry_after_s: float | None, *,
                    predicted_wait_s: float = 0.0,
                    predicted_ttft_s: float = 0.0) -> dict[str, str]:
    """Headers of a refusal; the predictions only when the controller made them (> 0)."""
    out = retry_after_headers(retry_after_s)
    out[X_LPU_REJECT_REASON] = str(reason)
    if predicted_ttft_s > 0:
        out[X_LPU_PREDICTED_WAIT_MS] = _ms(predicted_wait_s)
        out[X_LPU_PREDICTED_TTFT_MS] = _ms(predicted_ttft_s)
    return out


def admitted_headers(predicted_ttft_s: float, *, clamped: str | None = None,
                     clamped_from: int | None = None) -> dict[str, str]:
    """Headers of an admitted request; ``clamped``: why its allowance was lowered
    (``bucket_cap`` | ``degraded``), ``clamped_from``: the allowance the client asked for."""
    out = {X_LPU_PREDICTED_TTFT_MS: _ms(predicted_ttft_s)}
    if clamped is not None:
        out[X_LPU_MAX_TOKENS_CLAMPED] = clamped
    if clamped_from is not None:
        out[X_LPU_MAX_TOKENS_CLAMPED_FROM] = str(clamped_from)
    return out
